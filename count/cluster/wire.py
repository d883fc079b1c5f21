"""The envelope of messages between node processes (msgpack over REQ -> ROUTER).

A replica message carries many operations (``count.messages``) so that everything queued
for one peer travels in one round trip (coalescing):

    request = [WIRE_VERSION, sender address, message id, [[tag, args], ...]]
    reply   = [WIRE_VERSION, message id, [[status, body], ...]]   one result per op, in order

Status is an HTTP status code as in the broker protocol. The message id lets the sender tell
the answer to the message it is waiting for from a late answer to one it gave up on. The
version lets a node refuse a peer of another release instead of misreading it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from count.messages import Message

WIRE_VERSION = 2
# Most operations in one message; a peer that sends more is refused (bounds one turn's work).
OPS_PER_MESSAGE_MAX = 4096

RawOp = tuple[str, dict[str, Any]]
Result = tuple[int, Any]


class WireError(ValueError):
    """A frame that is not a message of this wire version."""


def _unpack(frame: bytes | memoryview, what: str) -> list[Any]:
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable peer {what}: {exc}") from None
    if not isinstance(obj, list) or not obj or obj[0] != WIRE_VERSION:
        version = obj[0] if isinstance(obj, list) and obj else None
        raise WireError(f"peer wire version {version!r:.20}, expected {WIRE_VERSION}")
    return obj


def pack_request(sender: str, message_id: int, ops: list[Message]) -> bytes:
    return msgpack.packb([WIRE_VERSION, sender, message_id,
                          [[op.TAG, op.to_wire()] for op in ops]], use_bin_type=True)


def unpack_request(frame: bytes | memoryview) -> tuple[str, int, list[RawOp]]:
    """(sender, message id, [(tag, args)]); the operations are decoded by the catalogue."""
    obj = _unpack(frame, "request")
    if len(obj) != 4:
        raise WireError("malformed peer request")
    _, sender, message_id, ops = obj
    if (not isinstance(sender, str) or type(message_id) is not int or not isinstance(ops, list)
            or len(ops) > OPS_PER_MESSAGE_MAX):
        raise WireError("malformed peer request")
    parsed: list[RawOp] = []
    for item in ops:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], dict)):
            raise WireError("malformed peer operation")
        parsed.append((item[0], item[1]))
    return sender, message_id, parsed


def pack_reply(message_id: int, results: list[Result]) -> bytes:
    return msgpack.packb([WIRE_VERSION, message_id, [[status, body] for status, body in results]],
                         use_bin_type=True)


def unpack_reply(frame: bytes | memoryview) -> tuple[int, list[Result]]:
    obj = _unpack(frame, "reply")
    if len(obj) != 3 or type(obj[1]) is not int or not isinstance(obj[2], list):
        raise WireError("malformed peer reply")
    parsed: list[Result] = []
    for item in obj[2]:
        if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int:
            raise WireError("malformed peer result")
        parsed.append((item[0], item[1]))
    return obj[1], parsed
