"""Unit tests for count.storage.engine.Storage on a real LMDB environment (no processes).

Reads are checked against a reference model (tests/unit/storage_model.py) through writes in
and out of order, overwrites with newer and older versions, flushes, compactions, and clean
and unclean restarts (WAL replay).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from count.errors import BadRequest
from count.storage import compaction
from count.storage.engine import Storage
from count.storage.merge import Columns
from tests.unit.storage_model import (
    BIG,
    END,
    Model,
    assert_columns,
    check_layout,
    check_read,
    open_storage,
    request,
    stored_points,
)

T0 = 1_700_000_000_000


@pytest.fixture
def path(tmp_path):
    return tmp_path / "db"


@pytest.fixture
def store(path):
    storage = open_storage(path)
    yield storage
    if storage.env is not None:
        try:
            storage.env.close()
        except Exception:
            pass


def lists(cols):
    return cols.ts.tolist(), cols.val.tolist(), cols.ver.tolist()


def write(storage: Storage, model: Model, *requests) -> None:
    storage.write(list(requests))
    model.write(list(requests))


def walk(n: int, seed: int = 0, t0: int = T0, step: int = 10_000):
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0, 1, n)) + 100, 2)
    return [(t0 + i * step, float(v)) for i, v in enumerate(values)]


def series_request(name: str, points, version: int):
    return request([(name, t, v) for t, v in points], version)


# -- basics ----------------------------------------------------------------------------------


def test_write_then_read_from_the_buffer(store):
    store.write([request([("a", 20, 2.0), ("b", 10, 1.0), ("a", 10, 1.0)], 5)])
    assert lists(store.read("a", 0, END, BIG)) == ([10, 20], [1.0, 2.0], [5, 5])
    assert lists(store.read("b", 0, END, BIG)) == ([10], [1.0], [5])
    assert store.stats()["buffer_points"] == 3
    assert store.stats()["series"] == 2


def test_unknown_series_reads_empty(store):
    store.write([request([("a", 1, 1.0)], 1)])
    got = store.read("nope", 0, END, BIG)
    assert len(got) == 0
    assert (got.ts.dtype, got.val.dtype, got.ver.dtype) == (np.int64, np.float64, np.uint64)
    empty = open_storage(store.path + "-empty")
    assert len(empty.read("a", 0, END, BIG)) == 0
    empty.close()


@pytest.mark.parametrize("layer", ["buffer", "segment", "block"])
def test_range_bounds_are_inclusive(store, layer):
    store.write([series_request("s", [(t, float(t)) for t in range(0, 1000, 10)], 1)])
    if layer != "buffer":
        store.flush()
    if layer == "block":
        store.compact_all()
    assert store.read("s", 100, 200, BIG).ts.tolist() == list(range(100, 201, 10))
    assert store.read("s", 101, 109, BIG).ts.tolist() == []
    assert store.read("s", 990, END, BIG).ts.tolist() == [990]
    assert store.read("s", 0, 0, BIG).ts.tolist() == [0]
    assert store.read("s", 2000, END, BIG).ts.tolist() == []


def test_group_commit_with_a_new_name_in_two_requests(store):
    model = Model()
    write(store, model, request([("new", 1, 1.0), ("x", 1, 5.0)], 10),
          request([("new", 2, 2.0), ("new", 1, 1.5)], 11))
    assert store.list_series("", 10) == ["new", "x"]
    check_read(store, model, "new")
    assert lists(store.read("new", 0, END, BIG)) == ([1, 2], [1.5, 2.0], [11, 11])
    store.close(clean=False)
    reopened = open_storage(store.path)
    assert reopened.list_series("", 10) == ["new", "x"]
    check_read(reopened, model, "new")
    reopened.close()


def test_flush_moves_the_buffer_into_a_segment(store):
    store.write([series_request("s", walk(500), 3)])
    assert store.flush_due() is False
    store.flush()
    stats = store.stats()
    assert stats["buffer_points"] == 0 and stats["segments"] == 1 and stats["flushes"] == 1
    assert store.read("s", 0, END, BIG).ts.tolist() == [t for t, _ in walk(500)]
    store.flush()  # an empty buffer flushes nothing
    assert store.stats()["segments"] == 1


def test_flush_due_when_the_buffer_is_full(path):
    storage = open_storage(path, buffer_points=100)
    storage.write([series_request("s", walk(99), 1)])
    assert storage.flush_due() is False
    storage.write([series_request("s", walk(1, t0=1), 2)])
    assert storage.flush_due() is True
    storage.flush()
    assert storage.flush_due() is False
    assert storage.seconds_to_flush() is None
    storage.close()


def test_seconds_to_flush_counts_down_from_the_interval(path):
    storage = open_storage(path)
    assert storage.seconds_to_flush() is None
    storage.write([request([("s", 1, 1.0)], 1)])
    assert 0 < storage.seconds_to_flush() <= 300
    storage.close()


# -- last write wins across layers -----------------------------------------------------------

LAYERS = ["buffer", "segment", "block"]


def _settle(storage: Storage, layer: str) -> None:
    if layer in ("segment", "block"):
        storage.flush()
    if layer == "block":
        storage.compact_all()


@pytest.mark.parametrize("old_layer", LAYERS)
@pytest.mark.parametrize("new_layer", LAYERS)
def test_older_version_loses_in_every_layer(store, old_layer, new_layer):
    model = Model()
    points = walk(3000)  # enough for full blocks, not only a tail
    write(store, model, series_request("s", points, 1_000))
    _settle(store, old_layer)
    stale = [(t, -1.0) for t, _ in points[::7]]
    write(store, model, series_request("s", stale, 999))
    _settle(store, new_layer)
    got = store.read("s", 0, END, BIG)
    assert -1.0 not in got.val.tolist()
    assert set(got.ver.tolist()) == {1_000}
    check_read(store, model, "s")
    store.flush()
    store.compact_all()
    check_read(store, model, "s")
    check_layout(store)


@pytest.mark.parametrize("old_layer", LAYERS)
@pytest.mark.parametrize("new_layer", LAYERS)
def test_newer_version_wins_in_every_layer(store, old_layer, new_layer):
    model = Model()
    points = walk(3000)
    write(store, model, series_request("s", points, 1_000))
    _settle(store, old_layer)
    write(store, model, series_request("s", [(t, -1.0) for t, _ in points[::7]], 1_001))
    _settle(store, new_layer)
    got = store.read("s", 0, END, BIG)
    assert got.val.tolist().count(-1.0) == len(points[::7])
    check_read(store, model, "s")
    store.flush()
    store.compact_all()
    check_read(store, model, "s")


@pytest.mark.parametrize("old_layer", LAYERS)
@pytest.mark.parametrize("new_layer", LAYERS)
def test_equal_version_later_arrival_wins_in_every_layer(store, old_layer, new_layer):
    model = Model()
    points = walk(3000)
    write(store, model, series_request("s", points, 500))
    _settle(store, old_layer)
    write(store, model, series_request("s", [(t, -2.0) for t, _ in points[::5]], 500))
    _settle(store, new_layer)
    check_read(store, model, "s")
    assert store.read("s", 0, END, BIG).val.tolist().count(-2.0) == len(points[::5])
    store.flush()
    store.compact_all()
    check_read(store, model, "s")


def test_duplicates_inside_one_request_last_one_wins(store):
    store.write([request([("s", 5, 1.0), ("s", 5, 2.0), ("s", 6, 0.0), ("s", 5, 3.0)], 1)])
    assert lists(store.read("s", 0, END, BIG)) == ([5, 6], [3.0, 0.0], [1, 1])
    store.flush()
    assert lists(store.read("s", 0, END, BIG)) == ([5, 6], [3.0, 0.0], [1, 1])
    store.compact_all()
    assert lists(store.read("s", 0, END, BIG)) == ([5, 6], [3.0, 0.0], [1, 1])


# -- restarts --------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("stage", ["buffer", "segment", "block", "mixed"])
def test_reopen_keeps_every_point(path, clean, stage):
    storage = open_storage(path)
    model = Model()
    write(storage, model, series_request("a", walk(2500, 1), 10))
    if stage in ("segment", "block", "mixed"):
        storage.flush()
    if stage in ("block", "mixed"):
        storage.compact_all()
    if stage == "mixed":
        write(storage, model, series_request("a", walk(300, 2, t0=T0 + 5), 11))
        storage.flush()
        write(storage, model, series_request("b", walk(10, 3), 9),
              series_request("a", [(1, 1.0)], 12))
    storage.close(clean=clean)
    reopened = open_storage(path)
    for name in model.names():
        check_read(reopened, model, name)
    assert reopened.version_high == model.version_high
    assert reopened.list_series("", 100) == model.names()
    if clean:
        stats = reopened.stats()
        assert stats["buffer_points"] == 0 and stats["tails"] == 0  # tails moved into packs
    check_layout(reopened)
    reopened.close()


def test_unclean_close_replays_the_wal(path):
    storage = open_storage(path)
    model = Model()
    write(storage, model, series_request("s", walk(100), 1))
    storage.flush()
    write(storage, model, series_request("s", walk(50, 1, t0=T0 + 3), 2))
    write(storage, model, request([("s", T0, 7.0), ("t", 1, 1.0)], 3))
    storage.close(clean=False)
    reopened = open_storage(path)
    assert reopened.stats()["buffer_points"] == 52  # the two unflushed requests
    assert reopened.stats()["segments"] == 1
    check_read(reopened, model, "s")
    check_read(reopened, model, "t")
    assert reopened.version_high == 3
    # writes after the replay keep going, and the replayed points flush normally
    write(reopened, model, request([("t", 2, 2.0)], 4))
    reopened.flush()
    reopened.close(clean=False)
    again = open_storage(path)
    assert again.stats()["buffer_points"] == 0
    check_read(again, model, "s")
    check_read(again, model, "t")
    again.close()


def test_repeated_unclean_restarts_do_not_duplicate_or_lose(path):
    model = Model()
    for i in range(6):
        storage = open_storage(path)
        write(storage, model, series_request("s", walk(40, i, t0=T0 + i), 100 + i))
        if i % 2:
            storage.flush()
        storage.close(clean=False)
    storage = open_storage(path)
    check_read(storage, model, "s")
    assert storage.version_high == 105
    storage.close()


def test_version_high_survives_flush_and_restart(path):
    storage = open_storage(path)
    storage.write([request([("s", 1, 1.0)], 2**40)])
    storage.write([request([("s", 2, 1.0)], 5)])  # an older version does not lower it
    assert storage.version_high == 2**40
    storage.flush()
    storage.close(clean=False)
    reopened = open_storage(path)
    assert reopened.version_high == 2**40
    reopened.close()


# -- list_series -----------------------------------------------------------------------------


def test_list_series_prefix_and_limit(store):
    names = ["cpu.host1", "cpu.host2", "cpu", "cpux", "mem/host1", "disk:sda", "a", "ab", "b"]
    store.write([request([(n, 1, 1.0) for n in names], 1)])
    assert store.list_series("", 100) == sorted(names)
    assert store.list_series("cpu", 100) == ["cpu", "cpu.host1", "cpu.host2", "cpux"]
    assert store.list_series("cpu.", 100) == ["cpu.host1", "cpu.host2"]
    assert store.list_series("cpu", 2) == ["cpu", "cpu.host1"]
    assert store.list_series("a", 100) == ["a", "ab"]
    assert store.list_series("ab", 100) == ["ab"]
    assert store.list_series("abc", 100) == []
    assert store.list_series("zzz", 100) == []
    assert store.list_series("", 3) == sorted(names)[:3]
    assert store.list_series("", 1) == ["a"]


def test_list_series_on_an_empty_store(store):
    assert store.list_series("", 10) == []
    assert store.list_series("x", 10) == []


# -- points_max ------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS + ["mixed"])
def test_read_of_more_than_points_max_raises(store, layer):
    points = walk(4000)
    store.write([series_request("s", points, 1)])
    _settle(store, "block" if layer == "mixed" else layer)
    if layer == "mixed":
        store.write([series_request("s", walk(500, 1, t0=T0 + 4000 * 10_000), 2)])
        store.flush()
        store.write([series_request("s", walk(500, 2, t0=T0 + 4500 * 10_000), 3)])
    n = len(store.read("s", 0, END, BIG))
    assert n == (5000 if layer == "mixed" else 4000)
    assert len(store.read("s", 0, END, n)) == n
    with pytest.raises(BadRequest, match="more than"):
        store.read("s", 0, END, n - 1)
    with pytest.raises(BadRequest):
        store.read("s", 0, END, 1)


def test_small_range_inside_a_big_block_is_not_refused(store):
    points = walk(3000)
    store.write([series_request("s", points, 1)])
    store.flush()
    store.compact_all()
    start, end = points[1000][0], points[1010][0]
    assert len(store.read("s", start, end, BIG)) == 11
    assert len(store.read("s", start, end, 1000)) == 11  # 1000 = lowest MAX_QUERY_POINTS


# -- the random workload against the model ---------------------------------------------------

POOL = ["cpu.host1", "cpu.host2", "cpu", "mem/host1", "disk:sda", "a", "ab", "a_b-c"]


class Workload:
    """Random insert groups: in order, out of order, newer and older overwrites, duplicates."""

    def __init__(self, seed: int, model: Model) -> None:
        self.rnd = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.model = model
        self.version = 1_000_000
        self.next_ts = {name: T0 + self.rnd.randrange(0, 10**6) for name in POOL}
        self.level = {name: 100.0 for name in POOL}

    def _values(self, name: str, n: int) -> list[float]:
        style = self.rnd.random()
        if style < 0.5:  # two-decimal random walk, like a gauge
            steps = np.cumsum(self.np.normal(0, 1, n)) + self.level[name]
            self.level[name] = float(steps[-1])
            return np.round(steps, 2).tolist()
        if style < 0.8:  # full-precision noise: fills blocks quickly
            return (self.np.random(n) * 1e6 - 5e5).tolist()
        if style < 0.95:
            return [float(self.rnd.randrange(3))] * n
        return [self.rnd.choice([-0.0, 0.0, 5e-324, -1.7976931348623157e308]) for _ in range(n)]

    def _stamps(self, name: str) -> list[int]:
        existing = self.model.series.get(name)
        kind = self.rnd.random()
        if kind < 0.45 or not existing:  # in order, after everything so far
            n = self.rnd.randint(1, 300)
            step = self.rnd.choice([10_000, 1_000, 1])
            if self.rnd.random() < 0.3:
                stamps = (self.next_ts[name] + np.cumsum(self.np.integers(1, 3 * step + 1, n)))
                stamps = stamps.tolist()
            else:
                stamps = [self.next_ts[name] + i * step for i in range(n)]
            self.next_ts[name] = stamps[-1] + step
            return stamps
        if kind < 0.7:  # out of order: anywhere up to now, hitting old points or gaps
            n = self.rnd.randint(1, 80)
            hi = self.next_ts[name]
            return [self.rnd.randrange(max(0, hi - 3 * 10**6), hi) for _ in range(n)]
        stamps = self.rnd.sample(sorted(existing), min(len(existing), self.rnd.randint(1, 120)))
        if kind < 0.85:
            self.rnd.shuffle(stamps)
        else:  # with duplicates inside the request
            stamps = stamps + self.rnd.sample(stamps, len(stamps) // 2)
        return stamps

    def group(self) -> list:
        requests = []
        for _ in range(self.rnd.choice([1, 1, 1, 2, 3])):
            if self.rnd.random() < 0.25:
                version = self.rnd.randint(1, 40)  # older than anything fresh; often equal
            else:
                self.version += self.rnd.randint(1, 1000)
                version = self.version
            points = []
            for name in self.rnd.sample(POOL, self.rnd.choice([1, 1, 2, 3])):
                stamps = self._stamps(name)
                points += [(name, t, v) for t, v in zip(stamps, self._values(name, len(stamps)),
                                                       strict=True)]
            if self.rnd.random() < 0.3:
                self.rnd.shuffle(points)  # names interleaved in one request
            requests.append(request(points, version))
        return requests


def _verify_some(storage: Storage, model: Model, rnd: random.Random, context: str) -> None:
    for name in rnd.sample(model.names(), min(3, len(model.names()))):
        check_read(storage, model, name, context=context)
        stamps = sorted(model.series[name])
        a, b = sorted(rnd.sample(stamps, 2)) if len(stamps) > 1 else (stamps[0], stamps[0])
        check_read(storage, model, name, a, b, context=context)
        check_read(storage, model, name, a + 1, b - 1, context=context)
        n = len(stamps)
        assert len(storage.read(name, 0, END, n)) == n
        with pytest.raises(BadRequest):
            storage.read(name, 0, END, n - 1)
    assert len(storage.read("never.written", 0, END, BIG)) == 0
    if rnd.random() < 0.4:
        check_layout(storage)


def _verify_all(storage: Storage, model: Model, context: str) -> None:
    for name in model.names():
        check_read(storage, model, name, context=context)
    assert storage.list_series("", 100) == model.names()
    assert storage.version_high == model.version_high


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_the_model(path, seed, monkeypatch):
    # small compaction steps, so that writes, flushes and reads land between them
    monkeypatch.setattr(compaction, "SERIES_PER_STEP", 2)
    rnd = random.Random(1000 + seed)
    model = Model()
    work = Workload(seed, model)
    storage = open_storage(path, buffer_points=1000)
    for step in range(100):
        context = f"seed {seed} step {step}"
        op = rnd.random()
        if op < 0.55:
            write(storage, model, *work.group())
            if storage.flush_due():
                storage.flush()
        elif op < 0.65:
            storage.flush()
        elif op < 0.70:
            storage.compact_all()
            assert storage.stats()["segments"] == 0 and storage.compaction is None
            check_layout(storage)
        elif op < 0.80:
            if storage.compaction is None:
                if storage.compaction_due(idle=True):
                    storage.start_compaction()
            else:
                storage.compaction_step()
        elif op < 0.87 and model.names():
            _verify_some(storage, model, rnd, context)
        elif op < 0.90 and model.names():
            name = rnd.choice(model.names())
            stamp = storage.series_stamp(name)
            if rnd.random() < 0.3:  # written after the stamp was taken: not dropped
                write(storage, model, series_request(name, [(T0, 1.0)], 5))
                assert not storage.drop_series(name, stamp), context
            else:
                assert storage.drop_series(name, stamp), context
                model.drop(name)
                assert len(storage.read(name, 0, END, BIG)) == 0, context
        elif op < 0.93:
            prefix = rnd.choice(["", "a", "cpu", "cpu.", "m", "z"])
            limit = rnd.randint(1, 10)
            want = [n for n in model.names() if n.startswith(prefix)][:limit]
            assert storage.list_series(prefix, limit) == want, context
        elif op < 0.96:
            storage.close(clean=True)
            storage = open_storage(path)
            assert storage.stats()["tails"] == 0 and storage.stats()["buffer_points"] == 0
            _verify_all(storage, model, context + " after clean reopen")
        else:  # crash: whatever is in the buffer, the segments or a running compaction
            storage.close(clean=False)
            storage = open_storage(path)
            _verify_all(storage, model, context + " after unclean reopen")
    _verify_all(storage, model, f"seed {seed} end")
    storage.flush()
    storage.compact_all()
    check_layout(storage)
    for name in model.names():
        # after flush + compaction the blocks and tail alone hold exactly the model
        assert_columns(Columns(*stored_points(storage, name)), model.expected(name), name)
    storage.close(clean=True)
    storage = open_storage(path)
    _verify_all(storage, model, f"seed {seed} final reopen")
    check_layout(storage)
    storage.close()


def test_points_estimate_counts_every_layer_and_follows_writes(path):
    storage = open_storage(path, buffer_points=100)
    storage.write([request([("a", T0 + i, 1.0) for i in range(250)], 1)])
    storage.flush()
    storage.compact_all()
    storage.write([request([("b", T0 + i, 2.0) for i in range(30)], 2)])  # in the buffer
    assert storage.points_estimate() == 280
    storage.write([request([("c", T0, 3.0)], 3)])
    assert storage.points_estimate() == 281
    storage.close(clean=True)
    again = open_storage(path)
    assert again.points_estimate() == 281  # counted afresh from tails, packs and blocks
    again.close(clean=False)


def test_series_stamps_change_only_when_the_series_is_written(path):
    storage = open_storage(path)
    storage.write([request([("a", T0, 1.0), ("b", T0, 1.0)], 1)])
    a, b = storage.series_stamp("a"), storage.series_stamp("b")
    storage.write([request([("a", T0 + 1, 1.0)], 2)])
    assert storage.series_stamp("a") != a
    assert storage.series_stamp("b") == b
    assert storage.series_stamp("unknown") == 0
    assert storage.series_names_since(0) == ["a", "b"]
    storage.write([request([("c", T0, 1.0)], 3)])
    assert storage.series_names_since(2) == ["c"]
    storage.close(clean=False)
    again = open_storage(path)
    assert again.series_names_since(0) == ["a", "b", "c"]  # id order on reopen
    again.close(clean=False)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_dropped_series_is_gone_from_every_layer_and_stays_gone(path, layer):
    storage = open_storage(path, buffer_points=100_000)
    model = Model()
    write(storage, model, series_request("keep", walk(3000, 1), 10),
          series_request("gone", walk(3000, 2), 10))
    _settle(storage, layer)
    assert storage.drop_series("gone", storage.series_stamp("gone"))
    model.drop("gone")
    assert storage.list_series("", 10) == ["keep"]
    assert len(storage.read("gone", 0, END, BIG)) == 0
    check_read(storage, model, "keep")
    storage.flush()
    storage.compact_all()
    check_layout(storage)  # compaction folded none of its segment points back into blocks
    assert storage.points_estimate() == 3000  # nor are they counted once compacted away
    # a later write of the name is a new series with only the new points
    write(storage, model, series_request("gone", [(T0 + 5, 7.0)], 11))
    check_read(storage, model, "gone")
    for clean in (False, True):  # neither the WAL nor the segments bring the old points back
        storage.close(clean=clean)
        storage = open_storage(path)
        for name in ("keep", "gone"):
            check_read(storage, model, name, context=f"reopened (clean={clean})")
        storage.compact_all()
        check_layout(storage)
    storage.close()


def test_drop_refused_after_a_write_since_the_stamp(store):
    model = Model()
    write(store, model, series_request("s", walk(10), 1))
    stamp = store.series_stamp("s")
    write(store, model, series_request("s", [(T0 + 1, 2.0)], 2))
    assert not store.drop_series("s", stamp)
    check_read(store, model, "s")
    assert store.drop_series("never.written", 0)  # nothing held: nothing to keep
