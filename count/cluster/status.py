"""What a node says about itself and the cluster: /health, /ready, /live, /stats,
/cluster/endpoints, /cluster/status, and the load its heartbeat carries."""

from __future__ import annotations

from typing import Any

from count.cluster import health
from count.cluster.antientropy import AntiEntropy
from count.cluster.catchup import CatchUp
from count.cluster.context import NodeContext
from count.cluster.membership import MemberView
from count.cluster.placement import Placement
from count.cluster.streaming import Streaming
from count.messages import ClusterStatus, Endpoints, Health, Live, Readiness, Reply, Stats


def _label(name: int | str, address: str) -> str:
    return f"the node at {address}" if name == address else f"node {name} ({address})"


def _by_id(view: MemberView) -> tuple[int, int, str]:
    """Members by NODE_ID, numbers first, as operators number them."""
    node_id = view.node_id
    if type(node_id) is int:
        return (0, node_id, view.address)
    return (1, 0, str(node_id or view.address))


def _streamed(ctx: NodeContext, address: str) -> int | None:
    beat = ctx.membership.latest(address)
    return None if beat is None else beat.streamed


class Status:
    def __init__(self, ctx: NodeContext, placement: Placement, anti_entropy: AntiEntropy,
                 catchup: CatchUp, streaming: Streaming) -> None:
        self.ctx = ctx
        self.streaming = streaming
        self.catchup = catchup
        self.placement = placement
        self.anti_entropy = anti_entropy

    def load(self) -> dict[str, Any]:
        """What this node's heartbeat says about it."""
        storage = self.ctx.replica.storage
        return {"points": storage.points_estimate(), "bytes": storage.file_bytes(),
                "hints": self.ctx.hints.pending()}

    def node_state(self) -> health.NodeState:
        """What /health and /ready judge: liveness of the members, storage, catching up."""
        ctx = self.ctx
        membership = ctx.membership
        down = tuple(_label(ctx.name_of(m), m) for m in membership.members
                     if not membership.alive(m))
        return health.NodeState(alive=membership.alive_voters(), members=membership.size,
                                down=down, storage_problem=ctx.replica.storage_problem(),
                                syncing=self.catchup.syncing)

    def _body(self, state: health.NodeState, judgement: health.Judgement) -> dict[str, Any]:
        return {"status": judgement.status, "node_id": self.ctx.config.node_id,
                "cluster_size": state.alive, "members": state.members,
                "storage": "ok" if state.storage_problem is None else "failing",
                "syncing": state.syncing, "reasons": list(judgement.reasons)}

    def health(self, msg: Health, reply: Reply) -> None:
        """Always answered 200 by the node; the HTTP front makes ``unhealthy`` a 503."""
        state = self.node_state()
        reply(200, self._body(state, health.health(state)))

    def readiness(self, msg: Readiness, reply: Reply) -> None:
        state = self.node_state()
        reply(200, self._body(state, health.readiness(state)))

    def live(self, msg: Live, reply: Reply) -> None:
        reply(200, {"status": "live", "node_id": self.ctx.config.node_id})

    def stats(self, msg: Stats, reply: Reply) -> None:
        ctx = self.ctx
        stats = ctx.replica.stats()
        stats.update(ctx.counters, hints_pending=sum(ctx.hints.pending().values()),
                     anti_entropy=self.anti_entropy.progress(),
                     streaming=self.streaming.progress())
        reply(200, stats)

    def endpoints(self, msg: Endpoints, reply: Reply) -> None:
        reply(200, {"series": msg.series,
                    "replicas": [self.ctx.name_of(a) for a in self.placement.replicas(msg.series)]})

    def cluster_status(self, msg: ClusterStatus, reply: Reply) -> None:
        ctx = self.ctx
        members = []
        own = self.load()
        owns = ctx.ring.ownership(ctx.rf)
        topology = ctx.topology
        for view in sorted(ctx.membership.view(ctx.now_s()), key=_by_id):
            load = own if view.is_self else view.load
            state = view.state
            if view.is_self and self.catchup.syncing:
                state = "syncing"
            members.append({
                "node_id": view.node_id, "address": view.address,
                "ring_state": topology.state(view.address) or "not a member",
                "state": state, "alive": view.alive, "self": view.is_self,
                "heartbeat_age_s": None if view.heartbeat_age_s is None
                else round(view.heartbeat_age_s, 3),
                "ownership": round(owns.get(view.address, 0.0), 4),
                "points": load.get("points"), "bytes": load.get("bytes"),
                "hints_pending": sum(load.get("hints", {}).values()),
                "streaming": self.streaming.progress() if view.is_self
                else {"streamed_epoch": _streamed(ctx, view.address)},
            })
        reply(200, {"node_id": ctx.config.node_id, "address": ctx.self_address,
                    "status": ctx.membership.health(),
                    "cluster_size": ctx.membership.alive_voters(),
                    "replication_factor": ctx.rf, "epoch": topology.epoch,
                    "confirmed": ctx.confirmed,
                    "change": None if topology.changing() is None else {
                        "node_id": ctx.name_of(topology.changing().address),  # type: ignore[union-attr]
                        "state": topology.changing().state},  # type: ignore[union-attr]
                    "ring": ctx.ring.digest(), "members": members})
