"""Unit tests for count.storage.aggregate: whole-range and bucketed aggregations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.aggregate import AGGREGATIONS, aggregate, aggregate_buckets

NUMPY = {"sum": np.sum, "mean": np.mean, "avg": np.mean, "min": np.min, "max": np.max,
         "count": len}


def test_aggregation_names():
    assert set(AGGREGATIONS) == {"sum", "mean", "avg", "min", "max", "count"}


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_matches_numpy(how, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1000, 1 + seed * 500)
    got = aggregate(values, how)
    want = NUMPY[how](values)
    if how == "count":
        assert got == want and type(got) is int
    else:
        assert type(got) is float
        assert got == pytest.approx(float(want), rel=1e-12, abs=1e-9)


def test_aggregate_small_exact():
    values = np.array([4.0, -1.0, 2.5, 2.5])
    assert aggregate(values, "sum") == 8.0
    assert aggregate(values, "mean") == 2.0
    assert aggregate(values, "avg") == 2.0
    assert aggregate(values, "min") == -1.0
    assert aggregate(values, "max") == 4.0
    assert aggregate(values, "count") == 4


def test_aggregate_empty():
    empty = np.empty(0, np.float64)
    assert aggregate(empty, "count") == 0
    assert type(aggregate(empty, "count")) is int
    assert aggregate(empty, "sum") == 0.0
    assert type(aggregate(empty, "sum")) is float
    for how in ("mean", "avg", "min", "max"):
        assert aggregate(empty, how) is None


def test_aggregate_unknown_raises():
    with pytest.raises(ValueError):
        aggregate(np.array([1.0]), "median")


def test_aggregate_single_value():
    for how in ("sum", "mean", "avg", "min", "max"):
        assert aggregate(np.array([-0.5]), how) == -0.5
    assert aggregate(np.array([-0.5]), "count") == 1


# -- buckets ---------------------------------------------------------------------------------


def reference_buckets(ts, values, how, interval):
    groups: dict[int, list[float]] = {}
    for t, v in zip(ts.tolist(), values.tolist(), strict=True):
        groups.setdefault(t - t % interval, []).append(v)
    starts = sorted(groups)
    results = [float(NUMPY[how](np.array(groups[s]))) for s in starts]
    counts = [len(groups[s]) for s in starts]
    return starts, results, counts


def check_buckets(ts, values, how, interval):
    starts, results, counts = aggregate_buckets(ts, values, how, interval)
    want_starts, want_results, want_counts = reference_buckets(ts, values, how, interval)
    assert starts.tolist() == want_starts
    assert counts.tolist() == want_counts
    if how in ("min", "max", "count"):
        assert results.tolist() == want_results
    else:
        np.testing.assert_allclose(results, want_results, rtol=1e-9, atol=1e-6)
    return starts, results, counts


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_buckets_small_exact(how):
    ts = np.array([0, 999, 1000, 1500, 3000, 3999], np.int64)
    values = np.array([1.0, 3.0, 10.0, 20.0, 5.0, 7.0])
    starts, results, counts = aggregate_buckets(ts, values, how, 1000)
    assert starts.tolist() == [0, 1000, 3000]  # the empty 2000 bucket is not returned
    assert counts.tolist() == [2, 2, 2]
    expected = {"sum": [4.0, 30.0, 12.0], "mean": [2.0, 15.0, 6.0], "avg": [2.0, 15.0, 6.0],
                "min": [1.0, 10.0, 5.0], "max": [3.0, 20.0, 7.0], "count": [2.0, 2.0, 2.0]}
    assert results.tolist() == expected[how]
    assert starts.dtype == np.int64 and results.dtype == np.float64 and counts.dtype == np.int64


def test_buckets_are_epoch_aligned_not_range_aligned():
    ts = np.array([1_700_000_012_345, 1_700_000_071_000], np.int64)
    starts, _, counts = aggregate_buckets(ts, np.array([1.0, 2.0]), "sum", 60_000)
    assert starts.tolist() == [1_699_999_980_000, 1_700_000_040_000]
    assert all(s % 60_000 == 0 for s in starts.tolist())
    assert counts.tolist() == [1, 1]


def test_interval_one_gives_one_bucket_per_point():
    ts = np.array([3, 4, 7, 100], np.int64)
    values = np.array([1.0, 2.0, 3.0, 4.0])
    for how in AGGREGATIONS:
        starts, results, counts = aggregate_buckets(ts, values, how, 1)
        assert starts.tolist() == ts.tolist()
        assert counts.tolist() == [1, 1, 1, 1]
        expected = [1.0] * 4 if how == "count" else values.tolist()
        assert results.tolist() == expected


def test_interval_larger_than_everything_gives_one_bucket():
    ts = np.array([5, 10, 20], np.int64)
    starts, results, counts = aggregate_buckets(ts, np.array([1.0, 2.0, 3.0]), "mean", 10**12)
    assert starts.tolist() == [0]
    assert results.tolist() == [2.0]
    assert counts.tolist() == [3]


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_buckets_empty(how):
    starts, results, counts = aggregate_buckets(np.empty(0, np.int64), np.empty(0), how, 1000)
    assert len(starts) == len(results) == len(counts) == 0
    assert starts.dtype == np.int64 and results.dtype == np.float64 and counts.dtype == np.int64


def test_buckets_unknown_aggregation_raises_even_when_empty():
    with pytest.raises(ValueError):
        aggregate_buckets(np.array([1], np.int64), np.array([1.0]), "median", 10)
    with pytest.raises(ValueError):
        aggregate_buckets(np.empty(0, np.int64), np.empty(0), "median", 10)


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_buckets_random_walk_vs_numpy(how):
    rng = np.random.default_rng(7)
    n = 5000
    ts = np.cumsum(rng.integers(1, 30_000, n)).astype(np.int64) + 1_700_000_000_000
    values = np.round(np.cumsum(rng.normal(0, 1, n)) + 100, 2)
    starts, _, counts = check_buckets(ts, values, how, 60_000)
    assert counts.sum() == n
    assert (np.diff(starts) > 0).all()


@settings(max_examples=150, deadline=None)
@given(
    stamps=st.lists(st.integers(0, 10**6), min_size=0, max_size=80),
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=80, max_size=80),
    how=st.sampled_from(AGGREGATIONS),
    interval=st.one_of(st.integers(1, 100), st.integers(1, 10**7)),
)
def test_buckets_property(stamps, values, how, interval):
    ts = np.array(sorted(stamps), np.int64)
    vals = np.array(values[: len(ts)], np.float64)
    starts, results, counts = check_buckets(ts, vals, how, interval)
    assert all(s % interval == 0 for s in starts.tolist())
    assert (counts > 0).all()
    assert int(counts.sum()) == len(ts)
    if len(ts):
        # bucketed sum/count agree with the whole-range aggregate
        if how == "count":
            assert results.sum() == aggregate(vals, "count")
        if how == "max":
            assert results.max() == aggregate(vals, "max")
