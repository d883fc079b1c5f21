"""Anti-entropy: compare Merkle digests with each peer that shares ring ranges and stream
only what differs, both ways, so that replicas converge without an operator.

A round visits the live peers one after another. With each it compares, level by level:
one digest per shared ring range; for ranges that differ, one digest per series and time
bucket (``merkle.BUCKET_MS``); for buckets that differ, the points themselves, which each
side merges by last write wins. A node whose data directory was wiped has empty digests, so
it pulls everything it should hold. Digests of a series are cached until it is written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from count.cluster.catchup import RETRY_S, CatchUp
from count.cluster.context import NodeContext
from count.cluster.merkle import (
    BUCKET_MS,
    bucket_digests,
    combine,
    differing,
    newer_points,
)
from count.errors import BadRequest
from count.failsafe import survive
from count.messages import (
    BUCKETS_PER_MESSAGE_MAX,
    RANGES_PER_MESSAGE_MAX,
    BucketPoints,
    DigestRanges,
    DigestSeries,
    Message,
    Reply,
    points_from_wire,
    points_to_wire,
)
from count.storage.merge import Columns, concat, merge_sorted
from count.storage.writes import TIMESTAMP_MAX_MS, single_series

log = logging.getLogger("count.cluster")

DIGEST_CACHE_SERIES_MAX = 1_000_000
DIGEST_POINTS_MAX = 1 << 31


class AntiEntropy:
    def __init__(self, ctx: NodeContext, catchup: CatchUp) -> None:
        self.ctx = ctx
        self.catchup = catchup
        self._next_sync_s = ctx.now_s()
        self._cache: dict[str, tuple[int, dict[int, bytes]]] = {}
        self._names: list[str] = []
        self._name_ranges = np.empty(0, np.int64)
        self._ranges_version = ctx.version
        interval = ctx.config.anti_entropy_interval_seconds
        # The first round starts after a random part of the interval, so nodes started
        # together do not all compare at once.
        self._next_s = ctx.now_s() + interval * (0.5 + ctx.rng.random() / 2)
        self._round: _Round | None = None
        self._waiting: list[Reply] = []
        self.rounds = 0
        self.last: dict[str, Any] = {}

    # -- digests of this node's data ---------------------------------------------------

    def series_buckets(self, series: str) -> dict[int, bytes]:
        storage = self.ctx.replica.storage
        stamp = storage.series_stamp(series)
        cached = self._cache.get(series)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # The whole series, past MAX_QUERY_POINTS: a digest must cover every point.
        cols = self.ctx.replica.storage.read(series, 0, TIMESTAMP_MAX_MS, DIGEST_POINTS_MAX)
        digests = bucket_digests(cols)
        if len(self._cache) >= DIGEST_CACHE_SERIES_MAX:
            self._cache.clear()
        self._cache[series] = (stamp, digests)
        return digests

    def series_by_range(self, ranges: set[int]) -> dict[int, list[str]]:
        """This node's series in each of ``ranges``; a series' range is computed once, when
        the series is first seen (and again when the ring changes), not once per round."""
        if self._ranges_version != self.ctx.version:
            self._ranges_version = self.ctx.version
            self._names, self._name_ranges = [], np.empty(0, np.int64)
        new = self.ctx.replica.storage.series_names_since(len(self._names))
        if new:
            self._names.extend(new)
            self._name_ranges = np.concatenate([self._name_ranges,
                                                self.ctx.ring.range_indices(new)])
        found: dict[int, list[str]] = {r: [] for r in ranges}
        for i in np.flatnonzero(np.isin(self._name_ranges, list(ranges))).tolist():
            found[int(self._name_ranges[i])].append(self._names[i])
        return found

    def range_digests(self, ranges: list[int]) -> dict[int, bytes]:
        by_range = self.series_by_range(set(ranges))
        return {r: combine({s: combine(self.series_buckets(s)) for s in by_range[r]})
                for r in ranges}

    def series_digests(self, ranges: list[int]) -> dict[str, dict[int, bytes]]:
        by_range = self.series_by_range(set(ranges))
        return {s: self.series_buckets(s) for r in ranges for s in by_range[r]}

    def bucket_points(self, series: str, buckets: list[int]) -> Columns:
        return concat([self.ctx.replica.read(series, b, b + BUCKET_MS - 1)
                       for b in sorted(buckets)])

    # -- what peers ask ------------------------------------------------------------------

    def _ranges(self, msg: DigestRanges | DigestSeries) -> list[int]:
        if msg.ring != self.ctx.ring.digest():
            raise BadRequest("the peer's ring differs from this node's (CLUSTER_NODES must be "
                             "the same on every node)")
        if not all(0 <= r < self.ctx.ring.ranges() for r in msg.ranges):
            raise BadRequest("malformed anti-entropy request: ranges")
        return msg.ranges

    def serve_ranges(self, msg: DigestRanges, reply: Reply) -> None:
        reply(200, {str(r): d for r, d in self.range_digests(self._ranges(msg)).items()})

    def serve_series(self, msg: DigestSeries, reply: Reply) -> None:
        found = self.series_digests(self._ranges(msg))
        reply(200, {s: {str(b): d for b, d in buckets.items()} for s, buckets in found.items()})

    def serve_points(self, msg: BucketPoints, reply: Reply) -> None:
        reply(200, points_to_wire(self.bucket_points(msg.series, msg.buckets), versions=True))

    # -- rounds --------------------------------------------------------------------------

    def start_now(self, reply: Reply) -> None:
        """POST /cluster/repair: run a round now (or join the running one) and report it."""
        self._waiting.append(reply)
        if self._round is None:
            self._start()

    def step(self, now_s: float) -> None:
        """Start a round when one is due: every interval, and while this node catches up."""
        if self._round is None and any(due <= now_s for due in self._due()):
            self._start()

    def _due(self) -> list[float]:
        due = []
        if self.ctx.config.anti_entropy_interval_seconds > 0:
            due.append(self._next_s)
        if self.catchup.syncing:
            due.append(self._next_sync_s)
        return due

    def next_wake_s(self) -> float | None:
        due = self._due()
        return None if self._round is not None or not due else min(due)

    def _start(self) -> None:
        ctx = self.ctx
        peers = [m for m in ctx.ring.members if m != ctx.self_address and ctx.alive(m)
                 and ctx.self_address in ctx.ring.members
                 and ctx.ring.shared_ranges(ctx.self_address, m, ctx.rf)]
        self._round = _Round(self, peers, self._finished)
        self._round.next_peer()

    def _finished(self, report: dict[str, Any]) -> None:
        assert self._round is not None
        compared, self._round = self._round.compared, None
        self.rounds += 1
        self.last = report
        now = self.ctx.now_s()
        self._next_s = now + self.ctx.config.anti_entropy_interval_seconds
        self._next_sync_s = now + RETRY_S
        self.catchup.round_finished(compared)
        if report["points_received"] or report["points_sent"] or report["errors"]:
            log.info("Anti-entropy round: %d peers, %d of %d ranges differed, %d points "
                     "received, %d sent, %d errors", len(report["peers"]),
                     report["ranges_differing"], report["ranges_compared"],
                     report["points_received"], report["points_sent"], len(report["errors"]))
        waiting, self._waiting = self._waiting, []
        for reply in waiting:
            reply(200, report)

    def progress(self) -> dict[str, Any]:
        """What /stats says of anti-entropy; a running round's ranges done of its total are
        what ``count repair`` draws its progress from."""
        progress: dict[str, Any] = {"rounds": self.rounds, "running": self._round is not None,
                                    "cached_series": len(self._cache), "last": self.last}
        if self._round is not None:
            progress.update(ranges_done=self._round.ranges_done(),
                            ranges_total=self._round.ranges_total)
        return progress


class _Round:
    """One anti-entropy round: the peers in turn, each compared level by level."""

    def __init__(self, ae: AntiEntropy, peers: list[str],
                 finished: Callable[[dict[str, Any]], None]) -> None:
        self.ae = ae
        self.ctx = ae.ctx
        self.peers = list(peers)
        self.finished = finished
        self.started = self.ctx.now_s()
        self.report: dict[str, Any] = {
            "peers": [self.ctx.name_of(p) for p in peers], "ranges_compared": 0,
            "ranges_differing": 0, "series_differing": 0, "points_received": 0,
            "points_sent": 0, "errors": []}
        self.peer = ""
        ring, me, rf = self.ctx.ring, self.ctx.self_address, self.ctx.rf
        self.ranges_total = sum(len(ring.shared_ranges(me, p, rf)) for p in peers)
        self.todo_ranges: list[int] = []
        self.todo_series: list[tuple[str, list[int]]] = []
        self._errors_before = 0
        # Peers compared to the end without an error: the round's proof of what it covered.
        self.compared: list[str] = []

    def next_peer(self) -> None:
        if self.peer and len(self.report["errors"]) == self._errors_before:
            self.compared.append(self.peer)
        self._errors_before = len(self.report["errors"])
        if not self.peers:
            self.report["duration_ms"] = round((self.ctx.now_s() - self.started) * 1000, 1)
            self.finished(self.report)
            return
        self.peer = self.peers.pop(0)
        ring = self.ctx.ring
        if self.peer not in ring.members or self.ctx.self_address not in ring.members:
            self.peer = ""  # the ring changed since the round began: nothing shared now
            self.next_peer()
            return
        self.todo_ranges = ring.shared_ranges(self.ctx.self_address, self.peer, self.ctx.rf)
        self.report["ranges_compared"] += len(self.todo_ranges)
        try:
            self.compare_ranges()
        except Exception as exc:
            survive(log, "Anti-entropy step failed")
            self.fail("range digests", f"internal error ({exc})")

    def ranges_done(self) -> int:
        """Ranges compared or being compared so far (the current peer's not yet sent are not)."""
        return int(self.report["ranges_compared"]) - len(self.todo_ranges)

    def fail(self, what: str, body: Any) -> None:
        message = f"node {self.ctx.name_of(self.peer)}: {what}: {body}"
        log.warning("Anti-entropy with %s", message)
        self.report["errors"].append(message)
        self.next_peer()

    def call(self, op: Message, then: Callable[[Any], None], what: str) -> None:
        """Ask the peer; ``then`` continues the round. Any failure, a malformed reply or an
        error on this side, ends the comparison with this peer, never the round."""
        def on_result(status: int, body: Any) -> None:
            if status >= 300:
                self.fail(what, body)
                return
            try:
                then(body)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self.fail(what, f"malformed reply ({exc})")
            except Exception as exc:
                survive(log, "Anti-entropy step failed")
                self.fail(what, f"internal error ({exc})")
        self.ctx.ask(self.peer, op, on_result)

    def compare_ranges(self) -> None:
        if not self.todo_ranges:
            self.next_peer()
            return
        chunk = self.todo_ranges[:RANGES_PER_MESSAGE_MAX]
        del self.todo_ranges[:RANGES_PER_MESSAGE_MAX]
        mine = self.ae.range_digests(chunk)

        def compared(body: Any) -> None:
            theirs = {int(r): d for r, d in body.items()}
            differ = differing(mine, theirs)
            self.report["ranges_differing"] += len(differ)
            if differ:
                self.compare_series(differ)
            else:
                self.compare_ranges()

        self.call(DigestRanges(self.ctx.ring.digest(), chunk), compared, "range digests")

    def compare_series(self, ranges: list[int]) -> None:
        mine = self.ae.series_digests(ranges)

        def compared(body: Any) -> None:
            theirs = {s: {int(b): d for b, d in buckets.items()} for s, buckets in body.items()}
            for series in sorted(set(mine) | set(theirs)):
                buckets = differing(mine.get(series, {}), theirs.get(series, {}))
                if buckets:
                    self.todo_series.append((series, buckets))
            self.report["series_differing"] += len(self.todo_series)
            self.exchange()

        self.call(DigestSeries(self.ctx.ring.digest(), ranges), compared, "series digests")

    def exchange(self) -> None:
        """Pull the peer's points of differing buckets, push ours, one series chunk at a time."""
        if not self.todo_series:
            self.compare_ranges()
            return
        series, buckets = self.todo_series[0]
        chunk = buckets[:BUCKETS_PER_MESSAGE_MAX]
        if len(buckets) > BUCKETS_PER_MESSAGE_MAX:
            self.todo_series[0] = (series, buckets[BUCKETS_PER_MESSAGE_MAX:])
        else:
            self.todo_series.pop(0)
        ours = self.ae.bucket_points(series, chunk)

        def pulled(body: Any) -> None:
            theirs = points_from_wire(body)
            pending = [0]

            def one_done(status: int, result: Any) -> None:
                if status >= 300:
                    self.report["errors"].append(f"{series}: {result}")
                pending[0] -= 1
                if pending[0] == 0:
                    self.exchange()

            # Each side gets only what it lacks or holds older: a bucket differs when one
            # point does, and copying it whole would move (and count) every point of it.
            merged = merge_sorted([ours, theirs])
            for node, cols, key in ((self.ctx.self_address, newer_points(merged, ours),
                                     "points_received"),
                                    (self.peer, newer_points(merged, theirs), "points_sent")):
                if len(cols):
                    pending[0] += 1
                    self.report[key] += len(cols)
                    self.ctx.replicate(node, single_series(series, cols.ts, cols.val, cols.ver),
                                      None, one_done)
            if pending[0] == 0:
                self.exchange()

        self.call(BucketPoints(series, chunk), pulled, "points")
