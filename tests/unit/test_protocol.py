"""Unit tests for count.broker.protocol: the worker <-> node process messages."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.broker.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    Reply,
    Request,
    pack_reply,
    pack_request,
    unpack_reply,
    unpack_request,
)


def test_request_round_trip():
    args = {"names": ["a", "b"], "idx": b"\x00\x01", "ts": b"\x00" * 8, "n": 3, "f": 1.5,
            "nested": {"x": [1, None, True]}}
    frame = pack_request(7, 1_700_000_000_000, "insert", args)
    assert unpack_request(frame) == Request(7, 1_700_000_000_000, "insert", args)
    assert isinstance(unpack_request(frame), Request)


def test_reply_round_trip():
    for status, body in [(200, {"ts": b"\x01\x02", "val": b""}), (201, {"inserted": 5}),
                         (400, "bad request: point 0: ..."), (503, None), (200, [1, 2.5, "x"]),
                         (507, "disk full")]:
        assert unpack_reply(pack_reply(3, status, body)) == Reply(3, status, body)


def test_unpack_accepts_a_memoryview():
    frame = pack_reply(1, 200, b"abc")
    assert unpack_reply(memoryview(frame)) == Reply(1, 200, b"abc")
    frame = pack_request(1, 2, "op", {})
    assert unpack_request(memoryview(frame)) == Request(1, 2, "op", {})


def test_bytes_stay_bytes_and_text_stays_text():
    req = unpack_request(pack_request(1, 2, "range", {"series": "cpu", "raw": b"cpu"}))
    assert type(req.args["series"]) is str and type(req.args["raw"]) is bytes


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, -1, "1", None])
def test_wrong_version_request(version):
    frame = msgpack.packb([version, 1, 2, "op", {}], use_bin_type=True)
    with pytest.raises(ProtocolError):
        unpack_request(frame)


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, "1", None])
def test_wrong_version_reply(version):
    frame = msgpack.packb([version, 1, 200, None], use_bin_type=True)
    with pytest.raises(ProtocolError):
        unpack_reply(frame)


GARBAGE = [b"", b"\xc1", b"\xff\xff\xff", b"\x93\x01\x02", b"\x95\x01", b"hello world",
           b"\xdb\xff\xff\xff\xff", b"\x01", b"\x80", b"\x90",
           msgpack.packb([1, 2, 3]), msgpack.packb([1, 2, 3, 4, 5, 6]),
           msgpack.packb({"a": 1}), msgpack.packb("abc"),
           pack_request(1, 2, "op", {}) + b"\x00",  # trailing bytes
           pack_request(1, 2, "op", {})[:-1]]  # truncated


@pytest.mark.parametrize("frame", GARBAGE)
def test_garbage_request(frame):
    with pytest.raises(ProtocolError):
        unpack_request(frame)


@pytest.mark.parametrize("frame", GARBAGE[:-2] + [pack_reply(1, 200, None) + b"\x00",
                                                 pack_reply(1, 200, "x")[:-1]])
def test_garbage_reply(frame):
    with pytest.raises(ProtocolError):
        unpack_reply(frame)


@pytest.mark.parametrize("fields", [
    [PROTOCOL_VERSION, "1", 2, "op", {}],
    [PROTOCOL_VERSION, 1, 2.5, "op", {}],
    [PROTOCOL_VERSION, 1, 2, b"op", {}],
    [PROTOCOL_VERSION, 1, 2, 3, {}],
    [PROTOCOL_VERSION, 1, 2, "op", []],
    [PROTOCOL_VERSION, 1, 2, "op", None],
])
def test_malformed_request_fields(fields):
    with pytest.raises(ProtocolError):
        unpack_request(msgpack.packb(fields, use_bin_type=True))


def test_invalid_utf8_text_is_a_protocol_error():
    # a msgpack str (not bin) whose bytes are not UTF-8
    frame = b"\x95\x01\x01\x02\xa2\xff\xfe\x80"
    with pytest.raises(ProtocolError):
        unpack_request(frame)


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.text(max_size=20),
       st.dictionaries(st.text(max_size=8), json_like, max_size=5))
def test_request_round_trip_property(req_id, deadline, op, args):
    assert unpack_request(pack_request(req_id, deadline, op, args)) == Request(
        req_id, deadline, op, args)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(100, 599), json_like)
def test_reply_round_trip_property(req_id, status, body):
    assert unpack_reply(pack_reply(req_id, status, body)) == Reply(req_id, status, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_protocol_error(frame):
    for unpack in (unpack_request, unpack_reply):
        try:
            unpack(frame)
        except ProtocolError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_random_bytes_after_a_valid_header_are_rejected_or_decoded(tail):
    frame = b"\x95\x01" + tail  # array of 5, version 1, then anything
    try:
        req = unpack_request(frame)
    except ProtocolError:
        return
    assert isinstance(req.req_id, int) and isinstance(req.op, str)
    assert isinstance(req.args, dict)
