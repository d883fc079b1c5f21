"""Streaming: a node fetching the ranges it gains while a member joins or leaves.

While the topology has a change in flight, the future ring gives some members arcs of the
ring they do not replicate now (``ring.moves``): the joiner, or the members taking over a
leaving one's share. Each such member pulls those arcs' points, with their versions, from
the arcs' current replicas: each arc from the first of them that is alive, the one losing
it first (``ring.moves``); for a removal, from every surviving replica, since the dead
member may have held the only copy of a point but one (a member being removed is no
source). Pages of STREAM_PAGE_POINTS go one per
source at a time, throttled to STREAM_THROUGHPUT_POINTS per second, and each page is
committed before the cursor that follows it is stored, so a crash of either side resumes
where the last page ended. Writes for those arcs reach the member throughout (pending
replicas, ``placement.py``), so once every page is in it holds all the arcs hold; it then
says so in its heartbeat (``streamed``: the epoch it finished), and the change can end.

The source side answers ``StreamRanges`` from an index of its series' ring positions.
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import numpy as np

from count.cluster.catchup import CatchUp
from count.cluster.context import NodeContext
from count.cluster.ring import Arc, arc_of, moves, token
from count.errors import Conflict, CountError, RangeTooLarge
from count.messages import (
    ARCS_PER_MESSAGE_MAX,
    ReplicaWrite,
    Reply,
    StreamRanges,
)
from count.storage.merge import Columns
from count.storage.writes import TIMESTAMP_MAX_MS, WriteRequest, join, single_series

log = logging.getLogger("count.cluster")

POINT_BYTES = 24  # a point on the wire: timestamp, value, version
STREAMED_RECORD = "streamed"
PROGRESS_RECORD = "stream_progress"
STREAM_PAGE_POINTS = 100_000
# A throttled stream asks for pages of a tenth of a second's points (at least this many),
# so that the throttle is smooth.
STREAM_PAGE_POINTS_MIN = 100
# A failed page is asked again (of another source if its own is down) this much later.
RETRY_S = 1.0
# Halvings of a series' time window tried before one page holds it (a page may go over
# STREAM_PAGE_POINTS by one block rather than loop).
WINDOW_HALVINGS_MAX = 48


class _Source:
    """The arcs fetched from one source (in ring order), and how far that has got."""

    def __init__(self, address: str, arcs: list[Arc]) -> None:
        self.address = address
        self.arcs = arcs  # those not yet done; the first may be partly fetched
        self.busy = False
        self.next_s = 0.0


class Streaming:
    def __init__(self, ctx: NodeContext, catchup: CatchUp) -> None:
        self.ctx = ctx
        self.catchup = catchup
        stored = ctx.replica.storage.meta_get(STREAMED_RECORD)
        self.streamed = int(stored) if stored else 0  # the last epoch fetched in full
        self._epoch = 0
        self._sources: list[_Source] = []
        self._plan_alive: tuple[str, ...] = ()
        # Progress of the change in flight, stored after every page: the arcs done and, for
        # a partly fetched one, the (series, timestamp) it has got to. Arcs and cursors do
        # not depend on the source, so a crash or a new plan resumes where pages ended.
        # Keyed by (source, arc): the source is "" but for a removal, whose arcs come from
        # every live replica (the dead one may have held the only copy of a point but one).
        self._done: set[tuple[str, Arc]] = set()
        self._cursors: dict[tuple[str, Arc], tuple[str, int]] = {}
        self._every_source = False
        self._allowed_s = 0.0  # throttle: the next page may be asked for from this time
        self.points = 0
        self.arcs_total = 0
        self.started_s: float | None = None
        # Source side: this node's series and their ring positions, extended as they grow.
        self._names: list[str] = []
        self._tokens = np.empty(0, np.uint64)

    # -- the gaining side ----------------------------------------------------------------

    def gains(self) -> list[tuple[Arc, list[str]]]:
        """The arcs this node fetches in the change in flight, with their current replicas."""
        ctx = self.ctx
        if ctx.future_ring is None:
            return []
        return moves(ctx.ring, ctx.future_ring, ctx.rf, ctx.future_rf).get(ctx.self_address, [])

    def pending(self) -> bool:
        """Whether this node still has ranges to fetch in the change in flight."""
        return self.ctx.future_ring is not None and self.streamed < self.ctx.topology.epoch

    def step(self, now_s: float) -> None:
        ctx = self.ctx
        if not self.pending() or not ctx.confirmed:
            self._sources = []
            return
        epoch = ctx.topology.epoch
        alive = tuple(sorted(a for a in ctx.membership.members if ctx.alive(a)))
        if self._epoch != epoch or (alive != self._plan_alive and not any(
                s.busy for s in self._sources)):
            self._plan(epoch, alive)
        for source in self._sources:
            if source.arcs and not source.busy and now_s >= max(source.next_s,
                                                                self._allowed_s):
                self._ask(source)
        if all(not s.arcs for s in self._sources):
            self._finish()

    def _plan(self, epoch: int, alive: tuple[str, ...]) -> None:
        """Give every gained arc not yet done to its first live current replica."""
        ctx = self.ctx
        if self._epoch != epoch:
            self._epoch, self.points, self.started_s = epoch, 0, ctx.now_s()
            stored = self._progress()
            if stored.get("epoch") == epoch:
                self._done = {(src, (lo, hi)) for src, lo, hi in stored["done"]}
                self._cursors = {(src, (lo, hi)): (name, ts)
                                 for src, lo, hi, name, ts in stored["cursors"]}
            else:
                self._done, self._cursors = set(), {}
        self._plan_alive = alive
        changing = ctx.topology.changing()
        gone = changing.address if changing is not None and changing.state == "removing" else None
        self._every_source = gone is not None
        by_source: dict[str, list[Arc]] = {}
        gains = self.gains()
        lost = 0
        for arc, sources in gains:
            others = [s for s in sources if s not in (ctx.self_address, gone)]
            live = [s for s in others if ctx.alive(s)]
            if not others:
                lost += 1  # its only replica is the dead member being removed
                self._done.add(("", arc))
            chosen = (others if self._every_source  # down ones are asked once back
                      else live[:1] or others[:1])
            for source in chosen:
                if self._key(source, arc) not in self._done:
                    by_source.setdefault(source, []).append(arc)
        if lost:
            log.warning("Streaming: %d ranges had no replica but node %s, which is down and "
                        "being removed; their data is lost with it (REPLICATION_FACTOR 1)",
                        lost, ctx.name_of(gone or ""))
        self._sources = [_Source(address, sorted(arcs)) for address, arcs in
                         sorted(by_source.items())]
        self.arcs_total = len(gains)
        if by_source:
            log.info("Streaming: node %s fetches %d of %d ranges for epoch %d from %d sources",
                     ctx.config.node_id, sum(len(a) for a in by_source.values()), len(gains),
                     epoch, len(by_source))

    def _key(self, source: str, arc: Arc) -> tuple[str, Arc]:
        return (source if self._every_source else "", arc)

    def _progress(self) -> dict[str, Any]:
        raw = self.ctx.replica.storage.meta_get(PROGRESS_RECORD)
        return msgpack.unpackb(raw) if raw else {}

    def _save_progress(self) -> None:
        self.ctx.replica.storage.meta_put(PROGRESS_RECORD, msgpack.packb({
            "epoch": self._epoch, "done": [[src, lo, hi] for src, (lo, hi) in sorted(self._done)],
            "cursors": [[src, lo, hi, name, ts]
                        for (src, (lo, hi)), (name, ts) in self._cursors.items()]}))

    def _ask(self, source: _Source) -> None:
        ctx = self.ctx
        if not ctx.alive(source.address):
            source.next_s = ctx.now_s() + RETRY_S
            return
        source.busy = True
        epoch = self._epoch
        arcs = source.arcs[:ARCS_PER_MESSAGE_MAX]
        after, after_ts = self._cursors.get(self._key(source.address, arcs[0]), ("", -1))
        rate = ctx.config.stream_throughput_points
        page = (min(STREAM_PAGE_POINTS, max(STREAM_PAGE_POINTS_MIN, rate // 10)) if rate
                else STREAM_PAGE_POINTS)
        op = StreamRanges(epoch, arcs, after, after_ts, page)

        def on_page(status: int, body: Any) -> None:
            source.busy = False
            if self._epoch != epoch or source not in self._sources:
                return  # the plan changed meanwhile
            if status >= 300:
                ctx.warn(source.address, f"Streaming from node {ctx.name_of(source.address)} "
                                         f"failed: {body}; retrying")
                source.next_s = ctx.now_s() + RETRY_S
                return
            try:
                write = ReplicaWrite.from_wire(body["write"]).write if body.get("write") else None
                arcs_done = int(body["arcs_done"])
                cursor = body["next"]
                cursor = None if cursor is None else (str(cursor[0]), int(cursor[1]))
                if not 0 <= arcs_done <= len(arcs) or (cursor is None) != (arcs_done == len(arcs)):
                    raise ValueError("arcs done")
            except (CountError, KeyError, TypeError, ValueError, IndexError) as exc:
                ctx.warn(source.address, f"Streaming from node {ctx.name_of(source.address)}: "
                                         f"malformed page ({exc}); retrying")
                source.next_s = ctx.now_s() + RETRY_S
                return
            points = 0 if write is None else len(write.ts)
            if rate:
                self._allowed_s = max(self._allowed_s, ctx.now_s()) + points / rate

            def committed(status: int, result: Any) -> None:
                if status >= 300:
                    ctx.warn(source.address, f"Streaming: could not store a page: {result}")
                    source.next_s = ctx.now_s() + RETRY_S
                    return
                self.points += points
                for arc in arcs[:arcs_done]:
                    self._done.add(self._key(source.address, arc))
                    self._cursors.pop(self._key(source.address, arc), None)
                if cursor is not None:
                    self._cursors[self._key(source.address, arcs[arcs_done])] = cursor
                if source in self._sources:
                    source.arcs = [a for a in source.arcs
                                   if self._key(source.address, a) not in self._done]
                try:
                    self._save_progress()
                except CountError as exc:
                    ctx.warn(ctx.self_address, f"Streaming: could not store progress: {exc}")

            if write is None:
                committed(200, None)
            else:
                ctx.write_here(write, None, committed)

        ctx.ask(source.address, op, on_page)

    def _finish(self) -> None:
        ctx = self.ctx
        epoch = ctx.topology.epoch
        try:
            ctx.replica.storage.meta_put(STREAMED_RECORD, str(epoch).encode())
            self.catchup.streamed()
        except CountError as exc:
            ctx.warn(ctx.self_address, f"Streaming: could not record the end: {exc}")
            return
        self.streamed = epoch
        if self.arcs_total:
            took = ctx.now_s() - (self.started_s or ctx.now_s())
            log.info("Streaming: node %s fetched every range for epoch %d: %d points in "
                     "%.1f s", ctx.config.node_id, epoch, self.points, took)
        self._sources = []

    def progress(self) -> dict[str, Any]:
        """What status shows: ranges and bytes done of total, rate, ETA."""
        ctx = self.ctx
        if not self.pending():
            return {"active": False, "streamed_epoch": self.streamed}
        took = max(1e-3, ctx.now_s() - (self.started_s or ctx.now_s()))
        rate = self.points / took
        done = len({arc for _, arc in self._done})
        eta = (None if not done or not self.arcs_total else
               round(took * (self.arcs_total - done) / done, 1))
        return {"active": True, "epoch": ctx.topology.epoch, "ranges_done": done,
                "ranges_total": self.arcs_total, "points": self.points,
                "bytes": POINT_BYTES * self.points, "points_per_s": round(rate), "eta_s": eta,
                "sources": sorted(str(ctx.name_of(s.address)) for s in self._sources if s.arcs)}

    # -- the source side -----------------------------------------------------------------

    def _index(self) -> None:
        new = self.ctx.replica.storage.series_names_since(len(self._names))
        if new:
            self._names.extend(new)
            self._tokens = np.concatenate(
                [self._tokens, np.fromiter((token(n) for n in new), np.uint64, len(new))])

    def serve(self, msg: StreamRanges, reply: Reply) -> None:
        """The next page of ``msg.arcs`` (in ring order; the cursor is within the first):
        how many arcs it completes, and the cursor within the next one."""
        ctx = self.ctx
        if msg.epoch != ctx.topology.epoch:
            raise Conflict(f"this node is at epoch {ctx.topology.epoch}, the stream asks for "
                           f"epoch {msg.epoch}")
        self._index()
        storage = ctx.replica.storage
        parts: list[WriteRequest] = []
        budget = msg.points_max
        arc_of_name = arc_of(self._tokens, msg.arcs)
        by_arc: dict[int, list[str]] = {}
        for j in np.flatnonzero(arc_of_name >= 0).tolist():
            by_arc.setdefault(int(arc_of_name[j]), []).append(self._names[j])
        for i in range(len(msg.arcs)):
            names = sorted(by_arc.get(i, ()))
            after = msg.after if i == 0 else ""
            for name in names:
                if name < after or storage.sid(name) is None:
                    continue
                start = msg.after_ts + 1 if i == 0 and name == after else 0
                if start > TIMESTAMP_MAX_MS:
                    continue
                if budget <= 0:  # full: this arc goes on from this series next time
                    reply(200, _page(parts, i, [name, start - 1]))
                    return
                cols, end = self._read_first(name, start, budget)
                if len(cols):
                    parts.append(single_series(name, cols.ts, cols.val, cols.ver))
                    budget -= len(cols)
                if end < TIMESTAMP_MAX_MS:
                    reply(200, _page(parts, i, [name, end]))
                    return
        reply(200, _page(parts, len(msg.arcs), None))

    def _read_first(self, name: str, start: int, budget: int) -> tuple[Columns, int]:
        """The first points of a series from ``start``, about ``budget`` of them, and the
        end of the time window they cover (TIMESTAMP_MAX_MS: all it has from there)."""
        storage = self.ctx.replica.storage
        end, span = TIMESTAMP_MAX_MS, TIMESTAMP_MAX_MS - start
        for _ in range(WINDOW_HALVINGS_MAX):
            try:
                return storage.read(name, start, end, budget), end
            except RangeTooLarge:
                span //= 2
                end = start + span
        return storage.read(name, start, start, 1 << 31), start


def _page(parts: list[WriteRequest], arcs_done: int, after: list[Any] | None) -> dict[str, Any]:
    return {"write": ReplicaWrite(join(parts), None).to_wire() if parts else None,
            "arcs_done": arcs_done, "next": after}
