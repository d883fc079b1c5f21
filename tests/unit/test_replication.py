"""The pure parts of replication: quorum counting, splitting writes, peer write encoding."""

from __future__ import annotations

import numpy as np
import pytest

from count.cluster.replication import Quorum, merge_writes, required, subset, write_args
from count.replica import decode_insert
from count.storage.engine import WriteRequest


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
    part = subset(_write(), np.array([False, True, True]))
    assert part.names == ["b", "c"]
    assert part.idx.tolist() == [0, 1, 0]
    assert part.ts.tolist() == [1, 2, 3]
    assert part.version == 7


def test_subset_carries_per_point_versions():
    part = subset(_write(np.arange(10, 15, dtype=np.uint64)), np.array([True, False, False]))
    assert part.names == ["a"]
    assert part.ts.tolist() == [0, 4]
    assert part.versions().tolist() == [10, 14]


@pytest.mark.parametrize("version", [9, np.array([1, 2, 3, 4, 5], np.uint64)])
def test_write_args_decode_to_the_same_write(version):
    write = _write(version)
    back = decode_insert(write_args(write, None), None)
    assert back.names == write.names
    assert back.idx.tolist() == write.idx.tolist()
    assert back.ts.tolist() == write.ts.tolist()
    assert back.val.tolist() == write.val.tolist()
    assert back.versions().tolist() == write.versions().tolist()


def test_merge_writes_joins_single_series_writes():
    parts = [WriteRequest([name], np.zeros(2, np.uint32), np.array([1, 2], np.int64),
                          np.array([0.5, 1.5]), np.array([3, 4], np.uint64)) for name in "xy"]
    joined = merge_writes(parts)
    assert joined.names == ["x", "y"]
    assert joined.idx.tolist() == [0, 0, 1, 1]
    assert joined.versions().tolist() == [3, 4, 3, 4]


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
    quorum.result([0, 1], 503, "late failure")  # after the answer: nothing more is sent
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
