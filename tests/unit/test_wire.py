"""Peer wire messages: round trips, and refusal of anything that is not one."""

from __future__ import annotations

import msgpack
import pytest

from count.cluster.wire import (
    OPS_PER_MESSAGE_MAX, WIRE_VERSION, WireError, pack_ops, pack_results, unpack_ops,
    unpack_results,
)


def test_ops_round_trip():
    ops = [("write", {"names": ["a"], "ts": b"\x00" * 8}), ("read", {"series": "a"})]
    sender, back = unpack_ops(pack_ops("127.0.0.1:8080", ops))
    assert sender == "127.0.0.1:8080"
    assert back == ops


def test_results_round_trip():
    results = [(201, None), (503, "node 2 is down"), (200, {"ts": b"x"})]
    assert unpack_results(pack_results(results), 3) == results


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", msgpack.packb([WIRE_VERSION + 1, "a", []]), msgpack.packb([WIRE_VERSION, 7, []]),
    msgpack.packb([WIRE_VERSION, "a", [["op"]]]), msgpack.packb([WIRE_VERSION, "a", [[1, {}]]]),
    msgpack.packb([WIRE_VERSION, "a", [["op", {}]] * (OPS_PER_MESSAGE_MAX + 1)]),
    msgpack.packb({"not": "a list"}),
])
def test_malformed_requests_are_refused(frame):
    with pytest.raises(WireError):
        unpack_ops(frame)


@pytest.mark.parametrize(("frame", "expected"), [
    (pack_results([(201, None)]), 2),
    (msgpack.packb([WIRE_VERSION + 1, []]), 0),
    (msgpack.packb([WIRE_VERSION, [["201", None]]]), 1),
    (b"\x00garbage", 1),
])
def test_replies_that_do_not_answer_every_op_are_refused(frame, expected):
    with pytest.raises(WireError):
        unpack_results(frame, expected)
