"""Aggregations over a range of points: one number, or one row per time bucket.

Buckets are aligned to the epoch (bucket start = ts - ts % interval), as InfluxDB's
GROUP BY time() does, and only buckets that hold points are returned.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("sum", "mean", "avg", "min", "max", "count")


def aggregate(values: np.ndarray, how: str) -> float | int | None:
    """One aggregate over all values; None for mean/min/max of no points."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}")
    if how == "count":
        return len(values)
    if how == "sum":
        return float(values.sum()) if len(values) else 0.0
    if not len(values):
        return None
    if how in ("mean", "avg"):
        return float(values.mean())
    if how == "min":
        return float(values.min())
    return float(values.max())


def aggregate_buckets(
    ts: np.ndarray, values: np.ndarray, how: str, interval_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bucket (bucket start, aggregate, count) for sorted timestamps."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}")
    if not len(ts):
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64)
    bucket = ts - ts % interval_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    counts = np.diff(np.r_[starts, len(ts)])
    if how == "count":
        result = counts.astype(np.float64)
    elif how == "sum":
        result = np.add.reduceat(values, starts)
    elif how in ("mean", "avg"):
        result = np.add.reduceat(values, starts) / counts
    elif how == "min":
        result = np.minimum.reduceat(values, starts)
    else:
        result = np.maximum.reduceat(values, starts)
    return bucket[starts], result, counts
