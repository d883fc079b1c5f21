"""Flushed segments: one flush of the memory buffer, stored uncompressed for cheap writes.

A segment holds many series, sorted by (series id, timestamp) with one point per timestamp,
plus a directory of series ids and offsets. Reading one series from a segment is two binary
searches over zero-copy views of the LMDB page, with no decoding. Compaction later folds
segments into compressed per-series blocks.

Layout (little-endian): a 16-byte header (format byte, 3 pad, uint32 series, uint64 points),
then ts int64[n], val float64[n], ver uint64[n], sids uint32[s], offsets uint32[s+1]. The
8-byte columns come first so that every column is aligned inside the value.
"""

from __future__ import annotations

import struct

import numpy as np

from count.storage.merge import Columns

SEGMENT_FORMAT = 1
_HEADER = struct.Struct("<B3xIQ")


def build_segment(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> bytes:
    """Encode buffer contents (arrival order) as a segment, resolving duplicates by LWW."""
    order = np.lexsort((np.arange(len(ts)), ver, ts, sid))
    sid_s, ts_s = sid[order], ts[order]
    keep = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        keep[:-1] = (sid_s[1:] != sid_s[:-1]) | (ts_s[1:] != ts_s[:-1])
    chosen = order[keep]
    sid_k = sid[chosen]
    ids, starts = np.unique(sid_k, return_index=True)
    offsets = np.append(starts, len(chosen)).astype(np.uint32)
    return b"".join((
        _HEADER.pack(SEGMENT_FORMAT, len(ids), len(chosen)),
        ts[chosen].astype(np.int64).tobytes(),
        val[chosen].astype(np.float64).tobytes(),
        ver[chosen].astype(np.uint64).tobytes(),
        ids.astype(np.uint32).tobytes(),
        offsets.tobytes(),
    ))


class Segment:
    """Zero-copy reader over one segment value; valid while its LMDB transaction lives."""

    def __init__(self, buf: memoryview | bytes) -> None:
        if len(buf) < _HEADER.size:
            raise ValueError("segment shorter than its header")
        fmt, n_series, n_points = _HEADER.unpack_from(buf, 0)
        if fmt != SEGMENT_FORMAT:
            raise ValueError(f"unknown segment format {fmt}")
        if len(buf) != _HEADER.size + 24 * n_points + 4 * (2 * n_series + 1):
            raise ValueError(f"segment of {len(buf)} bytes does not hold {n_points} points")
        pos = _HEADER.size
        self.ts = np.frombuffer(buf, np.int64, n_points, pos)
        pos += 8 * n_points
        self.val = np.frombuffer(buf, np.float64, n_points, pos)
        pos += 8 * n_points
        self.ver = np.frombuffer(buf, np.uint64, n_points, pos)
        pos += 8 * n_points
        self.sids = np.frombuffer(buf, np.uint32, n_series, pos)
        pos += 4 * n_series
        self.offsets = np.frombuffer(buf, np.uint32, n_series + 1, pos)

    def series(self, sid: int, start: int, end: int) -> Columns | None:
        """A copy of one series' points in [start, end], or None if the segment has none."""
        i = int(np.searchsorted(self.sids, sid))
        if i >= len(self.sids) or self.sids[i] != sid:
            return None
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        ts = self.ts[lo:hi]
        a = lo + int(np.searchsorted(ts, start, "left"))
        b = lo + int(np.searchsorted(ts, end, "right"))
        if a >= b:
            return None
        return Columns(self.ts[a:b].copy(), self.val[a:b].copy(), self.ver[a:b].copy())

