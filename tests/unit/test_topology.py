"""Unit tests for count.cluster.topology: the versioned membership record, its changes and
their refusals, the state sets, the digest and the checked wire form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster.topology import (
    ADDRESS_CHARS_MAX,
    CHANGING,
    MEMBERS_MAX,
    STATES,
    Busy,
    Member,
    Topology,
    TopologyError,
)

A, B, C, D = "10.0.0.1:7100", "10.0.0.2:7100", "10.0.0.3:7100", "10.0.0.4:7100"
IDS = {A: 1, B: 2, C: 3, D: 4}


def three() -> Topology:
    return Topology.initial([C, A, B], IDS)


def states(t: Topology) -> dict[str, str]:
    return {m.address: m.state for m in t.members}


# --- epoch 1 ---------------------------------------------------------------------------

def test_initial_is_epoch_one_sorted_all_normal_named_by_address_until_id_known():
    t = Topology.initial([C, A, B], {A: 1, C: 3})
    assert t.epoch == 1
    assert [m.address for m in t.members] == [A, B, C]
    assert all(m.state == "normal" for m in t.members)
    assert [m.node_id for m in t.members] == [1, B, 3]
    assert t.changing() is None
    assert t.owners() == t.future() == t.voters() == t.active() == [A, B, C]


def test_with_ids_fills_ids_and_keeps_the_digest():
    t = Topology.initial([A, B], {})
    filled = t.with_ids({A: 1, B: 2, D: 4})
    assert [m.node_id for m in filled.members] == [1, 2]
    assert filled.epoch == t.epoch and filled.digest() == t.digest()
    assert filled.with_ids({}) == filled  # an id once learned is kept


# --- join ------------------------------------------------------------------------------

def test_join_adds_a_joiner_at_the_next_epoch_then_finish_makes_it_normal():
    t = three().join(D, 4)
    assert t.epoch == 2
    assert t.member(D) == Member(D, 4, "joining", 2)
    assert t.changing() == Member(D, 4, "joining", 2)
    assert [m.address for m in t.members] == [A, B, C, D]
    done = t.finish()
    assert done.epoch == 3 and done.state(D) == "normal" and done.changing() is None


def test_join_keeps_members_sorted_by_address():
    t = Topology.initial([B, D], IDS).join(A, 1).finish().join(C, 3)
    assert [m.address for m in t.members] == [A, B, C, D]


def test_joining_twice_or_joining_a_member_is_refused():
    t = three().join(D, 4)
    with pytest.raises(TopologyError, match="already a member"):
        t.join(D, 4)
    with pytest.raises(TopologyError, match="already a member"):
        three().join(A, 9)
    with pytest.raises(TopologyError, match=r"already a member \(normal\)"):
        t.finish().join(D, 4)


def test_a_second_change_while_one_is_in_flight_is_busy_naming_the_member():
    joining = three().join(D, 4)
    with pytest.raises(Busy, match=r"node 4 \(10\.0\.0\.4:7100\) is joining"):
        joining.join("10.0.0.5:7100", 5)
    with pytest.raises(Busy, match=r"node 4 \(10\.0\.0\.4:7100\) is joining"):
        joining.leave(A)
    leaving = three().leave(B)
    with pytest.raises(Busy, match=r"node 2 \(10\.0\.0\.2:7100\) is leaving"):
        leaving.join(D, 4)
    with pytest.raises(Busy, match=r"node 2 \(10\.0\.0\.2:7100\) is leaving"):
        leaving.leave(A, removed=True)
    removing = three().leave(C, removed=True)
    with pytest.raises(Busy, match=r"node 3 \(10\.0\.0\.3:7100\) is being removed"):
        removing.join(D, 4)
    assert issubclass(Busy, TopologyError)


def test_node_id_clash_is_refused_but_a_left_members_id_may_be_reused():
    with pytest.raises(TopologyError, match=f"NODE_ID 2 is already used by {B}"):
        three().join(D, 2)
    gone = three().leave(B).finish()
    assert gone.state(B) == "left"
    t = gone.join(D, 2)
    assert t.member(D) == Member(D, 2, "joining", t.epoch)


def test_a_left_node_may_join_again_in_place_of_its_left_entry():
    gone = three().leave(B).finish()
    back = gone.join(B, 7)
    assert back.epoch == gone.epoch + 1
    assert [m.address for m in back.members] == [A, B, C]
    assert back.member(B) == Member(B, 7, "joining", back.epoch)
    assert back.finish().state(B) == "normal"


# --- leave, remove, finish --------------------------------------------------------------

@pytest.mark.parametrize(("removed", "state"), [(False, "leaving"), (True, "removing")])
def test_leave_or_remove_then_finish_makes_the_member_left(removed, state):
    t = three().leave(B, removed=removed)
    assert t.epoch == 2 and t.state(B) == state
    assert t.changing() == Member(B, 2, state, 2)
    done = t.finish()
    assert done.epoch == 3 and done.state(B) == "left" and done.changing() is None
    assert done.member(B) is not None  # kept, so that it is known to have left


def test_removing_a_joiner_calls_the_join_off():
    joining = three().join(D, 4)
    for removed in (False, True):
        off = joining.leave(D, removed=removed)
        assert off.epoch == joining.epoch + 1
        assert off.state(D) == "left"
        assert off.changing() is None
        assert states(off) == {A: "normal", B: "normal", C: "normal", D: "left"}


def test_leave_refusals():
    t = three()
    with pytest.raises(TopologyError, match="is not a member"):
        t.leave(D)
    gone = t.leave(B).finish()
    with pytest.raises(TopologyError, match="is not a member"):
        gone.leave(B)
    with pytest.raises(TopologyError, match="already leaving"):
        t.leave(B).leave(B)
    with pytest.raises(TopologyError, match="already removing"):
        t.leave(B, removed=True).leave(B, removed=True)


def test_the_last_member_cannot_leave():
    one = Topology.initial([A], IDS)
    for removed in (False, True):
        with pytest.raises(TopologyError, match="last member"):
            one.leave(A, removed=removed)
    # nor the last one left standing after the others have gone
    down = three().leave(A).finish().leave(B, removed=True).finish()
    assert down.owners() == [C]
    with pytest.raises(TopologyError, match="last member"):
        down.leave(C)


def test_finish_with_nothing_in_flight_is_refused():
    with pytest.raises(TopologyError, match="no change"):
        three().finish()
    with pytest.raises(TopologyError, match="no change"):
        three().join(D, 4).finish().finish()


# --- the state sets ---------------------------------------------------------------------

@pytest.mark.parametrize("changing", CHANGING)
def test_state_sets(changing):
    t = Topology(5, (Member(A, 1, "normal"), Member(B, 2, "left"), Member(C, 3, "normal"),
                     Member(D, 4, changing)))
    owners = {"joining": [A, C], "leaving": [A, C, D], "removing": [A, C, D]}[changing]
    future = {"joining": [A, C, D], "leaving": [A, C], "removing": [A, C]}[changing]
    assert t.owners() == owners
    assert t.voters() == owners  # a joiner never votes, a leaver or removed one still does
    assert t.future() == future
    assert t.active() == [A, C, D]  # left members are not talked to
    assert t.changing() == Member(D, 4, changing)
    assert t.state(B) == "left" and t.state("nobody") is None
    assert t.member("nobody") is None


def test_find_by_node_id_or_address():
    t = Topology.initial([A, B], {A: 1}).join(C, "c-node")
    assert t.find("1") == t.member(A)
    assert t.find(A) == t.member(A)
    assert t.find(B) == t.member(B)  # still named by its address
    assert t.find("c-node") == t.member(C)
    assert t.find("9") is None and t.find("") is None


# --- digest -----------------------------------------------------------------------------

def test_digest_ignores_node_ids():
    a = Topology(3, (Member(A, 1, "normal"), Member(B, 2, "joining")))
    b = Topology(3, (Member(A, A, "normal"), Member(B, "other", "joining")))
    assert a.digest() == b.digest()
    assert len(a.digest()) == 16
    int(a.digest(), 16)


def test_digest_differs_across_states_epochs_and_members():
    base = Topology(3, (Member(A, 1, "normal"), Member(B, 2, "normal")))
    others = [Topology(4, base.members),
              Topology(3, (Member(A, 1, "normal"), Member(B, 2, "leaving"))),
              Topology(3, (Member(A, 1, "normal"), Member(B, 2, "left"))),
              Topology(3, (Member(A, 1, "normal"),)),
              Topology(3, (Member(A, 1, "normal"), Member(C, 2, "normal")))]
    digests = {base.digest()} | {t.digest() for t in others}
    assert len(digests) == 1 + len(others)
    # every state gives its own digest
    assert len({Topology(3, (Member(A, 1, s),)).digest() for s in STATES}) == len(STATES)


# --- MEMBERS_MAX -------------------------------------------------------------------------

def address(i: int) -> str:
    return f"10.1.{i // 256}.{i % 256:03d}:7100"


def full(left: list[int]) -> Topology:
    """MEMBERS_MAX members, those numbered in ``left`` left, the rest normal."""
    return Topology(9, tuple(Member(address(i), i, "left" if i in left else "normal")
                             for i in range(MEMBERS_MAX)))


def test_a_join_past_members_max_drops_a_left_member():
    t = full([10]).join("10.9.9.9:7100", 9999)
    assert len(t.members) == MEMBERS_MAX
    assert t.member(address(10)) is None
    assert t.state("10.9.9.9:7100") == "joining"


def test_a_join_past_members_max_with_no_left_member_is_refused():
    with pytest.raises(TopologyError, match=f"at most {MEMBERS_MAX} members"):
        full([]).join("10.9.9.9:7100", 9999)


def test_the_oldest_left_member_is_dropped_first():
    """The member that left first goes first, whatever its address."""
    t = full([])
    late, early = address(3), address(200)
    t = t.leave(early).finish()  # left first
    t = t.leave(late).finish()  # left later
    t = t.join("10.9.9.9:7100", 9999)
    assert len(t.members) == MEMBERS_MAX
    assert t.member(early) is None, "the member that left first should be dropped"
    assert t.state(late) == "left"


# --- wire -------------------------------------------------------------------------------

def test_wire_form():
    t = three().join(D, "d")
    assert t.to_wire() == [2, [[A, 1, "normal", 0], [B, 2, "normal", 0],
                               [C, 3, "normal", 0], [D, "d", "joining", 2]]]
    assert Topology.from_wire(t.to_wire()) == t
    assert Topology.from_wire([0, []]) == Topology(0, ())


@st.composite
def topologies(draw) -> Topology:
    addresses = draw(st.lists(st.text(min_size=1, max_size=12), max_size=12, unique=True))
    changing = draw(st.sampled_from([None, *CHANGING]))
    at = draw(st.integers(0, max(0, len(addresses) - 1)))
    members = []
    for i, a in enumerate(sorted(addresses)):
        node_id = draw(st.one_of(st.integers(-2 ** 63, 2 ** 64), st.text(max_size=8)))
        state = changing if (changing is not None and i == at) else \
            draw(st.sampled_from(["normal", "left"]))
        members.append(Member(a, node_id, state))
    return Topology(draw(st.integers(0, 2 ** 62)), tuple(members))


@given(topologies())
@settings(max_examples=150, deadline=None, derandomize=True)
def test_wire_round_trip(t):
    back = Topology.from_wire(t.to_wire())
    assert back == t
    assert back.digest() == t.digest()
    assert back.to_wire() == t.to_wire()


def _m(address: str = A, node_id: object = 1, state: str = "normal") -> list[object]:
    return [address, node_id, state, 0]


MALFORMED = {
    "not a list": None,
    "a number": 3,
    "too short": [1],
    "too long": [1, [], []],
    "a dict": {"epoch": 1, "members": []},
    "negative epoch": [-1, []],
    "float epoch": [1.0, []],
    "bool epoch": [True, []],
    "string epoch": ["1", []],
    "members not a list": [1, ((A, 1, "normal"),)],
    "members a dict": [1, {A: [1, "normal"]}],
    "unsorted members": [1, [_m(B, 2), _m(A, 1)]],
    "repeated member": [1, [_m(A, 1), _m(A, 2)]],
    "two joining": [1, [_m(A, 1, "joining"), _m(B, 2, "joining")]],
    "joining and leaving": [1, [_m(A, 1, "joining"), _m(B, 2, "leaving")]],
    "leaving and removing": [1, [_m(A, 1, "removing"), _m(B, 2, "leaving")]],
    "unknown state": [1, [_m(state="dead")]],
    "state not a string": [1, [_m(state=1)]],
    "state a list": [1, [_m(state=["normal"])]],
    "empty address": [1, [_m("")]],
    "address not a string": [1, [[7, 1, "normal", 0]]],
    "over-long address": [1, [_m("a" * (ADDRESS_CHARS_MAX + 1))]],
    "float node id": [1, [_m(node_id=1.5)]],
    "bool node id": [1, [_m(node_id=True)]],
    "null node id": [1, [_m(node_id=None)]],
    "list node id": [1, [_m(node_id=[1])]],
    "member too short": [1, [[A, 1, "normal"]]],
    "member too long": [1, [[A, 1, "normal", 0, 0]]],
    "since past the epoch": [1, [[A, 1, "normal", 2]]],
    "since negative": [1, [[A, 1, "normal", -1]]],
    "member a string": [1, ["abc"]],
    "member a number": [1, [5]],
    "member a dict": [1, [{A: 0, "n1": 0, "normal": 0}]],  # iterates as its keys
    "too many members": [1, [_m(address(i), i) for i in range(MEMBERS_MAX + 1)]],
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_wire_is_refused(wire):
    with pytest.raises(TopologyError):
        Topology.from_wire(wire)


def test_limits_themselves_are_accepted():
    longest = Topology.from_wire([1, [_m("a" * ADDRESS_CHARS_MAX)]])
    assert longest.members[0].address == "a" * ADDRESS_CHARS_MAX
    most = Topology.from_wire([1, [_m(address(i), i) for i in range(MEMBERS_MAX)]])
    assert len(most.members) == MEMBERS_MAX
