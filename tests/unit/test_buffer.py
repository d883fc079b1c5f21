"""Unit tests for count.storage.buffer: the in-memory, arrival-ordered columnar log."""

from __future__ import annotations

import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.buffer import MemoryBuffer
from tests.unit.storage_model import lists, point_arrays

TS_MAX = np.iinfo(np.int64).max


def test_new_buffer_is_empty():
    buf = MemoryBuffer(10)
    assert len(buf) == 0
    assert buf.oldest_monotonic is None
    assert all(len(a) == 0 for a in buf.contents())
    assert len(buf.series(1, 0, TS_MAX)) == 0
    assert buf.series_ids().tolist() == []


def test_append_and_contents_keep_arrival_order():
    buf = MemoryBuffer(10)
    buf.append(*point_arrays([2, 1, 2], [30, 10, 20], [3.0, 1.0, 2.0], [7, 7, 7]))
    buf.append(*point_arrays([1], [5], [0.5], [8]))
    assert len(buf) == 4
    sid, ts, val, ver = buf.contents()
    assert sid.tolist() == [2, 1, 2, 1]
    assert ts.tolist() == [30, 10, 20, 5]
    assert val.tolist() == [3.0, 1.0, 2.0, 0.5]
    assert ver.tolist() == [7, 7, 7, 8]
    assert (sid.dtype, ts.dtype, val.dtype, ver.dtype) == (np.uint32, np.int64, np.float64,
                                                          np.uint64)
    assert buf.series_ids().tolist() == [1, 2]


def test_growth_beyond_initial_capacity_keeps_everything():
    buf = MemoryBuffer(3)
    expected_ts = []
    for i in range(20):
        n = (i % 5) + 1
        ts = list(range(len(expected_ts), len(expected_ts) + n))
        buf.append(*point_arrays([1] * n, ts, [float(t) for t in ts], [1] * n))
        expected_ts += ts
    assert len(buf) == len(expected_ts)
    assert buf.contents()[1].tolist() == expected_ts
    assert lists(buf.series(1, 0, TS_MAX))[0] == expected_ts


def test_one_batch_much_larger_than_capacity():
    buf = MemoryBuffer(1)
    n = 10_000
    buf.append(*point_arrays(np.arange(n) % 3, np.arange(n), np.arange(n) * 0.5, np.ones(n)))
    assert len(buf) == n
    assert buf.series(2, 0, TS_MAX).ts.tolist() == list(range(2, n, 3))


def test_clear_empties_and_buffer_is_reusable():
    buf = MemoryBuffer(4)
    buf.append(*point_arrays([1, 1], [1, 2], [1.0, 2.0], [1, 1]))
    buf.clear()
    assert len(buf) == 0
    assert buf.oldest_monotonic is None
    assert len(buf.series(1, 0, TS_MAX)) == 0
    assert all(len(a) == 0 for a in buf.contents())
    buf.append(*point_arrays([3], [9], [9.0], [2]))
    assert lists(buf.series(3, 0, TS_MAX)) == ([9], [9.0], [2])
    assert len(buf.series(1, 0, TS_MAX)) == 0


def test_series_filters_by_sid_and_inclusive_range():
    buf = MemoryBuffer(16)
    buf.append(*point_arrays([1, 2, 1, 1, 2, 1], [10, 10, 20, 30, 30, 40], [1, 2, 3, 4, 5, 6],
                      [1] * 6))
    assert lists(buf.series(1, 20, 30)) == ([20, 30], [3.0, 4.0], [1, 1])
    assert lists(buf.series(1, 0, TS_MAX))[0] == [10, 20, 30, 40]
    assert lists(buf.series(2, 0, TS_MAX))[0] == [10, 30]
    assert lists(buf.series(2, 11, 29))[0] == []
    assert lists(buf.series(1, 40, 40))[0] == [40]
    assert lists(buf.series(3, 0, TS_MAX))[0] == []


def test_series_sorts_out_of_order_arrivals():
    buf = MemoryBuffer(8)
    buf.append(*point_arrays([1, 1, 1], [30, 10, 20], [3.0, 1.0, 2.0], [1, 1, 1]))
    buf.append(*point_arrays([1], [15], [1.5], [1]))
    assert lists(buf.series(1, 0, TS_MAX))[0] == [10, 15, 20, 30]


def test_series_last_arrival_wins_for_same_ts_and_version():
    buf = MemoryBuffer(8)
    buf.append(*point_arrays([1, 1], [10, 10], [1.0, 2.0], [5, 5]))
    buf.append(*point_arrays([1], [10], [3.0], [5]))
    assert lists(buf.series(1, 0, TS_MAX)) == ([10], [3.0], [5])


def test_series_higher_version_wins_regardless_of_arrival():
    buf = MemoryBuffer(8)
    buf.append(*point_arrays([1], [10], [1.0], [9]))
    buf.append(*point_arrays([1], [10], [2.0], [4]))  # older version arriving later loses
    assert lists(buf.series(1, 0, TS_MAX)) == ([10], [1.0], [9])
    buf.append(*point_arrays([1], [10], [3.0], [10]))
    assert lists(buf.series(1, 0, TS_MAX)) == ([10], [3.0], [10])


def test_oldest_monotonic_set_on_first_append_and_cleared():
    buf = MemoryBuffer(8)
    buf.append(*point_arrays([], [], [], []))
    assert buf.oldest_monotonic is None  # an empty batch is not a point waiting
    before = time.monotonic()
    buf.append(*point_arrays([1], [1], [1.0], [1]))
    after = time.monotonic()
    first = buf.oldest_monotonic
    assert first is not None and before <= first <= after
    buf.append(*point_arrays([1], [2], [2.0], [1]))
    assert buf.oldest_monotonic == first  # it marks the oldest point, not the newest
    buf.clear()
    assert buf.oldest_monotonic is None
    buf.append(*point_arrays([1], [3], [3.0], [1]))
    assert buf.oldest_monotonic is not None and buf.oldest_monotonic >= first


def test_series_returns_a_copy_independent_of_later_appends():
    buf = MemoryBuffer(2)
    buf.append(*point_arrays([1, 1], [1, 2], [1.0, 2.0], [1, 1]))
    got = buf.series(1, 0, TS_MAX)
    buf.append(*point_arrays([1] * 10, range(3, 13), [0.0] * 10, [1] * 10))  # forces a regrow
    buf.clear()
    assert lists(got) == ([1, 2], [1.0, 2.0], [1, 1])


entry = st.tuples(st.integers(1, 4), st.integers(0, 50), st.floats(allow_nan=False),
                  st.integers(0, 3))


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(st.lists(entry, max_size=20), max_size=8),
    capacity=st.integers(1, 16),
    queries=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 60), st.integers(0, 60)),
                     max_size=6),
)
def test_series_matches_reference(batches, capacity, queries):
    buf = MemoryBuffer(capacity)
    model: dict[tuple[int, int], tuple[int, float]] = {}
    for b in batches:
        buf.append(*point_arrays([e[0] for e in b], [e[1] for e in b], [e[2] for e in b],
                          [e[3] for e in b]))
        for sid, ts, val, ver in b:
            if (sid, ts) not in model or ver >= model[(sid, ts)][0]:
                model[(sid, ts)] = (ver, val)
    assert len(buf) == sum(len(b) for b in batches)
    for sid, start, end in [*queries, *((s, 0, TS_MAX) for s in range(1, 5))]:
        got = buf.series(sid, start, end)
        want = sorted((ts, v[1], v[0]) for (s, ts), v in model.items()
                      if s == sid and start <= ts <= end)
        assert got.ts.tolist() == [w[0] for w in want]
        assert got.val.view(np.uint64).tolist() == (
            np.array([w[1] for w in want], np.float64).view(np.uint64).tolist())
        assert got.ver.tolist() == [w[2] for w in want]
