"""The peer link as a state machine: coalescing, one message in flight, deadlines and
retries (Lazy Pirate), late replies told from awaited ones, and its bound."""

from __future__ import annotations

import pytest

from count.cluster import link as link_module
from count.cluster.link import PeerLink
from count.cluster.wire import pack_reply, unpack_request
from count.messages import ReplicaRead


def _replies() -> tuple[list[tuple[int, object]], object]:
    got: list[tuple[int, object]] = []
    return got, lambda status, body: got.append((status, body))


def test_what_queues_while_a_message_is_in_flight_leaves_together_in_the_next():
    link = PeerLink("a:1", "b:1", timeout_s=2.0, retries=1)
    got, reply = _replies()
    link.submit(ReplicaRead("s", 0, 1), reply)
    first_id, frame = link.poll(0.0)
    assert unpack_request(frame)[2] == [("read", {"series": "s", "start": 0, "end": 1})]
    for k in range(3):
        link.submit(ReplicaRead(f"q{k}", 0, 1), reply)
    assert link.poll(0.1) is None  # one message in flight
    link.receive(pack_reply(first_id, [(200, "one")]))
    second_id, frame = link.poll(0.2)
    assert second_id == first_id + 1 and len(unpack_request(frame)[2]) == 3
    link.receive(pack_reply(second_id, [(200, 1), (200, 2), (200, 3)]))
    assert got == [(200, "one"), (200, 1), (200, 2), (200, 3)]
    assert not link.busy


def test_a_message_without_answer_is_sent_again_then_fails_with_all_queued_behind_it():
    link = PeerLink("a:1", "b:1", timeout_s=2.0, retries=1)
    got, reply = _replies()
    link.submit(ReplicaRead("s", 0, 1), reply)
    message_id, frame = link.poll(0.0)
    assert link.next_deadline_s() == 2.0
    link.submit(ReplicaRead("t", 0, 1), reply)
    assert link.poll(1.9) is None
    assert link.poll(2.0) == (message_id, frame)  # the retry: the same message
    assert got == []
    assert link.poll(4.0) is None  # retries spent: everything fails now
    assert [status for status, _ in got] == [503, 503]
    assert "did not answer 2 attempts of 2000 ms" in str(got[0][1])
    assert not link.busy and link.timeouts == 2


def test_a_late_answer_to_a_message_given_up_on_is_dropped():
    link = PeerLink("a:1", "b:1", timeout_s=1.0, retries=0)
    got, reply = _replies()
    link.submit(ReplicaRead("s", 0, 1), reply)
    old_id, _ = link.poll(0.0)
    link.poll(1.0)  # fails
    link.submit(ReplicaRead("t", 0, 1), reply)
    new_id, _ = link.poll(1.1)
    link.receive(pack_reply(old_id, [(200, "stale")]))
    assert got == [(503, got[0][1])]
    link.receive(pack_reply(new_id, [(200, "fresh")]))
    assert got[-1] == (200, "fresh")


def test_a_reply_that_does_not_answer_every_operation_fails_them():
    link = PeerLink("a:1", "b:1", timeout_s=1.0, retries=0)
    got, reply = _replies()
    link.submit(ReplicaRead("s", 0, 1), reply)
    link.submit(ReplicaRead("t", 0, 1), reply)
    message_id, _ = link.poll(0.0)
    link.receive(pack_reply(message_id, [(200, "only one")]))
    assert [status for status, _ in got] == [503, 503]
    link.receive(b"\x00garbage")  # nothing in flight: ignored
    assert len(got) == 2


def test_a_full_queue_refuses_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(link_module, "QUEUE_OPS_MAX", 2)
    link = PeerLink("a:1", "b:1", timeout_s=1.0, retries=0)
    got, reply = _replies()
    for k in range(3):
        link.submit(ReplicaRead(f"s{k}", 0, 1), reply)
    assert got == [(503, "node b:1 has 2 operations queued")]


def test_fail_all_answers_everything_queued_or_in_flight():
    link = PeerLink("a:1", "b:1", timeout_s=1.0, retries=3)
    got, reply = _replies()
    link.submit(ReplicaRead("s", 0, 1), reply)
    link.poll(0.0)
    link.submit(ReplicaRead("t", 0, 1), reply)
    link.fail_all("node b:1 is down")
    assert got == [(503, "node b:1 is down")] * 2 and not link.busy
