"""Messages between HTTP workers and the node process (msgpack over DEALER -> ROUTER).

request = [PROTOCOL_VERSION, request id, deadline (Unix ms), op, args]
reply   = [PROTOCOL_VERSION, request id, status, body]

Status is an HTTP status code: 200/201 carry the result in ``body``, anything else carries an
error message that the worker raises as the matching ``count.errors`` class. The version
lets a node reject messages from a newer or older peer instead of misreading them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

PROTOCOL_VERSION = 1


class ProtocolError(ValueError):
    """A frame that is not a message of this protocol version."""


class Request(NamedTuple):
    req_id: int
    deadline_ms: int
    op: str
    args: dict[str, Any]


class Reply(NamedTuple):
    req_id: int
    status: int
    body: Any


def pack_request(req_id: int, deadline_ms: int, op: str, args: dict[str, Any]) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, req_id, deadline_ms, op, args], use_bin_type=True)


def unpack_request(frame: bytes) -> Request:
    try:
        version, req_id, deadline_ms, op, args = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable request: {exc}") from None
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if not (isinstance(req_id, int) and isinstance(deadline_ms, int) and isinstance(op, str)
            and isinstance(args, dict)):
        raise ProtocolError("malformed request fields")
    return Request(req_id, deadline_ms, op, args)


def pack_reply(req_id: int, status: int, body: Any) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, req_id, status, body], use_bin_type=True)


def unpack_reply(frame: bytes) -> Reply:
    try:
        version, req_id, status, body = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable reply: {exc}") from None
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if not (isinstance(req_id, int) and isinstance(status, int)):
        raise ProtocolError("malformed reply fields")
    return Reply(req_id, status, body)
