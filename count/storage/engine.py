"""The storage engine of one node: LMDB environment, WAL, memory buffer, segments, blocks.

Write path: ``write`` appends one WAL record (``wal.py``, one fdatasync) for a whole group of
requests, then appends to the memory buffer. ``flush`` turns the buffer into one segment and
empties the WAL in one transaction. Compaction (``compaction.py``) folds segments into
compressed per-series blocks. A range read merges blocks, the series' tail, segments and
the buffer by last-write-wins.

LMDB databases (all keys big-endian):
  series      name -> sid u32           series_names  sid -> name (b"" once dropped)
  segments    seq u64 -> segment
  tails       sid -> block (newest, still filling)
  blocks      seq u64 -> full block     bindex        (sid, max_ts) -> (seq, min_ts, count)
  meta        b"version_high" -> u64, b"wal_generation" -> u64 (the last flushed),
              and named records of the cluster layer (``meta_get``/``meta_put``)
  hints       target address NUL series -> hint (``hint_records``/``update_hints``;
              their meaning is ``count/cluster/hints.py``'s)

The clock is an input (``monotonic``), so a simulation drives flush timing as it drives
everything else.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import lmdb
import numpy as np

from count.errors import DiskFull, RangeTooLarge
from count.storage import keys
from count.storage.buffer import MemoryBuffer
from count.storage.cache import BlockCache
from count.storage.codec import block_header, decode_block
from count.storage.compaction import Compaction
from count.storage.environment import DATABASES, Environment
from count.storage.merge import EMPTY, Columns, merge_sorted
from count.storage.segments import Segment, build_pack, build_segment
from count.storage.wal import WriteAheadLog, decode_points, encode_points
from count.storage.writes import WriteRequest

log = logging.getLogger("count.storage")

T = TypeVar("T")

# Compaction starts once this many segments wait, or when the node is idle. Each flush
# segment holds MEMORY_BUFFER_SIZE points: with the default that is 1.28 M points, so a
# burst of ingest is not slowed by compaction until then.
SEGMENTS_MAX = 128
# A tail pack written at a clean stop holds about this many bytes of tails.
PACK_BYTES_MAX = 1 << 20
# While flushes fail (a full disk), writes are refused (507) once the buffer holds this many
# times MEMORY_BUFFER_SIZE, so that memory stays bounded.
BUFFER_LIMIT_FACTOR = 4
# At a clean stop the file is rewritten without free pages when they are this share of it.
COMPACT_COPY_FREE_RATIO = 0.10
_COMPACT_DIR = "compact.tmp"
# The engine's own meta records; the layers above name theirs otherwise.
_ENGINE_META = (b"version_high", b"wal_generation", b"write_probe")
# A write probe checks that the WAL has room for a record this large (a 10,000-point batch
# is about 250 KiB in the WAL).
PROBE_WAL_BYTES = 256 << 10


def _meta_key(name: str) -> bytes:
    key = name.encode()
    assert key not in _ENGINE_META, name
    return key


class Storage:
    def __init__(
        self,
        path: str,
        map_size_bytes: int,
        buffer_points: int,
        flush_interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        os.makedirs(path, exist_ok=True)
        shutil.rmtree(os.path.join(path, _COMPACT_DIR), ignore_errors=True)
        self.path = path
        self.buffer_points = buffer_points
        self.flush_interval_s = flush_interval_s
        self.monotonic = monotonic
        self.lmdb = Environment(path, map_size_bytes)
        self.env = self.lmdb.env
        self.db = self.lmdb.db
        self.buffer = MemoryBuffer(buffer_points, monotonic)
        self.compaction: Compaction | None = None
        self.block_cache = BlockCache()
        self.flushes = 0
        self.flush_failing = False
        self._probes = 0
        self._sids: dict[str, int] = {}
        self._names: list[str] = []
        # Ids of dropped series: their ids are never reused, and points of theirs still in
        # the WAL, the buffer or segments are left out when compaction folds them.
        self._dropped: set[int] = set()
        # Per series id, the number of the last write() that touched it: lets anti-entropy
        # keep a series' digests until it changes. In memory only (a restart recomputes).
        self._stamps = np.zeros(1024, np.uint64)
        self._writes = 0
        self._points_held: int | None = None
        self._segment_keys: list[bytes] = []
        self._load()

    # -- startup ---------------------------------------------------------------------------

    def _load(self) -> None:
        with self.env.begin() as txn:
            for name, sid in txn.cursor(self.db["series"]):
                self._sids[name.decode()] = keys.unpack_u32(sid)
            self._names = sorted(self._sids, key=self._sids.__getitem__)
            self._dropped = {keys.unpack_u32(sid) for sid, name
                             in txn.cursor(self.db["series_names"]) if not name}
            last = self.lmdb.last_key(txn, "series_names")
            self._next_sid = keys.unpack_u32(last) + 1 if last else 1
            last = self.lmdb.last_key(txn, "blocks")
            self.next_block = keys.unpack_u64(last) + 1 if last else 1
            self._segment_keys = [bytes(k) for k in txn.cursor(self.db["segments"]).iternext(values=False)]
            last = self.lmdb.last_key(txn, "segments")
            self._next_segment = keys.unpack_u64(last) + 1 if last else 1
            high = txn.get(b"version_high", db=self.db["meta"])
            self.version_high = keys.unpack_u64(high) if high else 0
            flushed = txn.get(b"wal_generation", db=self.db["meta"])
        self.wal = WriteAheadLog(self.path, (keys.unpack_u64(flushed) if flushed else 0) + 1)
        replayed = 0
        for payload in self.wal.replay():
            sids, ts, val, ver = decode_points(payload)
            self.buffer.append(sids, ts, val, ver)
            self.version_high = max(self.version_high, int(ver.max()))
            replayed += len(ts)
        log.info(
            "Storage opened at %s: %d series, %d segments, %d points replayed from the WAL",
            self.path, len(self._sids), len(self._segment_keys), replayed,
        )

    def transact(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``body`` in one durable write transaction (``Environment.transact``)."""
        return self.lmdb.transact(body)

    # -- writes ----------------------------------------------------------------------------

    def write(self, requests: list[WriteRequest]) -> None:
        """Make a group of requests durable with one WAL append, then readable in the buffer.

        New series are committed to LMDB first, so a WAL record never names an unknown id.
        """
        if self.flush_failing and len(self.buffer) >= BUFFER_LIMIT_FACTOR * self.buffer_points:
            # Flushes are failing (the disk is full): stop taking writes before memory goes.
            raise DiskFull(f"disk full: the memory buffer holds {len(self.buffer)} points that "
                           "cannot be flushed")
        created: dict[str, int] = {}

        def create_series(txn: lmdb.Transaction) -> list[np.ndarray]:
            created.clear()
            next_sid = self._next_sid
            sid_parts = []
            for req in requests:
                local = np.empty(len(req.names), np.uint32)
                for i, name in enumerate(req.names):
                    sid = self._sids.get(name) or created.get(name)
                    if sid is None:
                        sid, next_sid = next_sid, next_sid + 1
                        created[name] = sid
                        txn.put(name.encode(), keys.sid_key(sid), db=self.db["series"])
                        txn.put(keys.sid_key(sid), name.encode(), db=self.db["series_names"],
                                append=True)
                    local[i] = sid
                sid_parts.append(local[req.idx])
            return sid_parts

        known = all(name in self._sids for req in requests for name in req.names)
        if known:
            sid_parts = [np.fromiter(map(self._sids.__getitem__, req.names), np.uint32,
                                     len(req.names))[req.idx] for req in requests]
        else:
            sid_parts = self.transact(create_series)
            self._sids.update(created)
            self._names.extend(created)  # in id order: ids were handed out in this order
            self._next_sid += len(created)
        sid = np.concatenate(sid_parts)
        ts = np.concatenate([r.ts for r in requests])
        val = np.concatenate([r.val for r in requests])
        ver = np.concatenate([r.versions() for r in requests])
        try:
            self.wal.append(encode_points(sid, ts, val, ver))
        except OSError as exc:
            log.error("Write failed: WAL append failed at %s (%s)", self.path, exc)
            raise DiskFull(f"disk full: no room to store the write under {self.path} "
                           f"({exc.strerror or exc})") from None
        self.buffer.append(sid, ts, val, ver)
        if self._points_held is not None:
            self._points_held += len(ts)
        self.version_high = max(self.version_high, int(ver.max()))
        self._writes += 1
        if self._next_sid > len(self._stamps):
            self._stamps = np.resize(self._stamps, max(self._next_sid, 2 * len(self._stamps)))
        self._stamps[sid] = self._writes

    def probe_writable(self) -> None:
        """Check that a write could be stored now, storing nothing a read sees: room for a
        WAL record and one durable LMDB commit (of a probe counter). DiskFull if not.

        Used after a write failed, so that a node that refused a write (and then gets
        none, e.g. because a load balancer took it out) learns when the disk has room again.
        """
        try:
            self.wal.reserve(PROBE_WAL_BYTES)
        except OSError as exc:
            raise DiskFull(f"disk full: no room for the write-ahead log under {self.path} "
                           f"({exc.strerror or exc})") from None
        self._probes += 1
        probe = keys.seq_key(self._probes)
        self.transact(lambda txn: txn.put(b"write_probe", probe, db=self.db["meta"]))

    def flush_due(self) -> bool:
        if len(self.buffer) >= self.buffer_points:
            return True
        oldest = self.buffer.oldest_monotonic
        return oldest is not None and self.monotonic() - oldest >= self.flush_interval_s

    def seconds_to_flush(self) -> float | None:
        oldest = self.buffer.oldest_monotonic
        if oldest is None:
            return None
        return max(0.0, oldest + self.flush_interval_s - self.monotonic())

    def flush(self) -> None:
        """Move the memory buffer into one segment, then start the WAL's next generation."""
        if not len(self.buffer):
            return
        started = time.perf_counter()
        segment = build_segment(*self.buffer.contents())
        key = keys.seq_key(self._next_segment)
        high = keys.seq_key(self.version_high)
        generation = keys.seq_key(self.wal.generation)

        def body(txn: lmdb.Transaction) -> None:
            txn.put(key, segment, db=self.db["segments"], append=True)
            txn.put(b"wal_generation", generation, db=self.db["meta"])
            txn.put(b"version_high", high, db=self.db["meta"])

        try:
            self.transact(body)
        except DiskFull:
            self.flush_failing = True
            raise
        self.flush_failing = False
        self.wal.restart(self.wal.generation + 1)
        points = len(self.buffer)
        self.buffer.clear()
        self._segment_keys.append(key)
        self._next_segment += 1
        self.flushes += 1
        log.debug("Flushed %d points into segment %d in %.1f ms", points,
                  self._next_segment - 1, (time.perf_counter() - started) * 1000)

    def drop_series(self, name: str, stamp: int) -> bool:
        """Delete every point of a series, unless it was written since ``series_stamp``
        gave ``stamp``; True if it was dropped (or held nothing).

        For cleanup: the cluster layer drops a series this node does not replicate once its
        replicas have acknowledged these points; a write in between (this node became a
        stand-in again) keeps it. One durable transaction deletes the name, its blocks and
        its tail; its id stays reserved (``series_names`` maps it to b""), so points of it
        still in the WAL, the buffer or segments are never read again and compaction drops
        them. A later write of the name creates a new series.
        """
        sid = self._sids.get(name)
        if sid is None:
            return True
        if self.series_stamp(name) != stamp:
            return False
        prefix = keys.sid_key(sid)
        freed: list[int] = []

        def body(txn: lmdb.Transaction) -> None:
            freed.clear()
            txn.delete(name.encode(), db=self.db["series"])
            txn.put(prefix, b"", db=self.db["series_names"])
            txn.delete(prefix, db=self.db["tails"])
            cur = txn.cursor(self.db["bindex"])
            doomed = []
            if cur.set_range(prefix):
                for key, value in cur:
                    if bytes(key[:4]) != prefix:
                        break
                    doomed.append(bytes(key))
                    freed.append(keys.unpack_index_value(value)[0])
            for key in doomed:
                txn.delete(key, db=self.db["bindex"])
            for seq in freed:
                txn.delete(keys.seq_key(seq), db=self.db["blocks"])

        self.transact(body)
        del self._sids[name]
        self._dropped.add(sid)
        self._points_held = None  # counted again when next asked
        return True

    # -- compaction ------------------------------------------------------------------------

    def compaction_due(self, idle: bool) -> bool:
        """Whether to start compacting: many segments wait, or the node is idle."""
        if self.compaction is not None or not self._segment_keys:
            return False
        return idle or len(self._segment_keys) >= SEGMENTS_MAX

    def segment_count(self) -> int:
        return len(self._segment_keys)

    def start_compaction(self) -> None:
        self.compaction = Compaction(self.lmdb, list(self._segment_keys), self._dropped)

    def compaction_step(self) -> None:
        """One bounded step of the running compaction; finishing it drops its segments."""
        assert self.compaction is not None
        finished, self.next_block = self.compaction.step(self.next_block)
        if finished:
            done = set(self.compaction.segment_keys)
            self._segment_keys = [k for k in self._segment_keys if k not in done]
            if self.compaction.points_dropped:
                self._points_held = None  # counted again when next asked
            self.compaction = None

    def compact_all(self) -> None:
        """Fold every segment into blocks now (clean stop)."""
        while self._segment_keys or self.compaction is not None:
            if self.compaction is None:
                self.start_compaction()
            self.compaction_step()

    # -- reads -----------------------------------------------------------------------------

    def sid(self, name: str) -> int | None:
        return self._sids.get(name)

    def segments(self, txn: lmdb.Transaction) -> Iterator[Segment]:
        for key in self._segment_keys:
            data = txn.get(key, db=self.db["segments"])
            if data is not None:
                yield Segment(data)

    def _block(self, txn: lmdb.Transaction, seq: int) -> Columns:
        """A full block, decoded, from the cache when it is there."""
        cols = self.block_cache.get(seq)
        if cols is None:
            data = txn.get(keys.seq_key(seq), db=self.db["blocks"])
            assert data is not None, "the block index names a block that is not stored"
            cols = Columns(*decode_block(data))
            self.block_cache.put(seq, cols)
        return cols

    def read(self, name: str, start: int, end: int, points_max: int) -> Columns:
        """Every point of a series in [start, end], sorted, last write winning."""
        sid = self._sids.get(name)
        if sid is None:
            return EMPTY
        parts: list[Columns] = []
        total = 0
        with self.env.begin(buffers=True) as txn:
            prefix = keys.sid_key(sid)
            cur = txn.cursor(self.db["bindex"])
            if cur.set_range(keys.index_key(sid, start)):
                for key, value in cur:
                    if bytes(key[:4]) != prefix:
                        break
                    seq, min_ts, count = keys.unpack_index_value(value)
                    if min_ts > end:
                        break
                    if min_ts >= start and keys.unpack_index_key(key)[1] <= end:
                        total += count  # only blocks wholly inside: a lower bound
                    if total > points_max:
                        raise RangeTooLarge(points_max)
                    parts.append(self._block(txn, seq).between(start, end))
            tail = txn.get(prefix, db=self.db["tails"])
            if tail is not None:
                header = block_header(tail)
                if header.max_ts >= start and header.min_ts <= end:
                    parts.append(Columns(*decode_block(tail)).between(start, end))
            for segment in self.segments(txn):
                found = segment.series(sid, start, end)
                if found is not None:
                    parts.append(found)
        parts.append(self.buffer.series(sid, start, end))
        merged = merge_sorted(parts)
        if len(merged) > points_max:
            raise RangeTooLarge(points_max)
        return merged

    def series_stamp(self, name: str) -> int:
        """Changes whenever the series is written (0 for a series not written since open)."""
        sid = self._sids.get(name)
        return 0 if sid is None or sid >= len(self._stamps) else int(self._stamps[sid])

    def series_names_since(self, count: int) -> list[str]:
        """Series names in the order they were created, from the ``count``-th on: callers
        that keep a per-series table extend it with only the new ones."""
        return self._names[count:]

    def points_estimate(self) -> int:
        """Points held, overwrites included: counted from the index once, then kept up to
        date by every write, so a heartbeat never scans the database."""
        if self._points_held is None:
            total = len(self.buffer)
            with self.env.begin(buffers=True) as txn:
                for value in txn.cursor(self.db["bindex"]).iternext(keys=False):
                    total += keys.unpack_index_value(value)[2]
                for value in txn.cursor(self.db["tails"]).iternext(keys=False):
                    total += block_header(value).count
                total += sum(segment.point_count() for segment in self.segments(txn))
            self._points_held = total
        return self._points_held

    def list_series(self, prefix: str, limit: int) -> list[str]:
        """Series names starting with ``prefix``, sorted, at most ``limit``."""
        wanted = prefix.encode()
        names: list[str] = []
        with self.env.begin() as txn:
            cur = txn.cursor(self.db["series"])
            if not cur.set_range(wanted):
                return names
            for key in cur.iternext(values=False):
                if not key.startswith(wanted) or len(names) >= limit:
                    break
                names.append(key.decode())
        return names

    def stats(self) -> dict[str, Any]:
        with self.env.begin() as txn:
            blocks = txn.stat(self.db["blocks"])["entries"]
            tails = txn.stat(self.db["tails"])["entries"]
        return {
            "series": len(self._sids),
            "buffer_points": len(self.buffer),
            "segments": len(self._segment_keys),
            "blocks": blocks,
            "tails": tails,
            "flushes": self.flushes,
            "commits": self.lmdb.commits,
            "block_cache_hits": self.block_cache.hits,
            "block_cache_misses": self.block_cache.misses,
            "wal_appends": self.wal.appends,
            "compacting": self.compaction is not None,
            "map_size_bytes": self.lmdb.map_size_bytes(),
            "file_bytes": self.file_bytes(),
        }

    def file_bytes(self) -> int:
        return self.lmdb.file_bytes()

    # -- records of the cluster layer ------------------------------------------------------

    def meta_get(self, name: str) -> bytes | None:
        """A named record of the layers above (e.g. the members' ids); None if absent."""
        with self.env.begin() as txn:
            value = txn.get(_meta_key(name), db=self.db["meta"])
        return None if value is None else bytes(value)

    def meta_put(self, name: str, value: bytes) -> None:
        """Store a named record durably (DiskFull if there is no room)."""
        key = _meta_key(name)

        def body(txn: lmdb.Transaction) -> None:
            txn.put(key, value, db=self.db["meta"])

        self.transact(body)

    def hint_records(self) -> list[tuple[bytes, bytes]]:
        """Every stored hint record (key, value), in key order."""
        with self.env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(self.db["hints"])]

    def update_hints(self, put: dict[bytes, bytes], delete: list[bytes]) -> None:
        """Store and delete hint records in one durable transaction."""
        def body(txn: lmdb.Transaction) -> None:
            for key, value in put.items():
                txn.put(key, value, db=self.db["hints"])
            for key in delete:
                txn.delete(key, db=self.db["hints"])

        self.transact(body)

    # -- shutdown --------------------------------------------------------------------------

    def _repack(self, name: str) -> None:
        """Rewrite a database in key order with MDB_APPEND so that its leaf pages are full.

        Random inserts leave B-tree leaves about half full; the block index is small next
        to the blocks, so rewriting it at a clean stop is cheap.
        """
        with self.env.begin() as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(self.db[name])]

        def body(txn: lmdb.Transaction) -> None:
            txn.drop(self.db[name], delete=False)
            txn.cursor(self.db[name]).putmulti(items, append=True)

        self.transact(body)

    def _pack_tails(self) -> None:
        """Move every tail into tail packs (segments of compressed blocks) that fill pages."""
        with self.env.begin() as txn:
            items = [(keys.unpack_u32(k), bytes(v)) for k, v in txn.cursor(self.db["tails"])]
        packs: list[bytes] = []
        start = 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and size < PACK_BYTES_MAX:
                size += len(items[end][1])
                end += 1
            packs.append(build_pack(items[start:end]))
            start = end
        first = self._next_segment

        def body(txn: lmdb.Transaction) -> None:
            for i, pack in enumerate(packs):
                txn.put(keys.seq_key(first + i), pack, db=self.db["segments"], append=True)
            txn.drop(self.db["tails"], delete=False)

        self.transact(body)
        self._segment_keys.extend(keys.seq_key(first + i) for i in range(len(packs)))
        self._next_segment += len(packs)

    def _free_ratio(self) -> float:
        with self.env.begin() as txn:
            used = 2 + sum(
                s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
                for s in [txn.stat()] + [txn.stat(self.db[name]) for name in DATABASES]
            )
        info = self.env.info()
        total = info["last_pgno"] + 1
        return max(0.0, (total - used) / total)

    def _compact_copy(self) -> None:
        """Rewrite data.mdb without its free pages (atomic rename over the old file)."""
        target = os.path.join(self.path, _COMPACT_DIR)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        self.env.copy(target, compact=True)
        self.env.close()
        fd = os.open(os.path.join(target, "data.mdb"), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(os.path.join(target, "data.mdb"), os.path.join(self.path, "data.mdb"))
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        shutil.rmtree(target, ignore_errors=True)

    def close(self, clean: bool = True) -> None:
        """Stop: on a clean stop flush, compact, and shrink the files; then close them."""
        if not clean:
            self.wal.close(truncate=False)
            self.env.close()
            return
        self.flush()
        self.wal.close(truncate=True)
        self.compact_all()
        self._pack_tails()
        self._repack("bindex")
        ratio = self._free_ratio()
        if ratio < COMPACT_COPY_FREE_RATIO:
            self.env.close()
            return
        before = self.file_bytes()
        self._compact_copy()
        log.info("Storage file compacted from %d to %d bytes (%.0f%% was free)", before,
                 os.path.getsize(os.path.join(self.path, "data.mdb")), ratio * 100)
