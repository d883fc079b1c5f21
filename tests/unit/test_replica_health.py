"""What a replica says about its storage (LocalReplica.storage_problem): a failed write makes
it not writable until a write or a background write probe succeeds; failing flushes too."""

from __future__ import annotations

import errno
from pathlib import Path

import lmdb
import numpy as np
import pytest

from count.config import load_config
from count.replica import FLUSH_RETRY_S, LocalReplica
from count.storage.engine import Storage
from count.storage.writes import WriteRequest


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic_s(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return 1_700_000_000_000 + int(self.now * 1000)


class Disk:
    """Makes the WAL and LMDB commits of a storage fail as a full disk does."""

    def __init__(self, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        wal_append, wal_reserve = storage.wal.append, storage.wal.reserve
        environment_begin = storage.lmdb.env.begin

        def check() -> None:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")

        def append(payload: bytes) -> None:
            check()
            wal_append(payload)

        def reserve(nbytes: int) -> None:
            check()
            wal_reserve(nbytes)

        class FullEnvironment:
            def begin(inner, write: bool = False, **kwargs):  # noqa: N805
                if write and self.full:
                    raise lmdb.DiskError("mdb_txn_commit: No space left on device")
                return environment_begin(write=write, **kwargs)

        monkeypatch.setattr(storage.wal, "append", append)
        monkeypatch.setattr(storage.wal, "reserve", reserve)
        monkeypatch.setattr(storage.lmdb, "env", FullEnvironment())


def one_point(ts: int) -> list[WriteRequest]:
    return [WriteRequest(["s"], np.zeros(1, np.uint32), np.array([ts], np.int64),
                         np.array([1.0]), 1)]


@pytest.fixture
def replica(tmp_path: Path) -> LocalReplica:
    config = load_config({"DATA_DIR": str(tmp_path)})
    clock = FakeClock()
    storage = Storage(str(tmp_path), 1 << 20, 100, 300, monotonic=clock.monotonic_s)
    return LocalReplica(config, storage, clock)


def test_a_failed_write_makes_storage_not_writable_until_a_probe_succeeds(
        replica: LocalReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    assert replica.commit(one_point(1))[0] == 201
    assert replica.storage_problem() is None
    disk = Disk(replica.storage, monkeypatch)
    disk.full = True
    status, message = replica.commit(one_point(2))
    assert status == 507 and "disk full" in message
    problem = replica.storage_problem()
    assert problem is not None and problem.startswith("storage is not writable: the last write")
    assert replica.next_wakeup_s() == pytest.approx(FLUSH_RETRY_S)
    clock = replica.time
    assert isinstance(clock, FakeClock)
    clock.now += FLUSH_RETRY_S
    replica.maintain(idle=True)  # the probe fails: still not writable
    assert replica.storage_problem() is not None
    disk.full = False
    replica.maintain(idle=True)  # too early for the next probe
    assert replica.storage_problem() is not None
    clock.now += FLUSH_RETRY_S
    replica.maintain(idle=True)  # the probe succeeds, with no write from any client
    assert replica.storage_problem() is None
    assert replica.storage.read("s", 0, 10, 100).ts.tolist() == [1]  # the probe stored no point


def test_a_successful_write_clears_the_failure(replica: LocalReplica,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    disk = Disk(replica.storage, monkeypatch)
    disk.full = True
    assert replica.commit(one_point(1))[0] == 507
    disk.full = False
    assert replica.commit(one_point(2))[0] == 201
    assert replica.storage_problem() is None


def test_failing_flushes_are_a_storage_problem(replica: LocalReplica,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    replica.commit([WriteRequest(["s"], np.zeros(100, np.uint32), np.arange(100, dtype=np.int64),
                                 np.ones(100), 1)])
    assert replica.storage.flush_due()
    disk = Disk(replica.storage, monkeypatch)
    disk.full = True
    replica.maintain(idle=False)
    problem = replica.storage_problem()
    assert problem is not None and "flushing the memory buffer" in problem
    disk.full = False
    replica.time.now += FLUSH_RETRY_S  # type: ignore[attr-defined]
    replica.maintain(idle=False)
    assert replica.storage_problem() is None and replica.storage.flushes == 1
