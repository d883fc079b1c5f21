"""Hints: durable across a reopen, counted per target, dropped only when delivered as sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from count.cluster.hints import HintLog, series_extents
from count.storage.engine import Storage, WriteRequest


def _storage(path: Path) -> Storage:
    return Storage(str(path), map_size_bytes=1 << 24, buffer_points=1000, flush_interval_s=60)


def _write(names: list[str], idx: list[int], ts: list[int]) -> WriteRequest:
    return WriteRequest(names, np.array(idx, np.uint32), np.array(ts, np.int64),
                        np.ones(len(ts)), 5)


def test_series_extents_per_series():
    extents = series_extents(_write(["a", "b", "unused"], [0, 1, 0, 0], [30, 7, 10, 20]))
    assert extents == [("a", 10, 30, 3), ("b", 7, 7, 1)]


def test_hints_survive_a_reopen_and_count_points_per_target(tmp_path: Path):
    storage = _storage(tmp_path)
    log = HintLog(storage)
    log.add([("n2", _write(["a", "b"], [0, 1, 0], [1, 2, 3])), ("n3", _write(["a"], [0], [9]))], 100.0)
    log.add([("n2", _write(["a"], [0], [50]))], 101.0)
    assert log.pending() == {"n2": 4, "n3": 1}
    storage.close(clean=False)
    storage = _storage(tmp_path)
    again = HintLog(storage)
    assert again.pending() == {"n2": 4, "n3": 1}
    taken = dict(again.take("n2", 10))
    assert (taken["a"].min_ts, taken["a"].max_ts, taken["a"].points) == (1, 50, 3)
    assert sorted(again.targets()) == ["n2", "n3"]
    assert again.hinted_series() == {"a", "b"}
    storage.close(clean=False)


def test_delivery_keeps_a_hint_that_grew_meanwhile(tmp_path: Path):
    storage = _storage(tmp_path)
    log = HintLog(storage)
    log.add([("n2", _write(["a", "b"], [0, 1], [1, 2]))], 100.0)
    sent = log.take("n2", 10)
    log.add([("n2", _write(["a"], [0], [7]))], 102.0)  # arrives while the hand-off is in flight
    log.delivered("n2", sent)
    left = dict(log.take("n2", 10))
    assert list(left) == ["a"]  # b was delivered as sent; a has a point the hand-off lacked
    assert log.pending() == {"n2": 2} and log.hinted_series() == {"a"}
    log.delivered("n2", log.take("n2", 10))
    assert log.pending() == {} and log.targets() == [] and log.hinted_series() == set()
    storage.close(clean=False)
    storage = _storage(tmp_path)
    assert HintLog(storage).pending() == {}
    storage.close(clean=False)


def test_a_hint_handed_off_in_slices_moves_its_start(tmp_path: Path):
    storage = _storage(tmp_path)
    log = HintLog(storage)
    log.add([("n2", _write(["a"], [0] * 5, [10, 20, 30, 40, 50]))], 100.0)
    [(series, hint)] = log.take("n2", 10)
    log.advance("n2", series, hint, 40, 3)  # 10, 20, 30 delivered
    [(_, left)] = log.take("n2", 10)
    assert (left.min_ts, left.max_ts, left.points) == (40, 50, 2)
    assert log.pending() == {"n2": 2}
    storage.close(clean=False)
    storage = _storage(tmp_path)
    [(_, again)] = HintLog(storage).take("n2", 10)
    assert (again.min_ts, again.points) == (40, 2)
    storage.close(clean=False)


def test_a_slice_of_a_hint_that_grew_meanwhile_is_not_recorded(tmp_path: Path):
    storage = _storage(tmp_path)
    log = HintLog(storage)
    log.add([("n2", _write(["a"], [0, 0], [10, 20]))], 100.0)
    [(series, hint)] = log.take("n2", 10)
    log.add([("n2", _write(["a"], [0], [5]))], 101.0)
    log.advance("n2", series, hint, 20, 1)
    [(_, left)] = log.take("n2", 10)
    assert (left.min_ts, left.points) == (5, 3)
    storage.close(clean=False)
