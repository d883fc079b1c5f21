"""Peer envelopes: round trips, and refusal of anything that is not one."""

from __future__ import annotations

import msgpack
import pytest

from count.cluster.wire import (
    OPS_PER_MESSAGE_MAX,
    WIRE_VERSION,
    WireError,
    pack_reply,
    pack_request,
    unpack_reply,
    unpack_request,
)
from count.messages import ReplicaRead, ReplicaSeries


def test_request_round_trip():
    ops = [ReplicaRead("a", 0, 9), ReplicaSeries("cpu.", 10)]
    sender, message_id, back = unpack_request(pack_request("127.0.0.1:8080", 7, ops))
    assert (sender, message_id) == ("127.0.0.1:8080", 7)
    assert back == [("read", {"series": "a", "start": 0, "end": 9}),
                    ("list", {"prefix": "cpu.", "limit": 10})]


def test_reply_round_trip():
    results = [(201, None), (503, "node 2 is down"), (200, {"ts": b"x"})]
    assert unpack_reply(pack_reply(3, results)) == (3, results)


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", msgpack.packb([WIRE_VERSION + 1, "a", 1, []]),
    msgpack.packb([WIRE_VERSION, 7, 1, []]), msgpack.packb([WIRE_VERSION, "a", "1", []]),
    msgpack.packb([WIRE_VERSION, "a", 1, [["op"]]]),
    msgpack.packb([WIRE_VERSION, "a", 1, [[1, {}]]]),
    msgpack.packb([WIRE_VERSION, "a", 1, [["op", {}]] * (OPS_PER_MESSAGE_MAX + 1)]),
    msgpack.packb({"not": "a list"}),
])
def test_malformed_requests_are_refused(frame):
    with pytest.raises(WireError):
        unpack_request(frame)


@pytest.mark.parametrize("frame", [
    msgpack.packb([WIRE_VERSION + 1, 1, []]),
    msgpack.packb([WIRE_VERSION, 1, [["201", None]]]),
    msgpack.packb([WIRE_VERSION, "1", []]),
    b"\x00garbage",
])
def test_malformed_replies_are_refused(frame):
    with pytest.raises(WireError):
        unpack_reply(frame)
