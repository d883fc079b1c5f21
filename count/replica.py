"""This node's own replica: turns groups of writes into one commit and answers local reads.

Every write that lands on this node, whether a client's insert it coordinates or a peer's
replica write, hint or repair, goes through ``commit`` in groups, so that a turn of the node
process makes all of them durable with one WAL append. Background upkeep (flush, compaction)
runs between turns and never raises.
"""
from __future__ import annotations

import logging
from typing import Any

from count.clock import Clock
from count.config import Config
from count.errors import CountError, DiskFull
from count.failsafe import survive
from count.storage.engine import SEGMENTS_MAX, Storage
from count.storage.merge import Columns
from count.storage.versions import VersionClock, node_tag
from count.storage.writes import WriteRequest

log = logging.getLogger("count.coordinator")

# How long after failed background work (disk full) the next attempt waits.
FLUSH_RETRY_S = 1.0

Result = tuple[int, Any]


class LocalReplica:
    """This node's own copy of the data: group commit of writes, local reads, upkeep."""

    def __init__(self, config: Config, storage: Storage, clock: Clock) -> None:
        self.config = config
        self.storage = storage
        self.time = clock
        self.clock = VersionClock(node_tag(config.node_id), clock.wall_ms)
        self.clock.observe(storage.version_high)
        self._flush_blocked_until = 0.0
        # Why the last commit failed for want of room (507), until a commit or a write
        # probe succeeds; with the storage's own flush state, what /health reports.
        self.write_failure: str | None = None
        self._probe_at = 0.0
        self.commits = 0
        self.points_written = 0

    def commit(self, writes: list[WriteRequest]) -> Result:
        """Make a group of writes durable together (one WAL append): 201, or the error for all."""
        try:
            self.storage.write(writes)
        except CountError as exc:
            if exc.status == DiskFull.status:
                self._write_failed(str(exc))
            return exc.status, str(exc)
        except Exception:
            survive(log, "Write of %d requests failed", len(writes))
            return 500, "internal error while writing; see the node's log"
        self._writable_again("a write succeeded")
        self.commits += 1
        self.points_written += sum(len(w.ts) for w in writes)
        for w in writes:
            self.clock.observe(w.version_max())
        return 201, None

    def storage_problem(self) -> str | None:
        """Why this replica cannot take a write now (disk full), or None if it can."""
        if self.write_failure is not None:
            return f"storage is not writable: the last write failed: {self.write_failure}"
        if self.storage.flush_failing:
            return ("storage is not writable: flushing the memory buffer to disk fails "
                    "(disk full?); writes are refused once the buffer fills")
        return None

    def _write_failed(self, message: str) -> None:
        if self.write_failure is None:
            log.error("Storage not writable: %s", message)
        self.write_failure = message
        self._probe_at = self.time.monotonic_s() + FLUSH_RETRY_S

    def _writable_again(self, why: str) -> None:
        if self.write_failure is not None:
            log.info("Storage writable again: %s", why)
            self.write_failure = None

    def read(self, series: str, start: int, end: int) -> Columns:
        """Every point of a series in [start, end] with its write version (CountError if bad)."""
        return self.storage.read(series, start, end, self.config.max_query_points)

    def list_series(self, prefix: str, limit: int) -> list[str]:
        return self.storage.list_series(prefix, limit)

    def stats(self) -> dict[str, Any]:
        stats = self.storage.stats()
        stats.update(commits_served=self.commits, points_written=self.points_written)
        return stats

    # -- background work -------------------------------------------------------------------

    def maintain(self, idle: bool) -> bool:
        """Flush and compact as due; True if more work is waiting (poll without sleeping).

        A failure here (a full disk, a bug) is logged and retried later; it must never take
        the node process down, since reads can still be served.
        """
        try:
            return self._maintain(idle)
        except Exception:
            survive(log, "Background storage work failed; retrying in %.0f s", FLUSH_RETRY_S)
            self._flush_blocked_until = self.time.monotonic_s() + FLUSH_RETRY_S
            return False

    def _maintain(self, idle: bool) -> bool:
        storage = self.storage
        now = self.time.monotonic_s()
        if self.write_failure is not None and now >= self._probe_at:
            try:
                storage.probe_writable()
            except CountError as exc:
                self._write_failed(str(exc))
            else:
                self._writable_again("a write probe succeeded")
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
                self._flush_blocked_until = self.time.monotonic_s() + FLUSH_RETRY_S
                log.error("Compaction step failed, retrying in %.0f s: %s", FLUSH_RETRY_S, exc)
                return False
        return storage.compaction is not None

    def next_wakeup_s(self) -> float | None:
        """Seconds until background work is due (a flush, a write probe), or None if nothing
        is pending."""
        now = self.time.monotonic_s()
        wakes = []
        flush = self.storage.seconds_to_flush()
        if flush is not None:
            wakes.append(max(flush, self._flush_blocked_until - now, 0.0))
        if self.write_failure is not None:
            wakes.append(max(self._probe_at - now, 0.0))
        return min(wakes) if wakes else None
