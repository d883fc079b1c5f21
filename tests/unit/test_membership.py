"""Unit tests for count.cluster.membership: heartbeats, liveness events, partitions, the wire."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster.membership import (
    WIRE_HINT_ENTRIES_MAX,
    WIRE_STRING_CHARS_MAX,
    Event,
    Heartbeat,
    Membership,
    describe,
    members_digest,
)

A, B, C = "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"
MEMBERS = (A, B, C)
DIGEST = members_digest(MEMBERS)
IDS = {A: 1, B: 2, C: 3}
# Startup grace with a 1 s interval and a 4 s timeout: 3 * 1 + 4.
GRACE_S = 7.0


def membership(members: tuple[str, ...] = MEMBERS, self_address: str = A,
               local_pause_s: float = 1e9) -> Membership:
    """A member's view; the tests tick it sparsely, so its local pause guard is off unless a
    test is about it."""
    return Membership(self_address, IDS.get(self_address, 1), members,
                      heartbeat_interval_s=1.0, failure_timeout_s=4.0,
                      local_pause_s=local_pause_s)


def hb(address: str, seq: int, *, generation: int = 1000, state: str = "normal",
       digest: str = DIGEST, hints: dict[str, int] | None = None) -> Heartbeat:
    return Heartbeat(IDS.get(address, 9), address, generation, seq, state, digest,
                     {"points": 10 * seq, "bytes": 100 * seq, "hints": hints or {}})


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def past_grace(m: Membership) -> None:
    """Tick at 0 and after the startup grace, so partitions are reported from then on."""
    m.tick(0.0)
    m.tick(GRACE_S)


# --- construction and self ---------------------------------------------------------------

def test_self_must_be_a_member_and_members_distinct():
    with pytest.raises(AssertionError):
        Membership("10.0.0.9:8080", 1, MEMBERS, heartbeat_interval_s=1.0, failure_timeout_s=4.0)
    with pytest.raises(AssertionError):
        Membership(A, 1, (A, B, B), heartbeat_interval_s=1.0, failure_timeout_s=4.0)


def test_self_is_always_alive_and_others_only_after_a_heartbeat():
    m = membership()
    assert m.size == 3
    assert m.alive(A) and not m.alive(B) and not m.alive(C)
    assert m.alive_members() == [A] and m.alive_count() == 1
    assert m.node_id(A) == 1 and m.node_id(B) is None
    assert m.down_since_s(B) is None
    assert kinds(m.tick(0.0) + m.tick(100.0)) == ["partition"]  # nothing about self
    assert m.alive(A)


def test_heartbeats_from_self_or_strangers_are_ignored():
    m = membership()
    assert m.receive(hb(A, 1), 0.0) == []
    assert m.receive(hb("10.0.0.9:8080", 1), 0.0) == []
    assert m.alive_members() == [A]
    assert not m.alive("10.0.0.9:8080") and m.node_id("10.0.0.9:8080") is None


# --- joining, unreachable, back online ---------------------------------------------------

def test_first_heartbeat_is_joining():
    m = membership()
    events = m.receive(hb(B, 1), 0.0)
    assert events == [Event("joining", B, 2, events[0].detail)]
    assert m.alive(B) and m.node_id(B) == 2
    assert m.receive(hb(B, 2), 1.0) == []  # joining is reported once


@pytest.mark.parametrize("tick_phase_s", [0.0, 0.3, 0.5, 0.99])
def test_silent_member_is_unreachable_within_5_s_and_back_on_its_first_heartbeat(tick_phase_s):
    m = membership(members=(A, B))
    for second in range(20):
        m.receive(hb(B, second + 1), float(second))
        assert m.tick(second + tick_phase_s) == []
    last_s = 19.0
    events, now_s = [], last_s + tick_phase_s
    while not events:
        now_s += 1.0
        events = m.tick(now_s)
    assert now_s - last_s <= 5.0
    assert kinds(events)[0] == "unreachable" and events[0].address == B
    assert not m.alive(B) and m.down_since_s(B) == now_s
    assert "unreachable" not in kinds(m.tick(now_s + 1.0) + m.tick(now_s + 30.0))  # once
    events = m.receive(hb(B, 21), now_s + 60.0)
    assert kinds(events)[0] == "back_online"
    assert m.alive(B) and m.down_since_s(B) is None
    assert m.tick(now_s + 60.5) == []


def test_regular_heartbeats_keep_a_member_alive():
    m = membership()
    for second in range(100):
        m.receive(hb(B, second + 1), float(second))
        m.receive(hb(C, second + 1), second + 0.5)
        assert m.tick(second + 0.9) == []
    assert m.health() == "healthy"


def test_a_stalled_loop_convicts_no_peer_and_judges_them_from_its_resumption():
    """SIGSTOP for 8 s: the ticks stop, heartbeats queue unread. The first tick after it is
    a local pause, not five peers down; a peer that really died meanwhile is convicted one
    failure timeout after the resumption."""
    m = membership(local_pause_s=2.0)
    for second in range(10):
        m.receive(hb(B, second + 1), float(second))
        m.receive(hb(C, second + 1), float(second))
        assert m.tick(second + 0.5) == []
    events = m.tick(17.5)  # stalled from 9.5 to 17.5
    assert kinds(events) == ["local_pause"]
    assert describe(events[0]).startswith("Not marking nodes down: this node's own loop "
                                          "stalled for 7.0 s")
    assert m.alive(B) and m.alive(C)
    m.receive(hb(B, 11), 17.6)  # B's queued heartbeats are read; C died during the pause
    events, now_s = [], 17.5
    while not events:
        now_s += 1.0
        m.receive(hb(B, int(now_s)), now_s)
        events = m.tick(now_s)
    assert kinds(events) == ["unreachable"] and events[0].address == C
    assert m.alive(B)
    # As long after the resumption as C's silence before the stall lets the detector wait.
    assert 1.0 <= now_s - 17.5 <= 4.0


def test_heartbeats_read_before_the_stalled_tick_are_not_moved_into_the_future():
    """The turn after a stall may read queued heartbeats before its timers run: the stall
    must not push their arrival past now (the next heartbeat would then arrive "earlier")."""
    m = membership(local_pause_s=2.0)
    for second in range(5):
        m.receive(hb(B, second + 1), float(second))
        m.tick(second + 0.5)
    m.receive(hb(B, 6), 12.5)  # read first in the turn after a stall from 4.5 to 12.5
    assert kinds(m.tick(12.5)) == ["local_pause"]
    assert m.receive(hb(B, 7), 13.0) == []
    assert m.tick(13.5) == [] and m.alive(B)


# --- leaving and restarts ----------------------------------------------------------------

def test_leaving_marks_down_at_once_and_a_normal_heartbeat_brings_it_back():
    m = membership()
    m.receive(hb(B, 1), 0.0)
    events = m.receive(hb(B, 2, state="leaving"), 0.5)
    assert kinds(events) == ["leaving"]
    assert not m.alive(B) and m.down_since_s(B) == 0.5
    assert m.receive(hb(B, 3, state="leaving"), 0.6) == []  # reported once
    assert kinds(m.tick(1.0) + m.tick(30.0)) == ["partition"]  # not "unreachable"
    assert m.down_since_s(B) == 0.5
    assert kinds(m.receive(hb(B, 4), 31.0)) == ["back_online", "partition_healed"]
    assert m.alive(B)


def test_leaving_then_a_new_generation_is_a_restart():
    m = membership()
    m.receive(hb(B, 1), 0.0)
    m.receive(hb(B, 2, state="leaving"), 1.0)
    events = m.receive(hb(B, 1, generation=2000), 5.0)
    assert kinds(events) == ["restarted"]
    assert events[0].detail == "generation 2000"
    assert m.alive(B)


def test_a_restart_while_alive_is_reported():
    m = membership()
    m.receive(hb(B, 50), 0.0)
    assert kinds(m.receive(hb(B, 1, generation=2000), 1.0)) == ["restarted"]
    assert m.view(1.0)[1].generation == 2000


def test_a_restarted_member_is_not_judged_by_the_old_generations_rhythm():
    m = membership(members=(A, B))
    for i in range(30):  # the old run beat every 3 s
        m.receive(hb(B, i + 1), 3.0 * i)
        assert m.tick(3.0 * i + 0.1) == []
    restart_s = 3.0 * 30
    m.receive(hb(B, 1, generation=2000), restart_s)
    # A fresh detector expects 1 s heartbeats: 3 s of silence is suspicious now.
    assert kinds(m.tick(restart_s + 3.0))[0] == "unreachable"


def test_stale_heartbeats_are_ignored():
    m = membership()
    m.receive(hb(B, 5, generation=2000), 0.0)
    assert m.receive(hb(B, 5, generation=2000, state="leaving"), 1.0) == []  # same seq
    assert m.receive(hb(B, 4, generation=2000, state="leaving"), 1.0) == []  # older seq
    assert m.receive(hb(B, 99, generation=1000, state="leaving"), 1.0) == []  # older run
    assert m.alive(B) and m.view(1.0)[1].state == "normal"
    assert m.view(1.0)[1].heartbeat_age_s == 1.0  # stale ones do not count as heard from


def test_first_heartbeat_leaving_is_reported_as_leaving():
    m = membership()
    assert kinds(m.receive(hb(B, 1, state="leaving"), 0.0)) == ["leaving"]
    assert not m.alive(B) and m.down_since_s(B) == 0.0 and m.node_id(B) == 2


# --- configuration mismatch --------------------------------------------------------------

def test_config_mismatch_is_reported_once_per_address_and_generation():
    m = membership()
    other = members_digest((A, B))
    events = m.receive(hb(B, 1, digest=other), 0.0)
    assert kinds(events) == ["joining", "config_mismatch"]
    assert m.alive(B)  # still a member, just misconfigured
    assert m.receive(hb(B, 2, digest=other), 1.0) == []
    assert kinds(m.receive(hb(C, 1, digest=other), 1.0)) == ["joining", "config_mismatch"]
    assert kinds(m.receive(hb(B, 1, generation=2000, digest=other), 2.0)) == [
        "restarted", "config_mismatch"]
    assert m.receive(hb(B, 2, generation=2000), 3.0) == []


def test_members_digest_ignores_order_but_not_content():
    assert members_digest([C, A, B]) == members_digest([A, B, C])
    assert members_digest([A, B]) != members_digest([A, B, C])
    assert members_digest(["a:1,b:2"]) != members_digest(["a:1", "b:2"])
    assert all(ch in "0123456789abcdef" for ch in members_digest(MEMBERS))


# --- majority and partitions -------------------------------------------------------------

def test_no_partition_is_reported_while_a_starting_cluster_finds_itself():
    m = membership()
    assert not m.has_majority()
    for tick_s in (0.0, 1.0, 3.0, 6.9):
        assert m.tick(tick_s) == []
    events = m.tick(GRACE_S)
    assert events == [Event("partition", "", None, "sees 1 of 3")]
    assert describe(events[0]) == (
        "Network partition detected: this node sees 1 of 3 members alive;"
        " writes are refused until a majority is reachable")
    assert m.tick(8.0) == []  # reported once


def test_a_member_found_during_the_grace_means_no_partition():
    m = membership()
    m.tick(0.0)
    assert m.receive(hb(B, 1), 2.0) == [Event("joining", B, 2, "")]
    for second in range(3, 12):
        m.receive(hb(B, second), float(second))
        assert m.tick(second + 0.5) == []


def test_receive_before_any_tick_reports_no_partition():
    m = membership()
    assert kinds(m.receive(hb(B, 1, state="leaving"), 100.0)) == ["leaving"]


def test_partition_and_healing_on_tick_and_receive():
    m = membership()
    past_grace(m)  # reports the partition of a lonely start
    events = m.receive(hb(B, 1), 10.0)
    assert kinds(events) == ["joining", "partition_healed"]
    assert events[1] == Event("partition_healed", "", None, "2 of 3")
    assert describe(events[1]) == "Network partition healed: 2 of 3 members alive"
    m.receive(hb(C, 1), 10.0)
    assert m.health() == "healthy"
    assert kinds(m.receive(hb(C, 2, state="leaving"), 10.5)) == ["leaving"]
    assert m.health() == "degraded" and m.has_majority()
    events = m.tick(20.0)  # B fell silent too
    assert kinds(events) == ["unreachable", "partition"]
    assert events[1].detail == "sees 1 of 3"
    assert m.health() == "unhealthy"
    assert kinds(m.receive(hb(C, 3), 21.0)) == ["back_online", "partition_healed"]


def test_losing_the_majority_on_receive_is_reported_after_the_grace():
    m = membership()
    m.receive(hb(B, 1), 0.0)
    past_grace(m)
    m.receive(hb(B, 2), GRACE_S)
    assert kinds(m.receive(hb(B, 3, state="leaving"), GRACE_S + 0.5)) == ["leaving", "partition"]


def test_a_single_member_cluster_never_partitions():
    m = membership(members=(A,))
    assert m.has_majority() and m.health() == "healthy" and m.alive_count() == 1
    for tick_s in range(0, 100, 5):
        assert m.tick(float(tick_s)) == []


def test_two_members_need_both_for_a_majority():
    m = membership(members=(A, B))
    assert not m.has_majority() and m.health() == "unhealthy"
    m.receive(hb(B, 1), 0.0)
    assert m.has_majority() and m.health() == "healthy"


# --- load, hints and the status view -----------------------------------------------------

def test_hints_held_come_from_alive_members_latest_heartbeats():
    m = membership()
    m.receive(hb(B, 1, hints={C: 5}), 0.0)
    m.receive(hb(B, 2, hints={C: 7}), 1.0)
    m.receive(hb(C, 1, hints={B: 1}), 1.0)
    assert m.hints_held() == {B: {C: 7}, C: {B: 1}}
    m.receive(hb(C, 2, state="leaving", hints={B: 1}), 1.5)
    assert m.hints_held() == {B: {C: 7}}
    m.hints_held()[B][C] = 0  # a copy
    assert m.hints_held() == {B: {C: 7}}


def test_view_shows_every_member_in_configuration_order():
    m = membership(self_address=B)
    m.receive(hb(C, 3, hints={A: 2}), 10.0)
    views = m.view(12.5)
    assert [v.address for v in views] == [A, B, C]
    a, b, c = views
    assert (a.alive, a.state, a.node_id, a.heartbeat_age_s, a.generation, a.load, a.is_self) == (
        False, "unknown", None, None, None, {}, False)
    assert (b.alive, b.state, b.node_id, b.is_self) == (True, "normal", 2, True)
    assert (c.alive, c.state, c.node_id, c.heartbeat_age_s, c.generation, c.is_self) == (
        True, "normal", 3, 2.5, 1000, False)
    assert c.load == {"points": 30, "bytes": 300, "hints": {A: 2}}


# --- log lines ---------------------------------------------------------------------------

@pytest.mark.parametrize(("event", "line"), [
    (Event("joining", B, 2, ""), "Node 2 joining (127.0.0.1:8081)"),
    (Event("unreachable", B, 2, "silent for 4.0 s"), "Node 2 unreachable (127.0.0.1:8081)"),
    (Event("back_online", B, 2, ""), "Node 2 back online (127.0.0.1:8081)"),
    (Event("leaving", B, "count-1", ""), "Node count-1 leaving (127.0.0.1:8081)"),
    (Event("restarted", B, 2, "generation 17"),
     "Node 2 restarted (127.0.0.1:8081, generation 17)"),
    (Event("unreachable", B, None, ""), "Node 127.0.0.1:8081 unreachable (127.0.0.1:8081)"),
    (Event("config_mismatch", B, 2, "x"),
     ("Cluster configuration differs: node 2 (127.0.0.1:8081) lists other members than this"
      " node (CLUSTER_NODES must be the same on every node of a new cluster; x)")),
])
def test_describe(event, line):
    assert describe(event) == line


# --- the wire ----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=WIRE_STRING_CHARS_MAX)
counts = st.integers(min_value=0, max_value=2**63)
heartbeats = st.builds(
    Heartbeat,
    node_id=st.one_of(counts, names), address=names, generation=counts, seq=counts,
    state=st.sampled_from(["normal", "leaving"]), members_digest=names,
    load=st.fixed_dictionaries({"points": counts, "bytes": counts,
                                "hints": st.dictionaries(names, counts, max_size=20)}),
    epoch=counts, streamed=counts)


@given(heartbeats)
def test_wire_round_trip_through_msgpack(beat):
    wire = msgpack.unpackb(msgpack.packb(beat.to_wire(), use_bin_type=True), raw=False)
    assert wire[0] == 2
    assert Heartbeat.from_wire(wire) == beat


GOOD = hb(B, 1, hints={C: 1}).to_wire()


def replaced(index: int, value: object) -> list:
    wire = list(GOOD)
    wire[index] = value
    return wire


@pytest.mark.parametrize("obj", [
    None, 1, "heartbeat", {}, [], [1] + GOOD[1:], [True] + GOOD[1:], ["1"] + GOOD[1:],
    GOOD[:-1], GOOD + [0],
    replaced(1, -2), replaced(1, 1.5), replaced(1, ""), replaced(1, None), replaced(1, True),
    replaced(2, "x" * (WIRE_STRING_CHARS_MAX + 1)), replaced(2, b"127.0.0.1:8081"),
    replaced(3, -1), replaced(3, 1.0), replaced(4, -1), replaced(4, "1"),
    replaced(5, "gone"), replaced(5, ["normal"]), replaced(6, None), replaced(6, ""),
    replaced(7, -5), replaced(8, 2.5), replaced(9, [[C, 1]]), replaced(9, {C: -1}),
    replaced(9, {1: 1}), replaced(9, {C: "1"}), replaced(9, {"x" * 300: 1}),
    replaced(9, {f"10.0.0.{i}:80": 1 for i in range(WIRE_HINT_ENTRIES_MAX + 1)}),
    replaced(10, -1), replaced(10, "1"), replaced(11, 1.5),
])
def test_from_wire_refuses_malformed_heartbeats(obj):
    with pytest.raises(ValueError):
        Heartbeat.from_wire(obj)


def test_from_wire_accepts_the_largest_allowed_hints():
    hints = {f"10.0.{i // 256}.{i % 256}:80": i for i in range(WIRE_HINT_ENTRIES_MAX)}
    assert Heartbeat.from_wire(replaced(9, hints)).load["hints"] == hints


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300)
    | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30)


@given(st.one_of(wire_values, st.lists(wire_values, min_size=10, max_size=10).map(
    lambda fields: [1, *fields[1:]])))
def test_from_wire_raises_only_value_error_on_garbage(obj):
    try:
        Heartbeat.from_wire(obj)
    except ValueError:
        pass


# --- invariants over random histories ----------------------------------------------------

operations = st.lists(st.tuples(
    st.sampled_from(["tick", B, C, "10.0.0.9:1", A]),
    st.floats(min_value=0.0, max_value=6.0),  # time passing before the operation
    st.sampled_from(["normal", "normal", "normal", "leaving"]),
    st.integers(min_value=0, max_value=3)),  # 0: same run, else a restart
    max_size=120)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_events_follow_the_state_changes_they_report(ops):
    m = membership()
    now_s, runs, seqs = 0.0, {B: 1000, C: 1000}, {B: 0, C: 0}
    partitioned = False
    for target, dt_s, state, restart in ops:
        now_s += dt_s
        before = {a: m.alive(a) for a in MEMBERS}
        if target == "tick":
            events = m.tick(now_s)
        else:
            if target in runs and restart == 3:
                runs[target] += 1
                seqs[target] = 0
            seqs[target] = seqs.get(target, 0) + 1
            events = m.receive(hb(target, seqs[target], generation=runs.get(target, 1),
                                  state=state), now_s)
        assert m.alive(A)
        for event in events:
            assert event.address != A
            if event.kind == "unreachable":
                assert before[event.address] and not m.alive(event.address)
            elif event.kind in ("back_online", "joining"):
                assert not before[event.address] and m.alive(event.address)
            elif event.kind == "leaving":
                assert not m.alive(event.address)
            elif event.kind == "partition":
                assert not partitioned and not m.has_majority()
                partitioned = True
            elif event.kind == "partition_healed":
                assert partitioned and m.has_majority()
                partitioned = False
        assert m.alive_count() == len(m.alive_members())
        assert all((m.down_since_s(a) is None) == m.alive(a) for a in (B, C)
                   if m.node_id(a) is not None)


def test_whole_means_every_member_alive_and_listing_the_same_members():
    m = membership()
    assert not m.whole()  # nobody heard yet
    m.receive(hb(B, 1), 0.5)
    assert not m.whole()
    m.receive(hb(C, 1, digest=members_digest((A, B, C, "127.0.0.1:8083"))), 0.5)
    assert not m.whole()  # C lists another member set
    m.receive(hb(C, 2), 0.6)
    assert m.whole()
    m.receive(hb(B, 2, state="leaving"), 0.7)
    assert not m.whole()  # B stopped
    m.receive(hb(B, 1, generation=2000), 0.8)
    assert m.whole()
    m.tick(0.8)
    m.tick(20.0)  # both silent past the failure timeout
    assert not m.whole()
    assert membership(members=(A,)).whole()  # a cluster of one is whole
