"""Counting answers (quorum, gather), write batches split and joined, and the catalogue of
operations: round trips of every wire form, refusal of malformed ones."""

from __future__ import annotations

import numpy as np
import pytest

from count.cluster.quorum import Gather, Quorum, once, required
from count.errors import BadRequest
from count.messages import (
    CLIENT_OPERATIONS,
    PEER_OPERATIONS,
    Aggregate,
    BucketPoints,
    DigestRanges,
    Insert,
    ReadRange,
    ReplicaWrite,
    decode,
)
from count.storage.writes import WriteRequest, join


def _write(version: int | np.ndarray = 7) -> WriteRequest:
    return WriteRequest(["a", "b", "c"], np.array([0, 1, 2, 1, 0], np.uint32),
                        np.arange(5, dtype=np.int64), np.arange(5, dtype=np.float64) / 2, version)


@pytest.mark.parametrize(("level", "rf", "needed"), [
    ("one", 3, 1), ("quorum", 1, 1), ("quorum", 2, 2), ("quorum", 3, 2), ("quorum", 5, 3),
    ("all", 3, 3),
])
def test_required_acknowledgements(level, rf, needed):
    assert required(level, rf) == needed


def test_subset_keeps_only_the_chosen_series_and_remaps_indices():
    part = _write().subset(np.array([False, True, True]))
    assert part.names == ["b", "c"]
    assert part.idx.tolist() == [0, 1, 0]
    assert part.ts.tolist() == [1, 2, 3]
    assert part.version == 7


def test_subset_carries_per_point_versions():
    part = _write(np.arange(10, 15, dtype=np.uint64)).subset(np.array([True, False, False]))
    assert part.names == ["a"]
    assert part.ts.tolist() == [0, 4]
    assert part.versions().tolist() == [10, 14]


@pytest.mark.parametrize("version", [9, np.array([1, 2, 3, 4, 5], np.uint64)])
def test_replica_write_decodes_to_the_same_write(version):
    write = _write(version)
    back = ReplicaWrite.from_wire(ReplicaWrite(write, "10.0.0.2:8080").to_wire())
    assert back.hint == "10.0.0.2:8080"
    assert back.write.names == write.names
    assert back.write.idx.tolist() == write.idx.tolist()
    assert back.write.ts.tolist() == write.ts.tolist()
    assert back.write.val.tolist() == write.val.tolist()
    assert back.write.versions().tolist() == write.versions().tolist()


def test_join_makes_one_write_of_single_series_writes():
    parts = [WriteRequest([name], np.zeros(2, np.uint32), np.array([1, 2], np.int64),
                          np.array([0.5, 1.5]), np.array([3, 4], np.uint64)) for name in "xy"]
    joined = join(parts)
    assert joined.names == ["x", "y"]
    assert joined.idx.tolist() == [0, 0, 1, 1]
    assert joined.versions().tolist() == [3, 4, 3, 4]


def test_every_operation_round_trips_through_its_wire_form():
    samples = [
        ReadRange("cpu", 1, 2, "quorum"), Aggregate("cpu", 0, 9, "mean", 5, None),
        DigestRanges("abc", [1, 2]), BucketPoints("cpu", [0, 3_600_000]),
    ]
    for msg in samples:
        catalogue = CLIENT_OPERATIONS if msg.TAG in CLIENT_OPERATIONS else PEER_OPERATIONS
        assert decode(catalogue, msg.TAG, msg.to_wire()) == msg
    insert = Insert(["a"], np.zeros(2, np.uint32), np.array([1, 2], np.int64),
                    np.array([0.5, 1.0]), "all")
    back = decode(CLIENT_OPERATIONS, "insert", insert.to_wire())
    assert isinstance(back, Insert) and back.ts.tolist() == [1, 2] and back.consistency == "all"


@pytest.mark.parametrize(("tag", "args", "message"), [
    ("nope", {}, "unknown operation"),
    ("insert", {"names": ["a"], "idx": b"\0" * 4, "ts": b"\0" * 8, "val": b"\0" * 7},
     "malformed insert: val"),
    ("insert", {"names": ["a"], "idx": b"\1\0\0\0", "ts": b"\0" * 8, "val": b"\0" * 8},
     "series index out of range"),
    ("insert", {"names": ["a"], "idx": b"\0" * 4, "ts": b"\0" * 8, "val": b"\0" * 8,
                "consistency": "most"}, "consistency must be one of"),
    ("range", {"series": "a", "start": "0", "end": 1}, "start must be an integer"),
    ("aggregate", {"series": "a", "start": 0, "end": 1, "aggregation": "median"},
     "aggregation must be one of"),
    ("aggregate", {"series": "a", "start": 0, "end": 1, "aggregation": "sum", "interval": 0},
     "interval must be a positive integer"),
    ("series", {"prefix": "", "limit": 0}, "limit 1..100000"),
])
def test_malformed_client_operations_are_refused_with_the_reason(tag, args, message):
    with pytest.raises(BadRequest, match=message):
        decode(CLIENT_OPERATIONS, tag, args)


@pytest.mark.parametrize(("tag", "args"), [
    ("write", {"names": ["a"], "idx": b"\0" * 4, "ts": b"\0" * 8, "val": b"\0" * 8,
               "ver": b"\0" * 16}),
    ("write", {"names": ["a"], "idx": b"\0" * 4, "ts": b"\0" * 8, "val": b"\0" * 8,
               "ver": 1, "hint": 5}),
    ("ae_ranges", {"ring": "r", "ranges": list(range(17))}),
    ("ae_points", {"series": "a", "buckets": ["0"]}),
])
def test_malformed_peer_operations_are_refused(tag, args):
    with pytest.raises(BadRequest):
        decode(PEER_OPERATIONS, tag, args)


def test_once_refuses_a_second_answer():
    got = []
    reply = once(lambda status, body: got.append(status))
    reply(201, None)
    with pytest.raises(AssertionError, match="answered twice"):
        reply(503, "late")
    assert got == [201]


def test_gather_waits_for_every_node_and_keeps_answers_apart_from_errors():
    done = []
    gather = Gather(["a", "b"], lambda answers, errors: done.append((answers, errors)))
    gather.callback("a")(200, "x")
    assert done == []
    gather.callback("b")(503, "down")
    gather.callback("b")(200, "late")  # after the end: ignored
    assert done == [({"a": "x"}, {"b": (503, "down")})]


class _Replies:
    def __init__(self) -> None:
        self.got: list[tuple[int, object]] = []

    def __call__(self, status: int, body: object) -> None:
        self.got.append((status, body))


def test_quorum_answers_once_every_group_has_w_acks():
    replies = _Replies()
    quorum = Quorum(replies, [2, 2], 2, "quorum", 2, 10)
    quorum.result([0, 1], 201, "")
    assert replies.got == []
    quorum.result([0], 201, "")
    assert replies.got == []
    quorum.result([1], 201, "")
    assert replies.got == [(201, {"inserted": 10})]
    assert len(replies.got) == 1


def test_quorum_fails_as_soon_as_w_is_out_of_reach():
    replies = _Replies()
    quorum = Quorum(replies, [3], 2, "quorum", 3, 1)
    quorum.result([0], 201, "")
    quorum.result([0], 503, "node 2: timeout")
    assert replies.got == []
    quorum.result([0], 503, "node 3: timeout")
    status, message = replies.got[0]
    assert status == 503
    assert "write reached 1 of 3 replicas" in message and "node 2: timeout" in message


def test_quorum_reports_the_common_status_of_the_failures():
    replies = _Replies()
    Quorum(replies, [1], 1, "quorum", 1, 1).result([0], 507, "disk full")
    assert replies.got == [(507, "disk full")]
