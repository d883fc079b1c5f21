"""The read path of the cluster: a client read coordinated on this node (merge by last write
wins, then blocking read repair), and the reads peers ask of this node's replica.

A read asks every node that may hold the series (``Placement.read_targets``) and waits for
all of them. Only the series' own replicas count towards the consistency level: a stand-in
or hint holder adds the points it has, but its view alone is never presented as the
answer, and neither is the answer of a replica still catching up after a new or wiped
store (the replica says so in the answer: an answer given while catching up never counts,
even if it arrives after the heartbeat that says the replica caught up). Fewer counted
replicas than the level needs is a 503 that names the replicas that did not answer, never
an empty 200. Before answering, every replica that answered short or
stale is brought up to the merged result, and the read answers only once at least as many
replicas as the level needs hold it: that is what makes a later quorum read return at least
what an earlier one did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from count.cluster.context import NodeContext
from count.cluster.merkle import newer_points
from count.cluster.placement import Placement
from count.cluster.quorum import Gather, required
from count.errors import CountError, RangeTooLarge
from count.messages import (
    Aggregate,
    ListSeries,
    ReadRange,
    ReplicaRead,
    ReplicaSeries,
    Reply,
    points_from_wire,
    points_to_wire,
)
from count.storage.aggregate import aggregate, aggregate_buckets
from count.storage.merge import Columns, merge_sorted
from count.storage.writes import single_series

# In a replica's read answer: whether the replica had caught up when it gave it.
COUNTS = "counts"

log = logging.getLogger("count.cluster")

DEFAULT_LEVEL = "one"


class Reads:
    def __init__(self, ctx: NodeContext, placement: Placement,
                 counts_for_reads: Callable[[str], bool]) -> None:
        self.ctx = ctx
        self.placement = placement
        # Whether a replica's answer counts towards a read's consistency level (a replica
        # still catching up after losing its data does not).
        self.counts_for_reads = counts_for_reads

    # -- client reads ----------------------------------------------------------------------

    def read_range(self, msg: ReadRange, reply: Reply) -> None:
        def answer(cols: Columns) -> None:
            reply(200, points_to_wire(cols, versions=False))
        self._read(msg.series, msg.start, msg.end, msg.consistency, answer, reply)

    def aggregate(self, msg: Aggregate, reply: Reply) -> None:
        def answer(cols: Columns) -> None:
            if msg.interval is None:
                reply(200, {"value": aggregate(cols.val, msg.aggregation)})
                return
            starts, values, counts = aggregate_buckets(cols.ts, cols.val, msg.aggregation,
                                                       msg.interval)
            reply(200, {"ts": starts.tobytes(), "val": values.tobytes(),
                        "count": counts.tobytes()})
        self._read(msg.series, msg.start, msg.end, msg.consistency, answer, reply)

    def _read(self, series: str, start: int, end: int, level: str | None,
              answer: Callable[[Columns], None], reply: Reply) -> None:
        """Read a series from every node that may hold it, merge, repair, answer."""
        ctx = self.ctx
        level = level or DEFAULT_LEVEL
        ctx.counters["reads"] += 1
        asked, replicas = self.placement.read_targets(series)
        needed = required(level, ctx.rf)

        def done(answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            bad = [e for e in errors.values() if e[0] == 400]
            if bad:
                reply(*bad[0])
                return
            got = [node for node in asked if node in answers]
            counted = [n for n in got if n in replicas and self.counts_for_reads(n)
                       and isinstance(answers[n], dict) and answers[n].get(COUNTS) is True]
            if len(counted) < needed:
                self._unavailable(series, level, needed, replicas, counted, errors, reply)
                return
            try:
                parts = {node: points_from_wire(answers[node]) for node in got}
            except CountError as exc:
                reply(exc.status, str(exc))
                return
            merged = merge_sorted(list(parts.values()))
            if len(merged) > ctx.config.max_query_points:
                reply(400, str(RangeTooLarge(ctx.config.max_query_points)))
                return
            self._repair_then(series, merged, {n: p for n, p in parts.items() if n in replicas},
                              set(counted), needed, answer, reply)

        gather = Gather(asked, done)
        for node in asked:
            ctx.ask(node, ReplicaRead(series, start, end), gather.callback(node))

    def _unavailable(self, series: str, level: str, needed: int, replicas: list[str],
                     counted: list[str], errors: dict[str, tuple[int, str]],
                     reply: Reply) -> None:
        ctx = self.ctx
        missing = []
        for node in replicas:
            if node in counted:
                continue
            if node in errors:
                why = errors[node][1]
            elif not ctx.alive(node):
                why = "down"
            else:
                why = "catching up after losing its data"
            missing.append(f"node {ctx.name_of(node)}: {why}")
        detail = "; ".join(missing)
        log.warning("Query failed: %s read reached %d of %d replicas (%s)", series,
                    len(counted), ctx.rf, detail)
        reply(503, f"read of {series} reached {len(counted)} of {ctx.rf} replicas but "
                   f"consistency={level} needs {needed}; not answering: {detail}")

    def _repair_then(self, series: str, merged: Columns, answers: dict[str, Columns],
                     counted: set[str], needed: int, answer: Callable[[Columns], None],
                     reply: Reply) -> None:
        """Bring every replica that answered short or stale up to ``merged``, then answer
        if at least ``needed`` counted replicas hold it."""
        ctx = self.ctx
        repairs = [(node, newer_points(merged, cols)) for node, cols in answers.items()]
        holding = [node for node, diff in repairs if not len(diff) and node in counted]
        repairs = [(node, diff) for node, diff in repairs if len(diff)]
        if not repairs:
            answer(merged)
            return
        ctx.counters["read_repairs"] += len(repairs)

        def repaired(_answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            for node, (_, message) in errors.items():
                log.warning("Read repair of %s on node %s failed: %s", series, ctx.name_of(node),
                            message)
            holders = holding + [n for n, _ in repairs if n in counted and n not in errors]
            if len(holders) < needed:
                reply(503, f"read of {series}: read repair brought {len(holders)} replicas up "
                           f"to date but the consistency level needs {needed}; retry")
                return
            answer(merged)

        gather = Gather([node for node, _ in repairs], repaired)
        for node, diff in repairs:
            ctx.counters["read_repair_points"] += len(diff)
            log.debug("Read repair of %s: %d points to node %s", series, len(diff),
                      ctx.name_of(node))
            ctx.replicate(node, single_series(series, diff.ts, diff.val, diff.ver), None,
                          gather.callback(node))

    def list_series(self, msg: ListSeries, reply: Reply) -> None:
        ctx = self.ctx
        nodes = [m for m in ctx.ring.members if ctx.alive(m)]

        def done(answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            names: set[str] = set()
            for listed in answers.values():
                if isinstance(listed, list):
                    names.update(n for n in listed if isinstance(n, str))
            if errors:
                log.warning("Query failed: series list missed %d nodes (%s)", len(errors),
                            "; ".join(m for _, m in errors.values()))
            reply(200, sorted(names)[:msg.limit])

        gather = Gather(nodes, done)
        for node in nodes:
            ctx.ask(node, ReplicaSeries(msg.prefix, msg.limit), gather.callback(node))

    # -- what peers ask of this node's replica ---------------------------------------------

    def serve_read(self, msg: ReplicaRead, reply: Reply) -> None:
        """This replica's points, and whether they count for a read: a store still catching
        up says so in the answer itself, since its answer may reach the coordinator after
        the heartbeat that says it has caught up."""
        cols = self.ctx.replica.read(msg.series, msg.start, msg.end)
        body: dict[str, Any] = points_to_wire(cols, versions=True)
        body[COUNTS] = self.counts_for_reads(self.ctx.self_address)
        reply(200, body)

    def serve_series(self, msg: ReplicaSeries, reply: Reply) -> None:
        reply(200, self.ctx.replica.list_series(msg.prefix, msg.limit))
