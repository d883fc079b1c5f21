"""The node process's request handling: turns broker requests into storage operations.

It is the coordinator of writes on this node: it assigns each insert its write version and
makes a whole drained group of inserts durable with one WAL append (group commit), then answers
reads. Errors become (status, message) replies; nothing a client sends can raise out of here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from count.broker.protocol import Request
from count.config import Config
from count.errors import BadRequest, CountError
from count.storage.aggregate import AGGREGATIONS, aggregate, aggregate_buckets
from count.storage.engine import SEGMENTS_MAX, Storage, WriteRequest
from count.storage.versions import VersionClock, node_tag

log = logging.getLogger("count.coordinator")

# How long after failed background work (disk full) the next attempt waits.
FLUSH_RETRY_S = 1.0
SERIES_LIMIT_MAX = 100_000

Result = tuple[int, Any]


def _array(args: dict[str, Any], key: str, dtype: type) -> np.ndarray:
    raw = args.get(key)
    if not isinstance(raw, bytes) or len(raw) % np.dtype(dtype).itemsize:
        raise BadRequest(f"malformed insert: {key}")
    return np.frombuffer(raw, dtype)


def _int_arg(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int):
        raise BadRequest(f"malformed request: {key} must be an integer")
    return value


def decode_insert(args: dict[str, Any], version: int) -> WriteRequest:
    """Check an insert's columns (the worker validated the values) and wrap them."""
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadRequest("malformed insert: names")
    idx = _array(args, "idx", np.uint32)
    ts = _array(args, "ts", np.int64)
    val = _array(args, "val", np.float64)
    if not len(ts) == len(val) == len(idx) or not len(ts):
        raise BadRequest("malformed insert: column lengths differ")
    if int(idx.max()) >= len(names):
        raise BadRequest("malformed insert: series index out of range")
    return WriteRequest(names, idx, ts, val, version)


class Coordinator:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.clock = VersionClock(node_tag(config.node_id))
        self.clock.observe(storage.version_high)
        self._flush_blocked_until = 0.0
        self.inserts = 0
        self.points_written = 0
        self._reads: dict[str, Callable[[dict[str, Any]], Result]] = {
            "range": self._range,
            "aggregate": self._aggregate,
            "series": self._series,
            "health": self._health,
            "stats": self._stats,
        }

    def handle(self, requests: list[Request]) -> list[Result]:
        """Answer a drained group of requests, in order; all inserts share one commit."""
        results: list[Result | None] = [None] * len(requests)
        writes: list[tuple[int, WriteRequest]] = []
        for i, req in enumerate(requests):
            if req.op == "insert":
                try:
                    writes.append((i, decode_insert(req.args, self.clock.next())))
                except CountError as exc:
                    results[i] = (exc.status, str(exc))
        if writes:
            try:
                self.storage.write([w for _, w in writes])
                for i, w in writes:
                    results[i] = (201, {"inserted": len(w.ts)})
                self.inserts += len(writes)
                self.points_written += sum(len(w.ts) for _, w in writes)
            except CountError as exc:
                for i, _ in writes:
                    results[i] = (exc.status, str(exc))
            except Exception:
                log.exception("Write of %d requests failed", len(writes))
                for i, _ in writes:
                    results[i] = (500, "internal error while writing; see the node's log")
        for i, req in enumerate(requests):
            if results[i] is None:
                results[i] = self._read(req)
        return results  # type: ignore[return-value]

    def _read(self, req: Request) -> Result:
        handler = self._reads.get(req.op)
        if handler is None:
            return 400, f"unknown operation {req.op!r}"
        try:
            return handler(req.args)
        except CountError as exc:
            return exc.status, str(exc)
        except Exception:
            log.exception("Query failed: %s %r", req.op, {k: v for k, v in req.args.items()
                                                           if not isinstance(v, bytes)})
            return 500, "internal error while reading; see the node's log"

    def _points(self, args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        series = args.get("series")
        if not isinstance(series, str):
            raise BadRequest("malformed request: series")
        cols = self.storage.read(series, _int_arg(args, "start"), _int_arg(args, "end"),
                                 self.config.max_query_points)
        return cols.ts, cols.val

    def _range(self, args: dict[str, Any]) -> Result:
        ts, val = self._points(args)
        return 200, {"ts": ts.tobytes(), "val": val.tobytes()}

    def _aggregate(self, args: dict[str, Any]) -> Result:
        how = args.get("aggregation")
        if how not in AGGREGATIONS:
            raise BadRequest(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        ts, val = self._points(args)
        interval = args.get("interval")
        if interval is None:
            return 200, {"value": aggregate(val, how)}
        if not isinstance(interval, int) or interval < 1:
            raise BadRequest("interval must be a positive integer (milliseconds)")
        starts, values, counts = aggregate_buckets(ts, val, how, interval)
        return 200, {"ts": starts.tobytes(), "val": values.tobytes(), "count": counts.tobytes()}

    def _series(self, args: dict[str, Any]) -> Result:
        prefix = args.get("prefix", "")
        limit = args.get("limit", 1000)
        if not isinstance(prefix, str) or not isinstance(limit, int) or not 1 <= limit <= SERIES_LIMIT_MAX:
            raise BadRequest(f"prefix must be text and limit 1..{SERIES_LIMIT_MAX}")
        return 200, self.storage.list_series(prefix, limit)

    def _health(self, args: dict[str, Any]) -> Result:
        return 200, {"status": "healthy", "node_id": self.config.node_id, "cluster_size": 1}

    def _stats(self, args: dict[str, Any]) -> Result:
        stats = self.storage.stats()
        stats.update(inserts=self.inserts, points_written=self.points_written)
        return 200, stats

    # -- background work -------------------------------------------------------------------

    def maintain(self, idle: bool) -> bool:
        """Flush and compact as due; True if more work is waiting (poll without sleeping).

        A failure here (a full disk, a bug) is logged and retried later; it must never take
        the node process down, since reads can still be served.
        """
        try:
            return self._maintain(idle)
        except Exception:
            log.exception("Background storage work failed; retrying in %.0f s", FLUSH_RETRY_S)
            self._flush_blocked_until = time.monotonic() + FLUSH_RETRY_S
            return False

    def _maintain(self, idle: bool) -> bool:
        storage = self.storage
        now = time.monotonic()
        if storage.flush_due() and now >= self._flush_blocked_until:
            try:
                storage.flush()
            except CountError as exc:
                self._flush_blocked_until = now + FLUSH_RETRY_S
                log.error("Flush failed, retrying in %.0f s: %s", FLUSH_RETRY_S, exc)
        if now < self._flush_blocked_until:
            return False
        if storage.compaction is None and storage.compaction_due(idle):
            storage.start_compaction()
        # Compaction normally takes one bounded step per turn; a growing backlog of segments
        # (writes outpacing it) buys it more steps per turn, which slows writes instead of
        # letting segments, and the cost of every read, grow without bound.
        steps = 1 + storage.segment_count() // SEGMENTS_MAX
        for _ in range(steps):
            if storage.compaction is None:
                break
            try:
                storage.compaction_step()
            except CountError as exc:
                self._flush_blocked_until = time.monotonic() + FLUSH_RETRY_S
                log.error("Compaction step failed, retrying in %.0f s: %s", FLUSH_RETRY_S, exc)
                return False
        return storage.compaction is not None

    def next_wakeup_s(self) -> float | None:
        """Seconds until background work is due (a flush), or None if nothing is pending."""
        wake = self.storage.seconds_to_flush()
        if wake is None:
            return None
        return max(wake, self._flush_blocked_until - time.monotonic(), 0.0)
