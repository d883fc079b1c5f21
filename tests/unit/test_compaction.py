"""Unit tests for count.storage.compaction through Storage on a real LMDB environment.

After every compaction the on-disk layout must keep its invariants (full blocks sorted and
non-overlapping, tail newer than every block) and reads must match the reference model,
including while a compaction is only partly done and after a crash in the middle of one.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from count.storage import compaction, keys
from count.storage.blocks import cut_blocks
from count.storage.engine import SEGMENTS_MAX
from count.storage.merge import Columns
from tests.unit.storage_model import (
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
STEP = 10_000


def walk(n: int, seed: int = 0, t0: int = T0, step: int = STEP):
    rng = np.random.default_rng(seed)
    values = np.round(np.cumsum(rng.normal(0, 1, n)) + 100, 2)
    return [(t0 + i * step, float(v)) for i, v in enumerate(values)]


def noise(n: int, seed: int = 0, t0: int = T0, step: int = STEP):
    rng = np.random.default_rng(seed)
    return [(t0 + i * step, float(v)) for i, v in enumerate(rng.random(n) * 1e6)]


def put(storage, model, name, points, version):
    req = request([(name, t, v) for t, v in points], version)
    storage.write([req])
    model.write([req])


def settle(storage):
    storage.flush()
    storage.compact_all()
    assert storage.compaction is None and storage.stats()["segments"] == 0


def check_all(storage, model, context=""):
    check_layout(storage)
    for name in model.names():
        check_read(storage, model, name, context=context)


def check_stored(storage, model):
    """After flush + compaction, blocks and tails alone hold exactly the model."""
    for name in model.names():
        assert_columns(Columns(*stored_points(storage, name)), model.expected(name), name)


def block_count(storage, name):
    return len(check_layout(storage).get(storage.sid(name), []))


def has_tail(storage, name):
    with storage.env.begin() as txn:
        return txn.get(keys.sid_key(storage.sid(name)), db=storage.db["tails"]) is not None


@pytest.fixture
def store(tmp_path):
    storage = open_storage(tmp_path / "db")
    yield storage
    try:
        storage.env.close()
    except Exception:
        pass


# -- when to compact -------------------------------------------------------------------------


def test_compaction_due(store):
    assert store.compaction_due(idle=True) is False  # nothing to compact
    store.write([request([("s", 1, 1.0)], 1)])
    assert store.compaction_due(idle=True) is False  # the buffer is not a segment yet
    store.flush()
    assert store.compaction_due(idle=True) is True
    assert store.compaction_due(idle=False) is False
    store.start_compaction()
    assert store.compaction_due(idle=True) is False  # one is already running
    store.compact_all()
    assert store.compaction_due(idle=True) is False


def test_compaction_due_when_many_segments_wait(store):
    for i in range(SEGMENTS_MAX):
        assert store.compaction_due(idle=False) is False
        store.write([request([("s", i, float(i))], i + 1)])
        store.flush()
    assert store.compaction_due(idle=False) is True


def test_compaction_of_nothing_is_harmless(store):
    store.compact_all()
    store.start_compaction()
    store.compaction_step()
    assert store.compaction is None
    check_layout(store)


# -- the layout after compaction -------------------------------------------------------------


def test_first_compaction_cuts_full_blocks_and_a_tail(store):
    model = Model()
    put(store, model, "s", walk(30000), 1)
    settle(store)
    assert block_count(store, "s") >= 3
    assert has_tail(store, "s")
    check_all(store, model)
    check_stored(store, model)
    assert store.stats()["blocks"] == block_count(store, "s")


def test_small_series_live_in_their_tail(store):
    model = Model()
    for i in range(5):
        put(store, model, f"s{i}", walk(10 + i, i), 1)
    settle(store)
    assert store.stats()["blocks"] == 0 and store.stats()["tails"] == 5
    check_all(store, model)
    check_stored(store, model)


def test_appends_grow_the_tail_into_blocks(store):
    model = Model()
    points = noise(12000)
    for lo in range(0, 12000, 600):
        put(store, model, "s", points[lo:lo + 600], 1 + lo)
        settle(store)
        check_all(store, model)
        check_stored(store, model)
    assert block_count(store, "s") >= 10


@pytest.mark.parametrize("where", ["before", "gap", "inside", "tail_boundary", "in_tail",
                                   "after", "everywhere"])
def test_late_points_are_folded_in_place(store, where):
    model = Model()
    first = noise(8000, 0, t0=T0)
    second = noise(8000, 1, t0=T0 + 10**8)  # leaves a gap between the two runs
    put(store, model, "s", first, 10)
    settle(store)
    put(store, model, "s", second, 11)
    settle(store)
    ranges = check_layout(store)[store.sid("s")]
    assert len(ranges) >= 4
    gap_lo = first[-1][0]
    mid = ranges[1]
    late = {
        "before": [(T0 - 50_000 + i, 1.5) for i in range(0, 50_000, 1000)],
        "gap": [(gap_lo + 1 + i * 997, 2.5) for i in range(100)],
        "inside": [(mid[0] + 5, 3.5), ((mid[0] + mid[1]) // 2 + 1, 3.5), (mid[1] - 3, 3.5)],
        "tail_boundary": [(second[-5][0] - 1, 4.5), (second[-1][0] + 1, 4.5)],
        "in_tail": [(second[-3][0] + 7, 5.5)],
        "after": [(second[-1][0] + STEP * (i + 1), 6.5) for i in range(50)],
        "everywhere": [(t + 3, 7.5) for t, _ in (first + second)[::37]],
    }[where]
    put(store, model, "s", late, 12)
    check_all(store, model, where)  # before compaction: segments + blocks
    settle(store)
    check_all(store, model, where)
    check_stored(store, model)
    # overwriting existing points: older versions lose, newer win
    put(store, model, "s", [(t, -1.0) for t, _ in first[::50]], 5)
    put(store, model, "s", [(t, -2.0) for t, _ in second[::50]], 50)
    settle(store)
    check_all(store, model, where)
    check_stored(store, model)


def _exactly_filled(n_max: int, seed: int):
    """A prefix of a random walk that cut_blocks splits into full blocks with no remainder."""
    pts = walk(n_max, seed)
    cols = Columns(np.array([p[0] for p in pts], np.int64), np.array([p[1] for p in pts]),
                   np.ones(len(pts), np.uint64))
    blocks, _, _ = cut_blocks(cols)
    total = 0
    for block in blocks:
        total += block.count
        prefix = Columns(cols.ts[:total], cols.val[:total], cols.ver[:total])
        if len(cut_blocks(prefix)[1]) == 0:
            return pts[:total]
    return None


def test_series_with_blocks_and_no_tail(store):
    model = Model()
    points = None
    for seed in range(4, 12):
        points = _exactly_filled(20_000, seed)
        if points:
            break
    assert points, "no exactly filled prefix found"
    put(store, model, "s", points, 1)
    settle(store)
    assert not has_tail(store, "s") and block_count(store, "s") >= 1
    check_all(store, model)
    # points between and inside blocks (no tail to fold into) and then after them
    put(store, model, "s", [(t + 1, 9.0) for t, _ in points[::101]], 2)
    settle(store)
    check_all(store, model)
    check_stored(store, model)
    put(store, model, "s", [(points[-1][0] + STEP * (i + 1), 8.0) for i in range(10)], 3)
    settle(store)
    check_all(store, model)
    check_stored(store, model)
    assert has_tail(store, "s")


def test_many_series_in_steps_with_reads_between(store, monkeypatch):
    monkeypatch.setattr(compaction, "SERIES_PER_STEP", 7)
    model = Model()
    names = [f"host{i:03d}.cpu" for i in range(40)]
    for round_ in range(3):
        for i, name in enumerate(names):
            put(store, model, name, noise(60, i, t0=T0 + round_ * 600_000), round_ + 1)
        store.flush()
    store.start_compaction()
    steps = 0
    while store.compaction is not None:
        store.compaction_step()
        steps += 1
        check_all(store, model, f"after step {steps}")
    assert steps >= 40 // 7
    assert store.stats()["segments"] == 0
    check_stored(store, model)


def test_writes_and_flushes_between_compaction_steps(store, monkeypatch):
    monkeypatch.setattr(compaction, "SERIES_PER_STEP", 1)
    model = Model()
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        put(store, model, name, noise(900, i), 100)
    store.flush()
    store.start_compaction()
    version = 100
    while store.compaction is not None:
        store.compaction_step()
        for i, name in enumerate(names):
            version += 1
            old = model.expected(name)[0].tolist()
            # overwrite series already folded and those not folded yet: newer, equal, older
            put(store, model, name, [(t, float(version)) for t in old[i::97]], version)
            put(store, model, name, [(t, -float(version)) for t in old[i + 1::89]], 100)
            put(store, model, name, [(t, 0.5) for t in old[i + 2::83]], 99)
        store.flush()
        check_all(store, model)
    settle(store)
    check_all(store, model)
    check_stored(store, model)


def test_crash_in_the_middle_of_a_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "SERIES_PER_STEP", 2)
    path = tmp_path / "db"
    storage = open_storage(path)
    model = Model()
    names = [f"s{i}" for i in range(7)]
    for i, name in enumerate(names):
        put(storage, model, name, noise(700, i), 7)
    storage.flush()
    for i, name in enumerate(names):
        put(storage, model, name, [(t, 1.0) for t, _ in noise(700, i)[::3]], 7)  # equal version
    storage.flush()
    storage.start_compaction()
    storage.compaction_step()
    storage.compaction_step()  # four series folded, three not, no segment deleted yet
    put(storage, model, "s0", [(T0 + 1, 3.0)], 8)
    storage.close(clean=False)

    storage = open_storage(path)
    assert storage.stats()["segments"] == 2  # the crash lost no segment
    check_all(storage, model, "after crash")  # points in both segments and blocks
    settle(storage)
    check_all(storage, model, "after redone compaction")
    check_stored(storage, model)
    storage.close()


# -- a small stateful model, so that a failure shrinks to a short story ----------------------


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="count-unit-")
        self.path = f"{self.dir}/db"
        self.storage = open_storage(self.path, buffer_points=200)
        self.model = Model()
        self.version = 1000

    @rule(
        name=st.sampled_from(["a", "b", "c"]),
        start=st.integers(0, 400),
        count=st.integers(1, 250),
        stride=st.sampled_from([1, 2, 7]),
        older=st.booleans(),
        value=st.floats(-1e6, 1e6, allow_nan=False),
        noisy=st.booleans(),
    )
    def write(self, name, start, count, stride, older, value, noisy):
        if older:
            version = 500  # older than every fresh version; equal to other older writes
        else:
            self.version += 1
            version = self.version
        stamps = range(T0 + start * STEP, T0 + (start + count * stride) * STEP, stride * STEP)
        values = np.random.default_rng(self.version + start).random(count) * 1e6 if noisy \
            else np.full(count, value)
        put(self.storage, self.model, name, list(zip(stamps, values.tolist(), strict=True)),
            version)

    @rule()
    def flush(self):
        self.storage.flush()

    @rule()
    def compact_step(self):
        if self.storage.compaction is None:
            if self.storage.compaction_due(idle=True):
                self.storage.start_compaction()
        else:
            self.storage.compaction_step()

    @rule()
    def compact_all(self):
        self.storage.compact_all()

    @rule(clean=st.booleans())
    def reopen(self, clean):
        self.storage.close(clean=clean)
        self.storage = open_storage(self.path, buffer_points=200)

    @precondition(lambda self: self.model.names())
    @rule(data=st.data())
    def read_range(self, data):
        name = data.draw(st.sampled_from(self.model.names()))
        a = T0 + data.draw(st.integers(-5, 2000)) * STEP
        b = a + data.draw(st.integers(0, 600)) * STEP
        check_read(self.storage, self.model, name, a, b)

    @invariant()
    def layout_and_reads(self):
        check_layout(self.storage)
        for name in self.model.names():
            check_read(self.storage, self.model, name)

    def teardown(self):
        try:
            self.storage.close(clean=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


StorageMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStorageMachine = StorageMachine.TestCase


def test_read_end_defaults_cover_everything(store):
    store.write([request([("s", 0, 1.0), ("s", END, 2.0)], 1)])
    settle(store)
    assert store.read("s", 0, END, 10).ts.tolist() == [0, END]
