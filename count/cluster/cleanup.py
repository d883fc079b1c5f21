"""Cleanup: deleting the series this node holds but does not replicate.

A node comes to hold series it is no replica of: as the stand-in for a down replica
(sloppy quorum), as a coordinator that kept a hint when a replica write failed, and after
CLUSTER_NODES changed, for the ranges that moved to other nodes. Once hinted hand-off is
done those points only cost disk, compaction and anti-entropy work, so they go, as the
guide's "remove data from old locations" step and Cassandra's ``nodetool cleanup`` do, but
without an operator.

Every CLEANUP_INTERVAL_SECONDS (0: never), while the cluster is whole (every member alive
and listing the same members as this node), a pass lists such series for which this node
holds no hint; rounds, one at a time and back to back, take up to CLEANUP_SERIES_MAX of
them (CLEANUP_POINTS_MAX points; one larger series alone, up to a message's bound), send
their points (with their versions, as hand-off does) to every one of their replicas, and
drop a series once all of them have acknowledged it, unless it was written meanwhile
(storage's per-series stamp). A replica's acknowledgement is
its durable commit, so however a round ends no point is lost: a failed or refused message
leaves the series for a later round.
"""

from __future__ import annotations

import logging
from typing import Any

from count.cluster.antientropy import AntiEntropy
from count.cluster.context import NodeContext
from count.cluster.link import MESSAGE_POINTS_MAX
from count.cluster.placement import Placement
from count.errors import CountError, RangeTooLarge
from count.messages import ReplicaWrite, Reply
from count.storage.writes import TIMESTAMP_MAX_MS, WriteRequest, join, single_series

log = logging.getLogger("count.cluster")

# One round sends at most this many series, and this many points to each replica.
CLEANUP_SERIES_MAX = 256
CLEANUP_POINTS_MAX = 200_000


class Cleanup:
    def __init__(self, ctx: NodeContext, placement: Placement, anti_entropy: AntiEntropy) -> None:
        self.ctx = ctx
        self.placement = placement
        self.anti_entropy = anti_entropy  # keeps the table of local series by ring range
        self._interval_s = float(ctx.config.cleanup_interval_seconds)
        self._foreign_version = -1
        self._foreign: set[int] = set()
        self._next_s = ctx.now_s() + self._interval_s
        self._queue: list[str] = []  # candidates found at the start of a pass, taken in turn
        self._busy = False
        self._too_large: set[str] = set()  # reported once each
        self._dropped_in_round = [0, 0]  # series, points

    @property
    def _foreign_ranges(self) -> set[int]:
        """The ring ranges this node does not replicate; none while it owns no range, or
        while a member joins or leaves (the ranges are moving: nothing is dropped then)."""
        ctx = self.ctx
        if self._foreign_version != ctx.version:
            self._foreign_version = ctx.version
            ring, me = ctx.ring, ctx.self_address
            settled = ctx.confirmed and ctx.future_ring is None and me in ring.members
            self._foreign = {r for r in range(ring.ranges())
                             if me not in ring.range_preference(r)[:ctx.rf]
                             } if self._interval_s > 0 and settled else set()
            self._queue = []
        return self._foreign

    def next_wake_s(self) -> float | None:
        return None if self._busy or not self._foreign_ranges else self._next_s

    def step(self, now_s: float) -> None:
        if self._busy or now_s < self._next_s or not self._foreign_ranges:
            return
        self._next_s = now_s + self._interval_s
        if not self.ctx.membership.whole():
            self._queue = []
            return
        if not self._queue:
            self._queue = self.candidates()
            self._queue.reverse()  # popped from the end, in range order
        if self._queue:
            self._round()

    def candidates(self) -> list[str]:
        """Series held here, in ranges this node does not replicate, with no hint held."""
        storage = self.ctx.replica.storage
        hinted = self.ctx.hints.hinted_series()
        found = self.anti_entropy.series_by_range(self._foreign_ranges)
        names = dict.fromkeys(s for r in sorted(found) for s in found[r])  # once each
        return [s for s in names if s not in hinted and storage.sid(s) is not None]

    def _round(self) -> None:
        """Send the next queued series to their replicas; drop each once all acknowledge."""
        ctx = self.ctx
        storage = ctx.replica.storage
        hinted = ctx.hints.hinted_series()
        parts: dict[str, list[WriteRequest]] = {}  # per replica
        owners: dict[str, tuple[int, int, set[str]]] = {}  # series -> stamp, points, replicas
        budget = CLEANUP_POINTS_MAX
        while self._queue and len(owners) < CLEANUP_SERIES_MAX and budget > 0:
            series = self._queue.pop()
            if series in hinted or storage.sid(series) is None:
                continue  # a stand-in again since the pass began, or gone
            stamp = storage.series_stamp(series)
            try:  # the first series of a round may fill a whole message alone
                cols = storage.read(series, 0, TIMESTAMP_MAX_MS,
                                    budget if owners else MESSAGE_POINTS_MAX)
            except RangeTooLarge:
                if owners:
                    self._queue.append(series)  # first in the next round
                    break
                if series not in self._too_large:
                    self._too_large.add(series)
                    log.warning("Cleanup: series %s holds more than %d points, too many for "
                                "one message; it is kept", series, MESSAGE_POINTS_MAX)
                continue
            replicas = self.placement.replicas(series)
            assert ctx.self_address not in replicas, series
            owners[series] = (stamp, len(cols), set(replicas))
            if len(cols):
                write = single_series(series, cols.ts, cols.val, cols.ver)
                for node in replicas:
                    parts.setdefault(node, []).append(write)
            budget -= len(cols)
        self._dropped_in_round = [0, 0]
        for series in [s for s, (_, points, _) in owners.items() if points == 0]:
            self._drop(series, owners.pop(series))
        if not parts:
            self._finish()
            return
        self._busy = True
        waiting = set(parts)

        def acknowledged(node: str, sent: list[str]) -> Reply:
            def on_result(status: int, body: Any) -> None:
                waiting.discard(node)
                if status < 300:
                    for series in sent:
                        entry = owners.get(series)
                        if entry is not None:
                            entry[2].discard(node)
                            if not entry[2]:
                                self._drop(series, owners.pop(series))
                else:
                    log.info("Cleanup: node %s did not take %d series (%s); they are kept for "
                             "a later round", ctx.name_of(node), len(sent), body)
                if not waiting:
                    self._busy = False
                    self._finish()
            return on_result

        for node, writes in parts.items():
            ctx.ask(node, ReplicaWrite(join(writes), None),
                    acknowledged(node, [w.names[0] for w in writes]))

    def _drop(self, series: str, entry: tuple[int, int, set[str]]) -> None:
        stamp, points, _ = entry
        try:
            dropped = self.ctx.replica.storage.drop_series(series, stamp)
        except CountError as exc:  # a full disk: tried again in a later pass
            log.warning("Cleanup: could not drop series %s: %s", series, exc)
            return
        if dropped:
            self._dropped_in_round[0] += 1
            self._dropped_in_round[1] += points

    def _finish(self) -> None:
        """A round is over: count and log it; with more queued, the next starts at once."""
        series, points = self._dropped_in_round
        if series:
            counters = self.ctx.counters
            counters["cleanup_series_dropped"] += series
            counters["cleanup_points_dropped"] += points
            log.info("Cleanup: dropped %d series (%d points) this node does not replicate, "
                     "after their replicas acknowledged them", series, points)
        if self._queue:
            self._next_s = self.ctx.now_s()
