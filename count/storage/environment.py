"""The LMDB environment of one node: its named databases and durable write transactions.

Only ``count/storage/`` opens transactions. ``transact`` is the one way to change the
environment: it grows the map (doubling) when a transaction does not fit, and turns a full
disk into ``DiskFull`` with nothing changed, so the engine, compaction, hints and meta all
commit the same way.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import lmdb

from count.errors import DiskFull

log = logging.getLogger("count.storage")

T = TypeVar("T")

DATABASES = ("series", "series_names", "segments", "tails", "blocks", "bindex", "meta", "hints")
# A map that cannot grow this many times in a row means the disk is the limit.
MAP_GROWTH_TRIES_MAX = 12
MAP_SIZE_MAX_BYTES = 1 << 44


def is_disk_full(exc: lmdb.Error) -> bool:
    """ENOSPC, or EIO: a full tmpfs or thin volume fails LMDB's page writes short."""
    text = str(exc)
    return (isinstance(exc, lmdb.DiskError) or "No space left" in text
            or "Input/output error" in text
            or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EIO))


class Environment:
    """An open LMDB environment with Count's databases (``db[name]``)."""

    def __init__(self, path: str, map_size_bytes: int) -> None:
        self.path = path
        self.env = lmdb.open(
            path, map_size=map_size_bytes, max_dbs=len(DATABASES), readahead=False,
            max_readers=64, sync=True, metasync=True,
        )
        if self.env.info()["map_size"] < map_size_bytes:
            self.env.set_mapsize(map_size_bytes)
        self.db = {name: self.env.open_db(name.encode()) for name in DATABASES}
        self.commits = 0

    def begin(self, buffers: bool = False) -> lmdb.Transaction:
        """A read-only transaction (``buffers``: values as memoryviews valid inside it)."""
        txn: lmdb.Transaction = self.env.begin(buffers=buffers)  # type: ignore[call-overload]
        return txn

    def transact(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``body`` in one write transaction and commit it durably.

        The map doubles and the body is retried when the map is full; a full disk raises
        DiskFull with nothing changed. ``body`` must be safe to run again.
        """
        for _ in range(MAP_GROWTH_TRIES_MAX):
            try:
                with self.env.begin(write=True) as txn:
                    result = body(txn)
                self.commits += 1
                return result
            except lmdb.MapFullError:
                self._grow_map()
            except lmdb.Error as exc:
                if is_disk_full(exc):
                    log.error("Write failed: disk full at %s (%s)", self.path, exc)
                    raise DiskFull(f"disk full: no room to store the write under {self.path} "
                                   f"({exc})") from None
                raise
        raise DiskFull("disk full: the LMDB map could not grow enough for this write")

    def _grow_map(self) -> None:
        size = self.env.info()["map_size"]
        if size >= MAP_SIZE_MAX_BYTES:
            raise DiskFull("disk full: the LMDB map reached its largest size")
        self.env.set_mapsize(min(size * 2, MAP_SIZE_MAX_BYTES))
        log.info("LMDB map grown from %d to %d MiB", size >> 20, self.env.info()["map_size"] >> 20)

    def last_key(self, txn: lmdb.Transaction, db: str) -> bytes | None:
        cur = txn.cursor(self.db[db])
        return bytes(cur.key()) if cur.last() else None

    def map_size_bytes(self) -> int:
        return int(self.env.info()["map_size"])

    def file_bytes(self) -> int:
        return os.path.getsize(os.path.join(self.path, "data.mdb"))
