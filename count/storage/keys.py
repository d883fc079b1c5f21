"""LMDB key and small-value layouts, big-endian so that byte order is numeric order."""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_INDEX_KEY = struct.Struct(">IQ")  # series id, block max timestamp
_INDEX_VALUE = struct.Struct(">QQI")  # block sequence, block min timestamp, point count


def sid_key(sid: int) -> bytes:
    return _U32.pack(sid)


def seq_key(seq: int) -> bytes:
    return _U64.pack(seq)


def unpack_u32(buf: bytes | memoryview) -> int:
    return int(_U32.unpack(buf)[0])


def unpack_u64(buf: bytes | memoryview) -> int:
    return int(_U64.unpack(buf)[0])


def index_key(sid: int, max_ts: int) -> bytes:
    return _INDEX_KEY.pack(sid, max_ts)


def unpack_index_key(buf: bytes | memoryview) -> tuple[int, int]:
    return _INDEX_KEY.unpack(buf)


def index_value(seq: int, min_ts: int, count: int) -> bytes:
    return _INDEX_VALUE.pack(seq, min_ts, count)


def unpack_index_value(buf: bytes | memoryview) -> tuple[int, int, int]:
    return _INDEX_VALUE.unpack(buf)
