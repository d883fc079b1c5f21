"""A write batch: the unit every layer passes down to storage.

Timestamps are Unix milliseconds in 0..TIMESTAMP_MAX_MS; values are finite float64.

One ``WriteRequest`` holds many series' points as columns: unique names, a per-point index
into them, timestamps, values and write versions. Placement splits one by series
(``subset``); hand-off and anti-entropy join single-series batches (``join``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Latest accepted timestamp: 9999-12-31T23:59:59.999Z in Unix milliseconds.
TIMESTAMP_MAX_MS = 253_402_300_799_999


@dataclasses.dataclass
class WriteRequest:
    """One insert: unique series names, per-point index into them, and the points.

    ``version`` is one write version for every point (a coordinated insert) or one per point
    (a replica repair or hint, which keeps each point's original version).
    """

    names: list[str]
    idx: np.ndarray
    ts: np.ndarray
    val: np.ndarray
    version: int | np.ndarray

    def versions(self) -> np.ndarray:
        if isinstance(self.version, np.ndarray):
            return self.version.astype(np.uint64, copy=False)
        return np.full(len(self.ts), self.version, np.uint64)

    def version_max(self) -> int:
        if isinstance(self.version, np.ndarray):
            return int(self.version.max())
        return self.version

    def subset(self, name_mask: np.ndarray) -> WriteRequest:
        """The points whose series are selected by ``name_mask`` (one bool per name)."""
        if name_mask.all():
            return self
        chosen = np.flatnonzero(name_mask)
        point_mask = name_mask[self.idx]
        remap = np.full(len(self.names), -1, np.int64)
        remap[chosen] = np.arange(len(chosen))
        version = self.version
        if isinstance(version, np.ndarray):
            version = version[point_mask]
        return WriteRequest([self.names[i] for i in chosen],
                            remap[self.idx[point_mask]].astype(np.uint32),
                            self.ts[point_mask], self.val[point_mask], version)


def single_series(series: str, ts: np.ndarray, val: np.ndarray, ver: np.ndarray) -> WriteRequest:
    """One series' points with their own versions (a repair, a hint, a stream)."""
    return WriteRequest([series], np.zeros(len(ts), np.uint32), ts, val, ver)


def join(parts: list[WriteRequest]) -> WriteRequest:
    """One write holding several single-series writes that carry per-point versions."""
    names = [p.names[0] for p in parts]
    idx = np.concatenate([np.full(len(p.ts), i, np.uint32) for i, p in enumerate(parts)])
    return WriteRequest(names, idx, np.concatenate([p.ts for p in parts]),
                        np.concatenate([p.val for p in parts]),
                        np.concatenate([p.versions() for p in parts]))
