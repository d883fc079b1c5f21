"""Messages between node processes (msgpack over REQ -> ROUTER, and PUB -> SUB for gossip).

A replica message carries many operations so that everything queued for one peer travels in
one round trip (coalescing):

    request = [WIRE_VERSION, sender address, [[op, args], ...]]
    reply   = [WIRE_VERSION, [[status, body], ...]]     one result per op, in order

Status is an HTTP status code as in the broker protocol. The version lets a node refuse a
peer of another release instead of misreading it.
"""

from __future__ import annotations

from typing import Any

import msgpack

WIRE_VERSION = 1
# Most operations in one message; a peer that sends more is refused (bounds one turn's work).
OPS_PER_MESSAGE_MAX = 4096

Op = tuple[str, dict[str, Any]]
Result = tuple[int, Any]


class WireError(ValueError):
    """A frame that is not a message of this wire version."""


def pack_ops(sender: str, ops: list[Op]) -> bytes:
    return msgpack.packb([WIRE_VERSION, sender, [[op, args] for op, args in ops]],
                         use_bin_type=True)


def unpack_ops(frame: bytes | memoryview) -> tuple[str, list[Op]]:
    try:
        version, sender, ops = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable peer request: {exc}") from None
    if version != WIRE_VERSION:
        raise WireError(f"peer wire version {version}, expected {WIRE_VERSION}")
    if not isinstance(sender, str) or not isinstance(ops, list) or len(ops) > OPS_PER_MESSAGE_MAX:
        raise WireError("malformed peer request")
    parsed: list[Op] = []
    for item in ops:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], dict)):
            raise WireError("malformed peer operation")
        parsed.append((item[0], item[1]))
    return sender, parsed


def pack_results(results: list[Result]) -> bytes:
    return msgpack.packb([WIRE_VERSION, [[status, body] for status, body in results]],
                         use_bin_type=True)


def unpack_results(frame: bytes | memoryview, expected: int) -> list[Result]:
    try:
        version, results = msgpack.unpackb(frame, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable peer reply: {exc}") from None
    if version != WIRE_VERSION:
        raise WireError(f"peer wire version {version}, expected {WIRE_VERSION}")
    if not isinstance(results, list) or len(results) != expected:
        raise WireError("peer reply does not answer every operation")
    parsed: list[Result] = []
    for item in results:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int):
            raise WireError("malformed peer result")
        parsed.append((item[0], item[1]))
    return parsed
