"""Unit tests for count.cluster.ring: consistent hashing placement and sloppy quorum targets."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster import ring as ring_module
from count.cluster.ring import VNODES, Ring, sloppy_targets, token


def addresses(n: int) -> list[str]:
    return [f"10.0.0.{i + 1}:7100" for i in range(n)]


def random_names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"cpu.{rng.getrandbits(64):016x}.{rng.randrange(1000)}" for _ in range(count)]


def naive_preference(members: list[str], vnodes: int, name: str) -> list[str]:
    """The definition, walked literally: distinct members clockwise from the series' token."""
    points = sorted((token(f"{m}#{i}"), m) for m in members for i in range(vnodes))
    t = token(name)
    start = next((i for i, (pt, _) in enumerate(points) if pt >= t), 0)
    order: list[str] = []
    for k in range(len(points)):
        member = points[(start + k) % len(points)][1]
        if member not in order:
            order.append(member)
    return order


def test_token_is_first_eight_sha256_bytes_big_endian():
    digest = hashlib.sha256(b"cpu.load").digest()
    assert token("cpu.load") == int.from_bytes(digest[:8], "big")
    assert token("") == 0xE3B0C44298FC1C14
    accented = "\u00e9t\u00e9"  # encoded as UTF-8
    assert token(accented) == int.from_bytes(hashlib.sha256(accented.encode()).digest()[:8], "big")


def test_defaults_and_sizes():
    ring = Ring(addresses(3))
    assert VNODES == 150
    assert ring.vnodes == VNODES
    assert ring.ranges() == 3 * VNODES
    assert ring.members == tuple(addresses(3))


@pytest.mark.parametrize("members", [[], ["a", "a"], ["a", ""]])
def test_rejects_bad_members(members):
    with pytest.raises(ValueError):
        Ring(members)


def test_rejects_bad_vnodes_and_rf():
    with pytest.raises(ValueError):
        Ring(["a"], vnodes=0)
    ring = Ring(["a", "b"])
    with pytest.raises(ValueError):
        ring.replicas("x", 0)
    with pytest.raises(ValueError):
        ring.shared_ranges("a", "b", 0)
    with pytest.raises(ValueError):
        ring.shared_ranges("a", "nobody", 2)


def test_deterministic_and_independent_of_member_order():
    members = addresses(5)
    shuffled = members[::-1]
    random.Random(7).shuffle(shuffled)
    a, b, c = Ring(members), Ring(members), Ring(shuffled)
    assert c.members == tuple(shuffled)
    names = random_names(500, seed=1)
    for other in (b, c):
        assert other.digest() == a.digest()
        assert other.ranges() == a.ranges()
        np.testing.assert_array_equal(other.range_indices(names), a.range_indices(names))
        for name in names:
            assert other.range_index(name) == a.range_index(name)
            assert other.preference(name) == a.preference(name)
        for i in range(a.ranges()):
            assert other.range_preference(i) == a.range_preference(i)
        assert other.shared_ranges(members[0], members[3], 3) == \
            a.shared_ranges(members[0], members[3], 3)


@pytest.mark.parametrize("n, vnodes", [(1, 4), (2, 1), (3, 3), (6, 5)])
def test_preference_matches_clockwise_walk(n, vnodes):
    members = addresses(n)
    ring = Ring(members, vnodes=vnodes)
    for name in random_names(300, seed=n):
        assert ring.preference(name) == naive_preference(members, vnodes, name)
        assert ring.preference(name) == ring.range_preference(ring.range_index(name))


def test_range_index_wraps_past_largest_token():
    ring = Ring(["a", "b"], vnodes=1)
    low, high = sorted((token("a#0"), token("b#0")))
    names = random_names(200, seed=3)
    for name in names:
        t = token(name)
        assert ring.range_index(name) == (1 if low < t <= high else 0)
    # both sides of the wrap occur among the names, so the check above covers them
    assert {ring.range_index(name) for name in names} == {0, 1}
    assert any(token(name) > high for name in names)


def test_range_indices_match_range_index_through_cache_clears(monkeypatch):
    ring = Ring(addresses(4))
    names = random_names(50, seed=4)
    want = [ring.range_index(name) for name in names]
    monkeypatch.setattr(ring_module, "TOKEN_CACHE_ENTRIES", 7)
    for _ in range(3):
        got = ring.range_indices(names + names[::-1])
        assert got.dtype == np.int64
        assert got.tolist() == want + want[::-1]
    assert ring.range_indices([]).tolist() == []


@given(n=st.integers(1, 7), rf=st.integers(1, 9), name=st.text(max_size=20))
@settings(max_examples=60, deadline=None)
def test_replicas_are_distinct_prefix_of_preference(n, rf, name):
    ring = Ring(addresses(n), vnodes=8)
    pref = ring.preference(name)
    assert sorted(pref) == sorted(addresses(n))
    reps = ring.replicas(name, rf)
    assert len(reps) == min(rf, n)
    assert len(set(reps)) == len(reps)
    assert reps == pref[: len(reps)]


@pytest.mark.parametrize("n", [3, 5])
def test_primaries_are_balanced(n):
    ring = Ring(addresses(n))
    names = random_names(10_000, seed=n)
    primaries = Counter(ring.replicas(name, 1)[0] for name in names)
    assert set(primaries) == set(addresses(n))
    for count in primaries.values():
        assert 0.7 / n * len(names) <= count <= 1.3 / n * len(names)


@pytest.mark.parametrize("n, rf, vnodes", [(1, 2, 1), (1, 1, 150), (3, 2, 150), (4, 2, 7),
                                          (5, 3, 150), (2, 3, 20)])
def test_ownership_is_the_share_of_names_each_member_replicates(n, rf, vnodes):
    ring = Ring(addresses(n), vnodes)
    owns = ring.ownership(rf)
    assert set(owns) == set(addresses(n))
    assert sum(owns.values()) == pytest.approx(min(rf, n))
    names = random_names(20_000, seed=n * 10 + rf)
    held = Counter(m for name in names for m in ring.replicas(name, rf))
    for member, share in owns.items():
        assert 0.0 < share <= 1.0
        # a sample of 20,000 names: within 2.5 points of the exact share
        assert abs(held[member] / len(names) - share) < 0.025, (member, share)


def test_adding_a_member_moves_about_a_quarter_of_primaries():
    names = random_names(10_000, seed=11)
    before = Ring(addresses(3))
    after = Ring(addresses(4))
    moved = [name for name in names if before.replicas(name, 1) != after.replicas(name, 1)]
    assert 0.15 <= len(moved) / len(names) <= 0.35
    # a series only ever moves to the new member
    assert {after.replicas(name, 1)[0] for name in moved} == {addresses(4)[3]}


@pytest.mark.parametrize("n, rf", [(3, 2), (5, 3), (4, 4), (2, 3)])
def test_shared_ranges_symmetric_and_consistent_with_replicas(n, rf):
    members = addresses(n)
    ring = Ring(members, vnodes=20)
    names = random_names(300, seed=n * 10 + rf)
    for a in members:
        for b in members:
            shared = ring.shared_ranges(a, b, rf)
            assert shared == ring.shared_ranges(b, a, rf)
            assert shared == sorted(shared)
            assert shared == [i for i in range(ring.ranges())
                              if {a, b} <= set(ring.range_preference(i)[:rf])]
            shared_set = set(shared)
            for name in names:
                both = {a, b} <= set(ring.replicas(name, rf))
                assert (ring.range_index(name) in shared_set) == both
    if rf >= n:
        assert ring.shared_ranges(members[0], members[1], rf) == list(range(ring.ranges()))


def test_digest_tracks_members_and_vnodes():
    base = Ring(["a:1", "b:1", "c:1"])
    assert base.digest() == Ring(["c:1", "a:1", "b:1"]).digest()
    assert len(base.digest()) == 16
    int(base.digest(), 16)
    others = [Ring(["a:1", "b:1"]), Ring(["a:1", "b:1", "c:1", "d:1"]),
              Ring(["a:1", "b:1", "c:2"]), Ring(["a:1", "b:1", "c:1"], vnodes=149)]
    digests = {base.digest()} | {r.digest() for r in others}
    assert len(digests) == 1 + len(others)


PREF = ["n1", "n2", "n3", "n4", "n5"]


def alive_except(*down: str):
    return lambda member: member not in down


def test_sloppy_all_alive():
    assert sloppy_targets(PREF, 3, alive_except()) == [("n1", None), ("n2", None), ("n3", None)]


def test_sloppy_one_replica_down_uses_first_alive_spare():
    assert sloppy_targets(PREF, 3, alive_except("n2")) == \
        [("n1", None), ("n4", "n2"), ("n3", None)]
    # a dead spare is passed over
    assert sloppy_targets(PREF, 3, alive_except("n2", "n4")) == \
        [("n1", None), ("n5", "n2"), ("n3", None)]


def test_sloppy_each_spare_stands_in_once():
    assert sloppy_targets(PREF, 3, alive_except("n1", "n3")) == \
        [("n4", "n1"), ("n2", None), ("n5", "n3")]


def test_sloppy_no_substitute_left_skips_replica():
    assert sloppy_targets(PREF, 3, alive_except("n1", "n2", "n5")) == \
        [("n4", "n1"), ("n3", None)]
    assert sloppy_targets(PREF, 3, alive_except(*PREF)) == []


def test_sloppy_rf_equals_n_has_no_spares():
    assert sloppy_targets(PREF, 5, alive_except("n3")) == \
        [("n1", None), ("n2", None), ("n4", None), ("n5", None)]
    assert sloppy_targets(PREF[:2], 3, alive_except("n1")) == [("n2", None)]


# --- moves and arc_of ------------------------------------------------------------------------

moves, arc_of = ring_module.moves, ring_module.arc_of
TOP = 2 ** 64 - 1


def in_arc(t: int, arc: tuple[int, int]) -> bool:
    """The definition: (lo, hi], wrapping round zero when lo >= hi (lo == hi: the whole ring)."""
    lo, hi = arc
    return lo < t <= hi if lo < hi else (t > lo or t <= hi)


def brute_arc_of(tokens: list[int], arcs: list[tuple[int, int]]) -> list[int]:
    found = []
    for t in tokens:
        holding = [i for i, arc in enumerate(arcs) if in_arc(t, arc)]
        assert len(holding) <= 1, "arcs overlap"
        found.append(holding[0] if holding else -1)
    return found


def probe_tokens(*rings: Ring) -> list[int]:
    """Every vnode token of the rings and its neighbours, the ends of the ring, and random
    positions: the places where an off-by-one in arc bounds would show."""
    edges = {int(t) for r in rings for t in r.vnode_tokens()}
    near = {(t + d) % 2 ** 64 for t in edges for d in (-1, 0, 1)}
    rng = random.Random(len(edges))
    return sorted(near | {0, 1, TOP} | {rng.getrandbits(64) for _ in range(100)})


def _losers_first(now: list[str], later: list[str]) -> list[str]:
    return [m for m in now if m not in later] + [m for m in now if m in later]


def check_moves(current: Ring, future: Ring, rf_now: int, rf_later: int, names: list[str]
                ) -> dict[str, list]:
    """``moves`` against the definition, by series name and by ring position."""
    gains = moves(current, future, rf_now, rf_later)
    assert set(gains) <= set(future.members)
    everyone = sorted(set(current.members) | set(future.members))
    positions = probe_tokens(current, future)
    tokens = np.array(positions, np.uint64)
    cur = [current.range_preference(int(i))[:rf_now] for i in current.token_ranges(tokens)]
    fut = [future.range_preference(int(i))[:rf_later] for i in future.token_ranges(tokens)]
    name_tokens = current.tokens_of(names)
    for member in everyone:
        arcs = gains.get(member, [])
        assert member not in gains or arcs, "a member listed with nothing to fetch"
        bounds = [arc for arc, _ in arcs]
        at = arc_of(tokens, bounds).tolist()
        assert at == brute_arc_of(positions, bounds)  # and the arcs are disjoint
        for t, i, now, later in zip(positions, at, cur, fut):
            assert (i >= 0) == (member in later and member not in now), (member, t)
            if i >= 0:  # the replicas losing the arc first, then the others
                assert arcs[i][1] == _losers_first(now, later), (member, t)
        for name, i in zip(names, arc_of(name_tokens, bounds).tolist()):
            now, later = current.replicas(name, rf_now), future.replicas(name, rf_later)
            assert (i >= 0) == (member in later and member not in now), (member, name)
            if i >= 0:
                assert arcs[i][1] == _losers_first(now, later), (member, name)
        # adjacent arcs with the same sources are merged
        for (a, src_a), (b, src_b) in zip(arcs, arcs[1:]):
            assert not (a[1] == b[0] and src_a == src_b), (member, a, b)
    return gains


POOL = addresses(7)


@given(current=st.lists(st.sampled_from(POOL), min_size=1, max_size=7, unique=True),
       future=st.lists(st.sampled_from(POOL), min_size=1, max_size=7, unique=True),
       vnodes=st.integers(1, 12), rf_now=st.integers(1, 4), rf_later=st.integers(1, 4))
@settings(max_examples=80, deadline=None, derandomize=True)
def test_moves_are_exactly_the_new_replicas_with_the_current_ones_as_sources(
        current, future, vnodes, rf_now, rf_later):
    check_moves(Ring(current, vnodes), Ring(future, vnodes), rf_now, rf_later,
                random_names(150, seed=vnodes))


def test_moves_between_equal_rings_or_to_fewer_replicas_are_empty():
    ring = Ring(addresses(4), vnodes=10)
    assert moves(ring, ring, 2, 2) == {}
    assert moves(ring, Ring(addresses(4)[::-1], vnodes=10), 3, 3) == {}
    assert moves(ring, ring, 3, 2) == {}


@pytest.mark.parametrize("rf", [1, 2, 3])
def test_moves_adding_then_removing_a_member(rf):
    members, new = addresses(4), addresses(5)[4]
    before, after = Ring(members, vnodes=20), Ring([*members, new], vnodes=20)
    names = random_names(300, seed=rf)
    added = check_moves(before, after, rf, rf, names)
    assert set(added) == {new}  # only the newcomer fetches anything
    assert all(new not in sources and len(sources) == rf for _, sources in added[new])
    removed = check_moves(after, before, rf, rf, names)
    assert new not in removed and removed
    # what each member fetches when it goes is what that member lost when it came
    for member, arcs in removed.items():
        assert all(new in sources for _, sources in arcs)
        at = arc_of(after.tokens_of(names), [arc for arc, _ in arcs]).tolist()
        for name, i in zip(names, at):
            lost = member in before.replicas(name, rf) and member not in after.replicas(name, rf)
            assert (i >= 0) == lost


def test_moves_growing_from_one_member_to_two_with_rf_two():
    """The newcomer takes the whole ring, as one arc, from the only member."""
    before, after = Ring(["a"]), Ring(["a", "b"])
    gains = check_moves(before, after, 1, 2, random_names(200, seed=5))
    top = int(np.union1d(before.vnode_tokens(), after.vnode_tokens())[-1])
    assert gains == {"b": [((top, top), ["a"])]}
    everywhere = np.array(probe_tokens(before, after), np.uint64)
    assert (arc_of(everywhere, [(top, top)]) == 0).all()


def test_moves_raising_rf_on_one_ring():
    ring = Ring(addresses(3), vnodes=8)
    gains = check_moves(ring, ring, 1, 2, random_names(200, seed=6))
    assert set(gains) == set(addresses(3))
    for member, arcs in gains.items():
        for _, sources in arcs:
            assert len(sources) == 1 and sources != [member]


def test_tokens_of_token_ranges_and_vnode_tokens_agree_with_the_scalar_forms():
    ring = Ring(addresses(3), vnodes=16)
    names = random_names(100, seed=8)
    tokens = ring.tokens_of(names)
    assert tokens.dtype == np.uint64 and tokens.tolist() == [token(n) for n in names]
    assert ring.token_ranges(tokens).tolist() == [ring.range_index(n) for n in names]
    vt = ring.vnode_tokens()
    assert len(vt) == ring.ranges() and (np.diff(vt.astype(object)) >= 0).all()
    assert sorted(vt.tolist()) == sorted(token(f"{m}#{i}") for m in addresses(3) for i in range(16))
    # a vnode token belongs to its own range; one past the largest wraps to range 0
    assert ring.token_ranges(vt).tolist() == list(range(ring.ranges()))
    edge = np.array([int(vt[-1]) + 1, 0, int(vt[0])], np.uint64)
    assert ring.token_ranges(edge).tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", range(40))
def test_arc_of_matches_brute_force(seed):
    rng = random.Random(seed)
    cuts = {rng.getrandbits(64) for _ in range(rng.randint(1, 9))}
    cuts |= set(rng.sample([0, 1, TOP - 1, TOP], rng.randint(0, 2)))
    cuts_sorted = sorted(cuts)
    # consecutive arcs round the ring; the first wraps round zero
    ring_arcs = [(cuts_sorted[i - 1], cuts_sorted[i]) for i in range(len(cuts_sorted))]
    arcs = rng.sample(ring_arcs, rng.randint(0, len(ring_arcs)))
    positions = sorted({(c + d) % 2 ** 64 for c in cuts for d in (-1, 0, 1)}
                       | {0, TOP} | {rng.getrandbits(64) for _ in range(50)})
    got = arc_of(np.array(positions, np.uint64), arcs)
    assert got.dtype == np.int64
    assert got.tolist() == brute_arc_of(positions, arcs)


@pytest.mark.parametrize(("arcs", "positions", "want"), [
    ([], [0, 5, TOP], [-1, -1, -1]),
    ([(7, 7)], [0, 6, 7, 8, TOP], [0, 0, 0, 0, 0]),  # lo == hi: the whole ring
    ([(TOP - 10, 5)], [TOP - 10, TOP - 9, TOP, 0, 5, 6], [-1, 0, 0, 0, 0, -1]),  # wraps
    ([(0, TOP)], [0, 1, TOP], [-1, 0, 0]),  # zero itself is past the top, in no arc
    ([(10, 20), (TOP - 1, 10), (20, 30)], [10, 11, 20, 21, 30, 31, TOP, 0],
     [1, 0, 0, 2, 2, -1, 1, 1]),
])
def test_arc_of_cases(arcs, positions, want):
    assert arc_of(np.array(positions, np.uint64), arcs).tolist() == want
    assert brute_arc_of(positions, arcs) == want
    assert arc_of(np.array([], np.uint64), arcs).tolist() == []
