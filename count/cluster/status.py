"""What a node says about itself and the cluster: /health, /stats, /cluster/endpoints,
/cluster/status, and the load its heartbeat carries."""

from __future__ import annotations

from typing import Any

from count.cluster.antientropy import AntiEntropy
from count.cluster.catchup import CatchUp
from count.cluster.context import NodeContext
from count.cluster.placement import Placement
from count.messages import ClusterStatus, Endpoints, Health, Reply, Stats


class Status:
    def __init__(self, ctx: NodeContext, placement: Placement, anti_entropy: AntiEntropy,
                 catchup: CatchUp) -> None:
        self.ctx = ctx
        self.catchup = catchup
        self.placement = placement
        self.anti_entropy = anti_entropy

    def load(self) -> dict[str, Any]:
        """What this node's heartbeat says about it."""
        storage = self.ctx.replica.storage
        return {"points": storage.points_estimate(), "bytes": storage.file_bytes(),
                "hints": self.ctx.hints.pending()}

    def health(self, msg: Health, reply: Reply) -> None:
        membership = self.ctx.membership
        reply(200, {"status": membership.health(), "node_id": self.ctx.config.node_id,
                    "cluster_size": membership.alive_count()})

    def stats(self, msg: Stats, reply: Reply) -> None:
        ctx = self.ctx
        stats = ctx.replica.stats()
        stats.update(ctx.counters, hints_pending=sum(ctx.hints.pending().values()),
                     anti_entropy=self.anti_entropy.progress())
        reply(200, stats)

    def endpoints(self, msg: Endpoints, reply: Reply) -> None:
        reply(200, {"series": msg.series,
                    "replicas": [self.ctx.name_of(a) for a in self.placement.replicas(msg.series)]})

    def cluster_status(self, msg: ClusterStatus, reply: Reply) -> None:
        ctx = self.ctx
        members = []
        own = self.load()
        owns = ctx.ring.ownership(ctx.rf)
        for view in ctx.membership.view(ctx.now_s()):
            load = own if view.is_self else view.load
            state = view.state
            if view.is_self and self.catchup.syncing:
                state = "syncing"
            members.append({
                "node_id": view.node_id, "address": view.address, "state": state,
                "alive": view.alive, "self": view.is_self,
                "heartbeat_age_s": None if view.heartbeat_age_s is None
                else round(view.heartbeat_age_s, 3),
                "ownership": round(owns.get(view.address, 0.0), 4),
                "points": load.get("points"), "bytes": load.get("bytes"),
                "hints_pending": sum(load.get("hints", {}).values()),
            })
        reply(200, {"node_id": ctx.config.node_id, "address": ctx.self_address,
                    "status": ctx.membership.health(),
                    "cluster_size": ctx.membership.alive_count(),
                    "replication_factor": ctx.rf,
                    "ring": ctx.ring.digest(), "members": members})
