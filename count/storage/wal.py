"""The write-ahead log record: one group commit's points, raw, in arrival order.

Every acknowledged point is in a WAL record that was committed (fsync'd) before the reply;
a flush moves the buffer into a segment and empties the WAL in the same transaction, and a
restart replays the WAL into the memory buffer.
"""

from __future__ import annotations

import struct

import numpy as np

WAL_FORMAT = 1
_HEADER = struct.Struct("<B7xQ")


def encode_wal_record(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> bytes:
    n = len(ts)
    return b"".join((
        _HEADER.pack(WAL_FORMAT, n),
        ts.astype(np.int64, copy=False).tobytes(),
        val.astype(np.float64, copy=False).tobytes(),
        ver.astype(np.uint64, copy=False).tobytes(),
        sid.astype(np.uint32, copy=False).tobytes(),
    ))


def decode_wal_record(buf: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sid, ts, val, ver) copies from a record; ValueError if it is not one."""
    if len(buf) < _HEADER.size:
        raise ValueError("WAL record shorter than its header")
    fmt, n = _HEADER.unpack_from(buf, 0)
    if fmt != WAL_FORMAT or len(buf) != _HEADER.size + 28 * n:
        raise ValueError(f"bad WAL record (format {fmt}, {len(buf)} bytes for {n} points)")
    pos = _HEADER.size
    ts = np.frombuffer(buf, np.int64, n, pos).copy()
    val = np.frombuffer(buf, np.float64, n, pos + 8 * n).copy()
    ver = np.frombuffer(buf, np.uint64, n, pos + 16 * n).copy()
    sid = np.frombuffer(buf, np.uint32, n, pos + 24 * n).copy()
    return sid, ts, val, ver
