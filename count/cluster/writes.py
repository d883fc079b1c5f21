"""The write path of the cluster: a client insert coordinated on this node, and the replica
writes peers send it.

The coordinator gives the insert one write version, places it on the ring, sends each part
to its targets in parallel and answers once every replica group reached the consistency
level (``Quorum``). A node without a majority of the members refuses writes at once.
"""

from __future__ import annotations

import logging
from typing import Any

from count.cluster.context import NodeContext
from count.cluster.placement import Placement
from count.cluster.quorum import Quorum, required
from count.errors import Unavailable
from count.messages import Insert, ReplicaWrite, Reply

log = logging.getLogger("count.cluster")

DEFAULT_LEVEL = "quorum"


class Writes:
    def __init__(self, ctx: NodeContext, placement: Placement) -> None:
        self.ctx = ctx
        self.placement = placement

    def insert(self, msg: Insert, reply: Reply) -> None:
        ctx = self.ctx
        level = msg.consistency or DEFAULT_LEVEL
        membership = ctx.membership
        if not membership.has_majority():
            ctx.counters["writes_refused"] += 1
            raise Unavailable(
                f"network partition: this node sees {membership.alive_voters()} of "
                f"{membership.size} members alive, fewer than a majority, so it refuses "
                "writes; send them to a node on the majority side")
        write = msg.with_version(ctx.replica.clock.next())
        parts, sizes = self.placement.place(write)
        if level == "all":
            # ALL means every real replica, as in Cassandra: a stand-in still takes the
            # points and a hint, but does not count.
            sizes = [0] * len(sizes)
            for _, hint, _, groups in parts:
                for g in groups if hint is None else ():
                    sizes[g] += 1
            parts = [(node, hint, part, groups if hint is None else [])
                     for node, hint, part, groups in parts]
        needed = required(level, ctx.rf)
        if min(sizes) < needed:
            raise Unavailable(f"only {min(sizes)} of {ctx.rf} replicas are reachable but "
                              f"consistency={level} needs {needed}")
        ctx.counters["inserts"] += 1
        quorum = Quorum(reply, sizes, needed, level, ctx.rf, msg.points())
        for node, hint, part, groups in parts:
            ctx.replicate(node, part, hint, self._ack(quorum, groups, node))

    def _ack(self, quorum: Quorum, groups: list[int], node: str) -> Reply:
        def on_result(status: int, body: Any) -> None:
            detail = (str(body) if node == self.ctx.self_address
                      else f"node {self.ctx.name_of(node)}: {body}")
            quorum.result(groups, status, detail)
        return on_result

    def serve(self, msg: ReplicaWrite, reply: Reply) -> None:
        """A peer's replica write, hint, repair or stream: stored with its own versions.

        A hint may name a node this node does not count as a member yet (a topology change
        the coordinator has learned first): the points are stored and the hint kept all the
        same; it is handed off once that node is a member here."""
        hint = msg.hint
        if hint is not None and hint not in self.ctx.topology.active():
            self.ctx.warn(hint, f"Keeping a hint for node {hint}, which is no member in this "
                                "node's topology yet")
        self.ctx.write_here(msg.write, hint, reply)
