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
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from count.cluster.merkle import (
    BUCKET_MS,
    bucket_digests,
    combine,
    differing,
    newer_points,
)
from count.cluster.replication import Reply
from count.errors import BadRequest
from count.storage.engine import WriteRequest
from count.storage.merge import Columns, concat, merge_sorted

if TYPE_CHECKING:
    from count.cluster.coordinator import Coordinator

log = logging.getLogger("count.cluster")

# Ranges per digest request and series per bucket request: bounds each message and the
# time a peer spends computing its answer in one turn.
RANGES_PER_MESSAGE_MAX = 16
SERIES_PER_MESSAGE_MAX = 128
# Buckets of one series fetched per message.
BUCKETS_PER_MESSAGE_MAX = 24
DIGEST_CACHE_SERIES_MAX = 1_000_000
DIGEST_POINTS_MAX = 1 << 31
TIME_MAX_MS = (1 << 62)


def _list_arg(args: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = args.get(key)
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"malformed anti-entropy request: {key}")
    return value


class AntiEntropy:
    def __init__(self, coordinator: Coordinator) -> None:
        self.co = coordinator
        self._cache: dict[str, tuple[int, dict[int, bytes]]] = {}
        self._names: list[str] = []
        self._name_ranges = np.empty(0, np.int64)
        interval = coordinator.config.anti_entropy_interval_seconds
        # The first round starts after a random part of the interval, so nodes started
        # together do not all compare at once.
        self._next_s = time.monotonic() + interval * (0.5 + random.random() / 2)
        self._round: _Round | None = None
        self._waiting: list[Reply] = []
        self.rounds = 0
        self.last: dict[str, Any] = {}

    # -- digests of this node's data ---------------------------------------------------

    def series_buckets(self, series: str) -> dict[int, bytes]:
        storage = self.co.replica.storage
        stamp = storage.series_stamp(series)
        cached = self._cache.get(series)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # The whole series, past MAX_QUERY_POINTS: a digest must cover every point.
        cols = self.co.replica.storage.read(series, 0, TIME_MAX_MS, DIGEST_POINTS_MAX)
        digests = bucket_digests(cols)
        if len(self._cache) >= DIGEST_CACHE_SERIES_MAX:
            self._cache.clear()
        self._cache[series] = (stamp, digests)
        return digests

    def series_by_range(self, ranges: set[int]) -> dict[int, list[str]]:
        """This node's series in each of ``ranges``; a series' range is computed once, when
        the series is first seen, not once per round and message."""
        new = self.co.replica.storage.series_names_since(len(self._names))
        if new:
            self._names.extend(new)
            self._name_ranges = np.concatenate([self._name_ranges,
                                                self.co.ring.range_indices(new)])
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
        return concat([self.co.replica.read(series, b, b + BUCKET_MS - 1)
                       for b in sorted(buckets)])

    # -- what peers ask ------------------------------------------------------------------

    def peer_ops(self) -> dict[str, Callable[[dict[str, Any], Reply], None]]:
        return {"ae_ranges": self._ae_ranges, "ae_series": self._ae_series,
                "ae_points": self._ae_points}

    def _check_ring(self, args: dict[str, Any]) -> None:
        if args.get("ring") != self.co.ring.digest():
            raise BadRequest("the peer's ring differs from this node's (CLUSTER_NODES must be "
                             "the same on every node)")

    def _ranges(self, args: dict[str, Any]) -> list[int]:
        ranges = _list_arg(args, "ranges", RANGES_PER_MESSAGE_MAX)
        if not all(isinstance(r, int) and 0 <= r < self.co.ring.ranges() for r in ranges):
            raise BadRequest("malformed anti-entropy request: ranges")
        return ranges

    def _ae_ranges(self, args: dict[str, Any], reply: Reply) -> None:
        self._check_ring(args)
        reply(200, {str(r): d for r, d in self.range_digests(self._ranges(args)).items()})

    def _ae_series(self, args: dict[str, Any], reply: Reply) -> None:
        self._check_ring(args)
        found = self.series_digests(self._ranges(args))
        reply(200, {s: {str(b): d for b, d in buckets.items()} for s, buckets in found.items()})

    def _ae_points(self, args: dict[str, Any], reply: Reply) -> None:
        series = args.get("series")
        buckets = _list_arg(args, "buckets", BUCKETS_PER_MESSAGE_MAX)
        if not isinstance(series, str) or not all(isinstance(b, int) for b in buckets):
            raise BadRequest("malformed anti-entropy request: series")
        cols = self.bucket_points(series, buckets)
        reply(200, {"ts": cols.ts.tobytes(), "val": cols.val.tobytes(), "ver": cols.ver.tobytes()})

    # -- rounds --------------------------------------------------------------------------

    def start_now(self, args: dict[str, Any], reply: Reply) -> None:
        """POST /cluster/repair: run a round now (or join the running one) and report it."""
        self._waiting.append(reply)
        if self._round is None:
            self._start()

    def step(self, now_s: float) -> None:
        interval = self.co.config.anti_entropy_interval_seconds
        if self._round is None and interval > 0 and now_s >= self._next_s:
            self._start()

    def _start(self) -> None:
        co = self.co
        peers = [m for m in co.ring.members if m != co.self_address and co.alive(m)
                 and co.ring.shared_ranges(co.self_address, m, co.rf)]
        self._round = _Round(self, peers, self._finished)
        self._round.next_peer()

    def _finished(self, report: dict[str, Any]) -> None:
        self._round = None
        self.rounds += 1
        self.last = report
        self._next_s = time.monotonic() + self.co.config.anti_entropy_interval_seconds
        if report["points_received"] or report["points_sent"] or report["errors"]:
            log.info("Anti-entropy round: %d peers, %d of %d ranges differed, %d points "
                     "received, %d sent, %d errors", len(report["peers"]),
                     report["ranges_differing"], report["ranges_compared"],
                     report["points_received"], report["points_sent"], len(report["errors"]))
        waiting, self._waiting = self._waiting, []
        for reply in waiting:
            reply(200, report)

    def progress(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "running": self._round is not None,
                "cached_series": len(self._cache), "last": self.last}


class _Round:
    """One anti-entropy round: the peers in turn, each compared level by level."""

    def __init__(self, ae: AntiEntropy, peers: list[str], finished: Callable[[dict[str, Any]], None]) -> None:
        self.ae = ae
        self.co = ae.co
        self.peers = list(peers)
        self.finished = finished
        self.started = time.monotonic()
        self.report: dict[str, Any] = {
            "peers": [self.co.name_of(p) for p in peers], "ranges_compared": 0,
            "ranges_differing": 0, "series_differing": 0, "points_received": 0,
            "points_sent": 0, "errors": []}
        self.peer = ""
        self.todo_ranges: list[int] = []
        self.todo_series: list[tuple[str, list[int]]] = []
        self.outstanding = 0

    def next_peer(self) -> None:
        if not self.peers:
            self.report["duration_ms"] = round((time.monotonic() - self.started) * 1000, 1)
            self.finished(self.report)
            return
        self.peer = self.peers.pop(0)
        self.todo_ranges = self.co.ring.shared_ranges(self.co.self_address, self.peer, self.co.rf)
        self.report["ranges_compared"] += len(self.todo_ranges)
        try:
            self.compare_ranges()
        except Exception as exc:
            log.exception("Anti-entropy step failed")
            self.fail("range digests", f"internal error ({exc})")

    def fail(self, what: str, body: Any) -> None:
        message = f"node {self.co.name_of(self.peer)}: {what}: {body}"
        log.warning("Anti-entropy with %s", message)
        self.report["errors"].append(message)
        self.next_peer()

    def call(self, op: str, args: dict[str, Any], then: Callable[[Any], None], what: str) -> None:
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
                log.exception("Anti-entropy step failed")
                self.fail(what, f"internal error ({exc})")
        self.co.ask(self.peer, op, {"ring": self.co.ring.digest(), **args}, on_result)

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

        self.call("ae_ranges", {"ranges": chunk}, compared, "range digests")

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

        self.call("ae_series", {"ranges": ranges}, compared, "series digests")

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
            theirs = Columns(np.frombuffer(body["ts"], np.int64),
                             np.frombuffer(body["val"], np.float64),
                             np.frombuffer(body["ver"], np.uint64))
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
            for node, cols, key in ((self.co.self_address, newer_points(merged, ours),
                                     "points_received"),
                                    (self.peer, newer_points(merged, theirs), "points_sent")):
                if len(cols):
                    pending[0] += 1
                    self.report[key] += len(cols)
                    write = WriteRequest([series], np.zeros(len(cols), np.uint32), cols.ts,
                                         cols.val, cols.ver)
                    self.co.send_write(node, write, None, one_done)
            if pending[0] == 0:
                self.exchange()

        self.call("ae_points", {"series": series, "buckets": chunk}, pulled, "points")
