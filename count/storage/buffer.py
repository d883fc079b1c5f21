"""The memory buffer: recent points in arrival order, as one append-only columnar log.

Appending a batch is four array copies whatever the number of series in it, and reading one
series is a vectorised scan of at most MEMORY_BUFFER_SIZE (+ one batch) entries. Every point
here is already durable in the WAL; the buffer only makes recent points readable and groups
them for the flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from count.storage.merge import Columns, dedupe_arrivals

_GROWTH = 2


class MemoryBuffer:
    def __init__(self, capacity_points: int,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert capacity_points > 0
        self._monotonic = monotonic
        self._sid = np.empty(capacity_points, np.uint32)
        self._ts = np.empty(capacity_points, np.int64)
        self._val = np.empty(capacity_points, np.float64)
        self._ver = np.empty(capacity_points, np.uint64)
        self._n = 0
        self.oldest_monotonic: float | None = None

    def __len__(self) -> int:
        return self._n

    def append(self, sid: np.ndarray, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> None:
        """Add a batch (arrival order is kept: later points win ties)."""
        count = len(ts)
        assert len(sid) == count == len(val) == len(ver)
        end = self._n + count
        if end > len(self._ts):
            self._grow(end)
        self._sid[self._n:end] = sid
        self._ts[self._n:end] = ts
        self._val[self._n:end] = val
        self._ver[self._n:end] = ver
        if self._n == 0 and count:
            self.oldest_monotonic = self._monotonic()
        self._n = end

    def _grow(self, needed: int) -> None:
        size = max(needed, len(self._ts) * _GROWTH)
        for name in ("_sid", "_ts", "_val", "_ver"):
            old = getattr(self, name)
            new = np.empty(size, old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def series(self, sid: int, start: int, end: int) -> Columns:
        """One series' points in [start, end], sorted, one per timestamp."""
        n = self._n
        mask = self._sid[:n] == sid
        if start > 0 or end < np.iinfo(np.int64).max:
            ts = self._ts[:n]
            mask &= (ts >= start) & (ts <= end)
        picked = np.flatnonzero(mask)
        return dedupe_arrivals(Columns(self._ts[picked], self._val[picked], self._ver[picked]))

    def contents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Views of (sid, ts, val, ver) in arrival order; valid until the next append/clear."""
        n = self._n
        return self._sid[:n], self._ts[:n], self._val[:n], self._ver[:n]

    def series_ids(self) -> np.ndarray:
        return np.unique(self._sid[: self._n])

    def clear(self) -> None:
        self._n = 0
        self.oldest_monotonic = None
