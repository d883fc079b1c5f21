"""The write-ahead log: the memory buffer's points, durable before any insert is answered.

One record per group commit, appended to a preallocated file and made durable with a single
``fdatasync`` (LMDB's own commit costs two syncs and about 2.5x the time). The node loop
blocks on that sync: syncing on a thread of its own was measured slower on a 3-node cluster
(850-930 against 1,200-1,360 single-point inserts/s), since blocking lets the requests that
arrive meanwhile pile up into the next group commit. A flush moves the buffer into an LMDB
segment and records, in the same LMDB transaction, the WAL generation it
covers; the log then starts the next generation at offset 0, overwriting the old records.

Record: a 16-byte header (uint32 payload bytes, uint32 CRC-32 of generation + payload,
uint64 generation) and the payload (``encode_points``). Replay reads records of the expected
generation from offset 0 and stops at the first record that is of another generation, torn
or zero: nothing after it was acknowledged.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

import numpy as np

WAL_FILE = "wal.log"
_RECORD_HEADER = struct.Struct("<IIQ")
_POINTS_HEADER = struct.Struct("<Q")
# The file grows in steps of this many bytes, preallocated so that fdatasync never has to
# write the file's size.
GROWTH_BYTES = 4 << 20
# A record is never larger than this (a group of inserts is bounded well below it).
RECORD_BYTES_MAX = 1 << 30


def encode_points(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> bytes:
    n = len(ts)
    return b"".join((
        _POINTS_HEADER.pack(n),
        ts.astype(np.int64, copy=False).tobytes(),
        val.astype(np.float64, copy=False).tobytes(),
        ver.astype(np.uint64, copy=False).tobytes(),
        sid.astype(np.uint32, copy=False).tobytes(),
    ))


def decode_points(buf: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sid, ts, val, ver) copies from a payload; ValueError if it is not one."""
    if len(buf) < _POINTS_HEADER.size:
        raise ValueError("WAL payload shorter than its header")
    (n,) = _POINTS_HEADER.unpack_from(buf, 0)
    if len(buf) != _POINTS_HEADER.size + 28 * n:
        raise ValueError(f"bad WAL payload ({len(buf)} bytes for {n} points)")
    pos = _POINTS_HEADER.size
    ts = np.frombuffer(buf, np.int64, n, pos).copy()
    val = np.frombuffer(buf, np.float64, n, pos + 8 * n).copy()
    ver = np.frombuffer(buf, np.uint64, n, pos + 16 * n).copy()
    sid = np.frombuffer(buf, np.uint32, n, pos + 24 * n).copy()
    return sid, ts, val, ver


def _crc(generation: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", generation)))


class WriteAheadLog:
    """An append-only log file; ``generation`` is the one being written."""

    def __init__(self, directory: str, generation: int) -> None:
        self.path = os.path.join(directory, WAL_FILE)
        self.generation = generation
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._offset = 0
        self._allocated = os.fstat(self._fd).st_size
        self.appends = 0

    def replay(self) -> Iterator[bytes]:
        """The payloads of this generation's records, in order; the log resumes after them."""
        size = os.fstat(self._fd).st_size
        offset = 0
        while offset + _RECORD_HEADER.size <= size:
            length, crc, generation = _RECORD_HEADER.unpack(
                os.pread(self._fd, _RECORD_HEADER.size, offset))
            end = offset + _RECORD_HEADER.size + length
            if generation != self.generation or length == 0 or length > RECORD_BYTES_MAX or end > size:
                break
            payload = os.pread(self._fd, length, offset + _RECORD_HEADER.size)
            if len(payload) != length or _crc(generation, payload) != crc:
                break  # torn: never acknowledged
            yield payload
            offset = end
        self._offset = offset

    def append(self, payload: bytes) -> None:
        """Write one record and make it durable before returning (OSError if it is not)."""
        assert 0 < len(payload) <= RECORD_BYTES_MAX
        record = _RECORD_HEADER.pack(len(payload), _crc(self.generation, payload),
                                     self.generation) + payload
        end = self._offset + len(record)
        if end > self._allocated:
            self._grow(end)
        written = os.pwrite(self._fd, record, self._offset)
        if written != len(record):
            raise OSError(f"short WAL write ({written} of {len(record)} bytes)")
        os.fdatasync(self._fd)
        self._offset = end
        self.appends += 1

    def reserve(self, nbytes: int) -> None:
        """Make sure the next ``nbytes`` of records have room on disk (OSError if not)."""
        end = self._offset + nbytes
        if end > self._allocated:
            self._grow(end)

    def _grow(self, end: int) -> None:
        """Preallocate past ``end``: a whole step, or just ``end`` when the disk is nearly full."""
        step = -(-end // GROWTH_BYTES) * GROWTH_BYTES
        try:
            os.posix_fallocate(self._fd, 0, step)
            self._allocated = step
        except OSError:
            os.posix_fallocate(self._fd, 0, end)
            self._allocated = end

    def restart(self, generation: int) -> None:
        """Begin ``generation`` at offset 0: every earlier record is now stored elsewhere."""
        assert generation > self.generation
        self.generation = generation
        self._offset = 0

    def close(self, truncate: bool) -> None:
        """Close; ``truncate`` (everything flushed) gives the space back."""
        if truncate:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        os.close(self._fd)
