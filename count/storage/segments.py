"""Segments: multi-series containers between the memory buffer and per-series blocks.

Two kinds share one reader and one LMDB database:

* a *flush segment* is one flush of the memory buffer, uncompressed so the flush is cheap:
  points sorted by (series id, timestamp), one per timestamp, with a directory of series ids
  and offsets. Reading one series is two binary searches over zero-copy views, no decoding.
* a *tail pack* is written at a clean stop: the tails of many series as compressed blocks
  back to back in one large value. LMDB packs values of a few hundred bytes to two KiB only
  about 70% full into its pages, while one large value fills its pages; the first compaction
  after the restart turns the pack back into live tails.

Compaction reads either kind the same way and folds them into blocks and tails.

Flush layout (little-endian): a 16-byte header (format 1, 3 pad, uint32 series, uint64
points), ts int64[n], val float64[n], ver uint64[n], sids uint32[s], offsets uint32[s+1];
the 8-byte columns first, so every column is aligned. Pack layout: header (format 2, 3 pad,
uint32 series, uint64 blob bytes), sids uint32[s], offsets uint32[s+1], blob.
"""

from __future__ import annotations

import struct

import numpy as np

from count.storage.codec import block_header, decode_block
from count.storage.merge import Columns, concat, resolve_by_series

FLUSH_FORMAT = 1
PACK_FORMAT = 2
_HEADER = struct.Struct("<B3xIQ")


def build_segment(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> bytes:
    """Encode buffer contents (arrival order) as a flush segment, resolving duplicates by LWW."""
    kept_sid, cols = resolve_by_series(sid, Columns(ts, val, ver), None)
    ids, starts = np.unique(kept_sid, return_index=True)
    offsets = np.append(starts, len(kept_sid)).astype(np.uint32)
    return b"".join((
        _HEADER.pack(FLUSH_FORMAT, len(ids), len(kept_sid)),
        cols.ts.astype(np.int64).tobytes(),
        cols.val.astype(np.float64).tobytes(),
        cols.ver.astype(np.uint64).tobytes(),
        ids.astype(np.uint32).tobytes(),
        offsets.tobytes(),
    ))


def build_pack(items: list[tuple[int, bytes]]) -> bytes:
    """A tail pack from (series id, encoded block) pairs sorted by series id."""
    sids = np.array([sid for sid, _ in items], np.uint32)
    assert len(sids) and bool(np.all(sids[1:] > sids[:-1]))
    sizes = np.array([len(data) for _, data in items], np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.uint32)
    blob = b"".join(data for _, data in items)
    return b"".join((_HEADER.pack(PACK_FORMAT, len(sids), len(blob)), sids.tobytes(),
                     offsets.tobytes(), blob))


class Segment:
    """Zero-copy reader over one segment value; valid while its LMDB transaction lives."""

    def __init__(self, buf: memoryview | bytes) -> None:
        if len(buf) < _HEADER.size:
            raise ValueError("segment shorter than its header")
        self.format, n_series, n_items = _HEADER.unpack_from(buf, 0)
        pos = _HEADER.size
        if self.format == FLUSH_FORMAT:
            expected = pos + 24 * n_items + 4 * (2 * n_series + 1)
        elif self.format == PACK_FORMAT:
            expected = pos + 4 * (2 * n_series + 1) + n_items
        else:
            raise ValueError(f"unknown segment format {self.format}")
        if len(buf) != expected:
            raise ValueError(f"segment of {len(buf)} bytes, expected {expected}")
        if self.format == FLUSH_FORMAT:
            self.ts = np.frombuffer(buf, np.int64, n_items, pos)
            self.val = np.frombuffer(buf, np.float64, n_items, pos + 8 * n_items)
            self.ver = np.frombuffer(buf, np.uint64, n_items, pos + 16 * n_items)
            pos += 24 * n_items
        self.sids = np.frombuffer(buf, np.uint32, n_series, pos)
        self.offsets = np.frombuffer(buf, np.uint32, n_series + 1, pos + 4 * n_series)
        self._blob = memoryview(buf)[pos + 4 * (2 * n_series + 1):]

    def point_count(self) -> int:
        """Points stored (with overwrites not yet folded), decompressing nothing."""
        if self.format == FLUSH_FORMAT:
            return len(self.ts)
        return sum(block_header(self._blob[int(self.offsets[i]):int(self.offsets[i + 1])]).count
                   for i in range(len(self.sids)))

    def _decoded(self, i: int) -> Columns:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Columns(*decode_block(self._blob[lo:hi]))

    def series(self, sid: int, start: int, end: int) -> Columns | None:
        """A copy of one series' points in [start, end], or None if the segment has none."""
        i = int(np.searchsorted(self.sids, sid))
        if i >= len(self.sids) or self.sids[i] != sid:
            return None
        if self.format == PACK_FORMAT:
            found = self._decoded(i).between(start, end)
            return found if len(found) else None
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        a = lo + int(np.searchsorted(self.ts[lo:hi], start, "left"))
        b = lo + int(np.searchsorted(self.ts[lo:hi], end, "right"))
        if a >= b:
            return None
        return Columns(self.ts[a:b].copy(), self.val[a:b].copy(), self.ver[a:b].copy())

    def gather(self, first_sid: int, last_sid: int) -> tuple[np.ndarray, Columns]:
        """Every point of series first_sid..last_sid, as (series id per point, columns)."""
        i = int(np.searchsorted(self.sids, first_sid, "left"))
        j = int(np.searchsorted(self.sids, last_sid, "right"))
        if self.format == FLUSH_FORMAT:
            lo, hi = int(self.offsets[i]), int(self.offsets[j])
            counts: np.ndarray = np.diff(self.offsets[i:j + 1].astype(np.int64))
            cols = Columns(self.ts[lo:hi].copy(), self.val[lo:hi].copy(), self.ver[lo:hi].copy())
        else:
            parts = [self._decoded(k) for k in range(i, j)]
            counts = np.array([len(p) for p in parts], np.int64)
            cols = concat(parts)
        return np.repeat(self.sids[i:j], counts.astype(np.int64)), cols
