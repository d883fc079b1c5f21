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
