"""Last-write-wins merging of point columns.

A point is (timestamp, value, version). Where one timestamp appears more than once the
highest version wins; between equal versions the later source wins (sources are passed
oldest first, and inside one source later positions are later arrivals). This is the one
place that rule lives: flushes, compaction and queries all call it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Columns(NamedTuple):
    """Points of one series: int64 timestamps, float64 values, uint64 versions."""

    ts: np.ndarray
    val: np.ndarray
    ver: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def between(self, start: int, end: int) -> Columns:
        """The points with start <= ts <= end; the columns must be sorted by ts."""
        lo = int(np.searchsorted(self.ts, start, "left"))
        hi = int(np.searchsorted(self.ts, end, "right"))
        return Columns(self.ts[lo:hi], self.val[lo:hi], self.ver[lo:hi])


EMPTY = Columns(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.uint64))


def resolve(ts: np.ndarray, val: np.ndarray, ver: np.ndarray, rank: np.ndarray) -> Columns:
    """Sort by timestamp and keep, per timestamp, the highest (version, rank)."""
    order = np.lexsort((rank, ver, ts))
    ts_sorted = ts[order]
    keep = np.empty(len(order), dtype=bool)
    if len(order):
        keep[:-1] = ts_sorted[1:] != ts_sorted[:-1]
        keep[-1] = True
    chosen = order[keep]
    return Columns(ts[chosen], val[chosen], ver[chosen])


def resolve_by_series(sid: np.ndarray, cols: Columns, rank: np.ndarray | None
                      ) -> tuple[np.ndarray, Columns]:
    """Many series at once: sort by (series, timestamp), keep the highest (version, rank).

    Without ``rank`` the input order is the rank (lexsort is stable). Returns the series
    id of each kept point and the kept points, grouped by series.
    """
    keys = (cols.ver, cols.ts, sid) if rank is None else (rank, cols.ver, cols.ts, sid)
    order = np.lexsort(keys)
    sid_sorted, ts_sorted = sid[order], cols.ts[order]
    keep = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        keep[:-1] = (sid_sorted[1:] != sid_sorted[:-1]) | (ts_sorted[1:] != ts_sorted[:-1])
    chosen = order[keep]
    return sid[chosen], Columns(cols.ts[chosen], cols.val[chosen], cols.ver[chosen])


def concat(parts: list[Columns]) -> Columns:
    """Columns one after another (no sorting)."""
    if not parts:
        return EMPTY
    return Columns(np.concatenate([p.ts for p in parts]), np.concatenate([p.val for p in parts]),
                   np.concatenate([p.ver for p in parts]))


def dedupe_arrivals(cols: Columns) -> Columns:
    """Sorted, one point per timestamp, from columns in arrival order."""
    return resolve(cols.ts, cols.val, cols.ver, np.arange(len(cols)))


def merge_sorted(parts: list[Columns]) -> Columns:
    """Merge sorted, per-part unique columns, oldest part first, by last-write-wins.

    Parts that do not overlap in time are concatenated without sorting, which is the common
    case of a range read over consecutive blocks.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return EMPTY
    if len(parts) == 1:
        return parts[0]
    by_start = sorted(range(len(parts)), key=lambda i: int(parts[i].ts[0]))
    disjoint = all(
        parts[a].ts[-1] < parts[b].ts[0] for a, b in zip(by_start, by_start[1:], strict=False)
    )
    if disjoint:
        return concat([parts[i] for i in by_start])
    rank = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    joined = concat(parts)
    return resolve(joined.ts, joined.val, joined.ver, rank)
