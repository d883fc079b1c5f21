"""Unit tests for count.storage.segments: flushed, uncompressed multi-series segments."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.segments import Segment, build_segment
from tests.unit.storage_model import lists, point_arrays

TS_MAX = np.iinfo(np.int64).max


def test_round_trip_small():
    data = build_segment(*point_arrays([2, 1, 2, 1], [20, 10, 10, 5], [4.0, 3.0, 2.0, 1.0],
                                 [1, 2, 3, 4]))
    seg = Segment(data)
    assert seg.sids.tolist() == [1, 2]
    assert lists(seg.series(1, 0, TS_MAX)) == ([5, 10], [1.0, 3.0], [4, 2])
    assert lists(seg.series(2, 0, TS_MAX)) == ([10, 20], [2.0, 4.0], [3, 1])


def test_reader_accepts_a_memoryview():
    data = build_segment(*point_arrays([7], [1], [1.5], [1]))
    assert lists(Segment(memoryview(data)).series(7, 0, TS_MAX)) == ([1], [1.5], [1])


def test_missing_sid_is_none():
    seg = Segment(build_segment(*point_arrays([2, 4], [1, 1], [1.0, 1.0], [1, 1])))
    for sid in (0, 1, 3, 5, 2**32 - 1):
        assert seg.series(sid, 0, TS_MAX) is None


def test_empty_segment():
    seg = Segment(build_segment(*point_arrays([], [], [], [])))
    assert len(seg.sids) == 0
    assert seg.series(1, 0, TS_MAX) is None


def test_range_filtering_is_inclusive():
    seg = Segment(build_segment(*point_arrays([1] * 5 + [2], [10, 20, 30, 40, 50, 25],
                                        [1, 2, 3, 4, 5, 9], [1] * 6)))
    assert lists(seg.series(1, 20, 40))[0] == [20, 30, 40]
    assert lists(seg.series(1, 0, 10))[0] == [10]
    assert lists(seg.series(1, 50, TS_MAX))[0] == [50]
    assert seg.series(1, 21, 29) is None  # the series exists but not in this range
    assert seg.series(1, 51, 100) is None
    assert seg.series(1, 0, 9) is None
    assert lists(seg.series(2, 25, 25))[0] == [25]


def test_duplicates_resolved_by_version_then_arrival():
    seg = Segment(build_segment(*point_arrays(
        [1, 1, 1, 1, 1, 1],
        [10, 10, 10, 20, 20, 20],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [5, 9, 5, 7, 7, 7],
    )))
    # ts 10: version 9 wins though two version-5 points arrived around it;
    # ts 20: all version 7, the last arrival wins
    assert lists(seg.series(1, 0, TS_MAX)) == ([10, 20], [2.0, 6.0], [9, 7])


def test_duplicates_in_different_series_are_independent():
    seg = Segment(build_segment(*point_arrays([1, 2, 1, 2], [5, 5, 5, 5], [1.0, 2.0, 3.0, 4.0],
                                        [1, 1, 1, 0])))
    assert lists(seg.series(1, 0, TS_MAX)) == ([5], [3.0], [1])
    assert lists(seg.series(2, 0, TS_MAX)) == ([5], [2.0], [1])


@pytest.mark.parametrize("fmt", [0, 2, 255])
def test_bad_format_byte_raises(fmt):
    data = bytearray(build_segment(*point_arrays([1], [1], [1.0], [1])))
    data[0] = fmt
    with pytest.raises(ValueError):
        Segment(bytes(data))


def test_truncated_segment_raises():
    data = build_segment(*point_arrays([1, 2, 3], [1, 2, 3], [1.0, 2.0, 3.0], [1, 1, 1]))
    for cut in (len(data) - 1, len(data) - 4, 20, 16):
        with pytest.raises(ValueError):
            Segment(data[:cut])


def test_series_returns_copies():
    data = bytearray(build_segment(*point_arrays([1, 1], [1, 2], [1.0, 2.0], [1, 1])))
    got = Segment(data).series(1, 0, TS_MAX)
    data[16:] = bytes(len(data) - 16)  # overwrite the buffer the reader looked at
    assert lists(got) == ([1, 2], [1.0, 2.0], [1, 1])


def test_large_sids_and_timestamps():
    sid = [2**32 - 1, 0, 2**31]
    ts = [TS_MAX, 0, 2**62]
    seg = Segment(build_segment(*point_arrays(sid, ts, [1.0, 2.0, 3.0], [2**64 - 1, 0, 1])))
    assert seg.sids.tolist() == [0, 2**31, 2**32 - 1]
    assert lists(seg.series(2**32 - 1, 0, TS_MAX)) == ([TS_MAX], [1.0], [2**64 - 1])
    assert lists(seg.series(0, 0, TS_MAX)) == ([0], [2.0], [0])


entry = st.tuples(st.integers(0, 40), st.integers(0, 100), st.floats(width=64),
                  st.integers(0, 3))


@settings(max_examples=120, deadline=None)
@given(
    entries=st.lists(entry, max_size=300),
    queries=st.lists(st.tuples(st.integers(0, 41), st.integers(0, 110), st.integers(0, 110)),
                     max_size=8),
)
def test_many_series_round_trip_matches_reference(entries, queries):
    seg = Segment(build_segment(*point_arrays(*zip(*entries, strict=True))
                                if entries else point_arrays([], [], [], [])))
    model: dict[int, dict[int, tuple[int, float]]] = {}
    for sid, ts, val, ver in entries:
        points = model.setdefault(sid, {})
        if ts not in points or ver >= points[ts][0]:
            points[ts] = (ver, val)
    assert seg.sids.tolist() == sorted(model)
    for sid, start, end in [*queries, *((s, 0, TS_MAX) for s in range(41))]:
        got = seg.series(sid, start, end)
        want = sorted((ts, v[1], v[0]) for ts, v in model.get(sid, {}).items()
                      if start <= ts <= end)
        if not want:
            assert got is None
            continue
        assert got.ts.tolist() == [w[0] for w in want]
        assert got.val.view(np.uint64).tolist() == (
            np.array([w[1] for w in want], np.float64).view(np.uint64).tolist())
        assert got.ver.tolist() == [w[2] for w in want]
