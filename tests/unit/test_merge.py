"""Unit tests for count.storage.merge: the last-write-wins rule in one place."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.merge import EMPTY, Columns, dedupe_arrivals, merge_sorted, resolve


def cols(ts, val, ver) -> Columns:
    return Columns(np.asarray(ts, np.int64), np.asarray(val, np.float64),
                   np.asarray(ver, np.uint64))


def as_lists(c: Columns):
    return c.ts.tolist(), c.val.tolist(), c.ver.tolist()


def assert_columns_equal(a: Columns, b: Columns) -> None:
    assert a.ts.dtype == np.int64 and a.val.dtype == np.float64 and a.ver.dtype == np.uint64
    np.testing.assert_array_equal(a.ts, b.ts)
    # bit-exact values (distinguishes -0.0 from 0.0)
    np.testing.assert_array_equal(a.val.view(np.uint64), b.val.view(np.uint64))
    np.testing.assert_array_equal(a.ver, b.ver)


def reference(parts: list[list[tuple[int, float, int]]]) -> Columns:
    """A dict model of LWW: highest version wins, ties go to the later part / later position."""
    best: dict[int, tuple[int, int, float]] = {}
    arrival = 0
    for points in parts:
        for ts, val, ver in points:
            arrival += 1
            if ts not in best or (ver, arrival) > best[ts][:2]:
                best[ts] = (ver, arrival, val)
    keys = sorted(best)
    return cols(keys, [best[k][2] for k in keys], [best[k][0] for k in keys])


# -- resolve / dedupe_arrivals ---------------------------------------------------------------


def test_resolve_highest_version_wins():
    out = resolve(np.array([5, 5, 5], np.int64), np.array([1.0, 2.0, 3.0]),
                  np.array([2, 9, 4], np.uint64), np.array([0, 1, 2]))
    assert as_lists(out) == ([5], [2.0], [9])


def test_resolve_equal_version_highest_rank_wins():
    out = resolve(np.array([5, 5, 5], np.int64), np.array([1.0, 2.0, 3.0]),
                  np.array([7, 7, 7], np.uint64), np.array([2, 0, 1]))
    assert as_lists(out) == ([5], [1.0], [7])


def test_resolve_sorts_by_timestamp():
    out = resolve(np.array([30, 10, 20], np.int64), np.array([3.0, 1.0, 2.0]),
                  np.array([1, 1, 1], np.uint64), np.arange(3))
    assert as_lists(out) == ([10, 20, 30], [1.0, 2.0, 3.0], [1, 1, 1])


def test_resolve_empty():
    out = resolve(np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint64), np.empty(0, np.int64))
    assert len(out) == 0


def test_dedupe_later_arrival_wins_at_equal_version():
    out = dedupe_arrivals(cols([10, 20, 10, 10], [1.0, 2.0, 3.0, 4.0], [5, 5, 5, 5]))
    assert as_lists(out) == ([10, 20], [4.0, 2.0], [5, 5])


def test_dedupe_higher_version_wins_even_if_earlier():
    out = dedupe_arrivals(cols([10, 10, 10], [1.0, 2.0, 3.0], [9, 3, 8]))
    assert as_lists(out) == ([10], [1.0], [9])


def test_dedupe_uses_full_uint64_range():
    big = np.iinfo(np.uint64).max
    out = dedupe_arrivals(Columns(np.array([1, 1], np.int64), np.array([1.0, 2.0]),
                                  np.array([big, big - 1], np.uint64)))
    assert as_lists(out) == ([1], [1.0], [int(big)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(allow_nan=False), st.integers(0, 5)),
                max_size=60))
def test_dedupe_matches_reference(points):
    c = cols([p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
    assert_columns_equal(dedupe_arrivals(c), reference([points]))


# -- merge_sorted ----------------------------------------------------------------------------


def test_merge_no_parts_or_only_empty_parts():
    assert len(merge_sorted([])) == 0
    assert len(merge_sorted([EMPTY, cols([], [], []), EMPTY])) == 0


def test_merge_single_part_unchanged():
    part = cols([1, 2, 3], [1.0, 2.0, 3.0], [1, 1, 1])
    assert as_lists(merge_sorted([EMPTY, part, EMPTY])) == as_lists(part)


def test_merge_later_part_wins_at_equal_version():
    old = cols([1, 2, 3], [1.0, 2.0, 3.0], [4, 4, 4])
    new = cols([2, 3, 4], [20.0, 30.0, 40.0], [4, 4, 4])
    assert as_lists(merge_sorted([old, new])) == ([1, 2, 3, 4], [1.0, 20.0, 30.0, 40.0],
                                                  [4, 4, 4, 4])
    assert as_lists(merge_sorted([new, old])) == ([1, 2, 3, 4], [1.0, 2.0, 3.0, 40.0],
                                                  [4, 4, 4, 4])


def test_merge_higher_version_wins_in_an_earlier_part():
    old = cols([1, 2], [1.0, 2.0], [9, 1])
    new = cols([1, 2], [10.0, 20.0], [5, 5])
    assert as_lists(merge_sorted([old, new])) == ([1, 2], [1.0, 20.0], [9, 5])


def test_merge_disjoint_parts_in_any_order_are_sorted():
    a = cols([1, 2], [1.0, 2.0], [1, 1])
    b = cols([10, 11], [10.0, 11.0], [2, 2])
    c = cols([5], [5.0], [3])
    out = merge_sorted([b, c, a])
    assert as_lists(out) == ([1, 2, 5, 10, 11], [1.0, 2.0, 5.0, 10.0, 11.0], [1, 1, 3, 2, 2])


def test_merge_touching_parts_are_not_disjoint():
    a = cols([1, 5], [1.0, 5.0], [1, 1])
    b = cols([5, 9], [50.0, 9.0], [1, 1])
    assert as_lists(merge_sorted([a, b])) == ([1, 5, 9], [1.0, 50.0, 9.0], [1, 1, 1])


def test_merge_interleaved_but_not_overlapping_timestamps():
    a = cols([1, 3, 5], [1.0, 3.0, 5.0], [1, 1, 1])
    b = cols([2, 4, 6], [2.0, 4.0, 6.0], [1, 1, 1])
    assert as_lists(merge_sorted([a, b]))[0] == [1, 2, 3, 4, 5, 6]


def _sorted_unique_part(points):
    """Points of one part: sorted, one per timestamp (the later of duplicates drawn)."""
    by_ts = {ts: (val, ver) for ts, val, ver in points}
    return [(ts, *by_ts[ts]) for ts in sorted(by_ts)]


point = st.tuples(st.integers(0, 200), st.floats(allow_nan=False, width=64), st.integers(0, 4))


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(point, max_size=25), max_size=6))
def test_merge_matches_reference(raw_parts):
    parts = [_sorted_unique_part(p) for p in raw_parts]
    columns = [cols([p[0] for p in part], [p[1] for p in part], [p[2] for p in part])
               for part in parts]
    assert_columns_equal(merge_sorted(columns), reference(parts))


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    cuts=st.lists(st.integers(1, 10_000), min_size=1, max_size=8, unique=True),
)
def test_disjoint_fast_path_equals_general_path(data, cuts):
    """Parts that do not overlap (the fast path) merge exactly as the general rule says."""
    bounds = [0, *sorted(cuts), 10_001]
    parts = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        stamps = data.draw(st.lists(st.integers(lo, hi - 1), max_size=20, unique=True))
        stamps.sort()
        vals = data.draw(st.lists(st.floats(allow_nan=False), min_size=len(stamps),
                                  max_size=len(stamps)))
        vers = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(stamps),
                                  max_size=len(stamps)))
        parts.append(list(zip(stamps, vals, vers, strict=True)))
    order = data.draw(st.permutations(range(len(parts))))
    shuffled = [parts[i] for i in order]
    columns = [cols([p[0] for p in part], [p[1] for p in part], [p[2] for p in part])
               for part in shuffled]
    fast = merge_sorted(columns)
    general = resolve(
        np.concatenate([c.ts for c in columns]),
        np.concatenate([c.val for c in columns]),
        np.concatenate([c.ver for c in columns]),
        np.concatenate([np.full(len(c), i) for i, c in enumerate(columns)]),
    )
    assert_columns_equal(fast, general)
    assert_columns_equal(fast, reference(shuffled))


# -- Columns.between -------------------------------------------------------------------------


def test_between_bounds_are_inclusive():
    c = cols([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4])
    assert as_lists(c.between(20, 30)) == ([20, 30], [2.0, 3.0], [2, 3])
    assert as_lists(c.between(10, 10)) == ([10], [1.0], [1])
    assert as_lists(c.between(40, 40)) == ([40], [4.0], [4])
    assert as_lists(c.between(0, 100)) == as_lists(c)
    assert as_lists(c.between(11, 19))[0] == []
    assert as_lists(c.between(41, 100))[0] == []
    assert as_lists(c.between(0, 9))[0] == []
    assert as_lists(c.between(30, 20))[0] == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 100), unique=True), st.integers(-5, 105), st.integers(-5, 105))
def test_between_matches_filter(stamps, start, end):
    stamps.sort()
    c = cols(stamps, [float(t) for t in stamps], [1] * len(stamps))
    got = c.between(start, end)
    assert got.ts.tolist() == [t for t in stamps if start <= t <= end]
    assert got.val.tolist() == [float(t) for t in got.ts.tolist()]
    assert len(got) == len(got.ver)
