"""Catching up after a lost disk: a node whose store is new does not answer reads as a
replica until it has compared with every peer it shares ring ranges with.

A node started on an empty data directory may be new, or may be a member whose disk was
wiped; it cannot tell. Until anti-entropy has compared it, without an error, with each
replica peer, its empty or partial view must not count towards a read's consistency level,
or a read at one could answer with none of the points every replica acknowledged (and a
quorum read with fewer than an earlier one). Writes go to it as usual. Its heartbeat says
"syncing", so that other coordinators do not count it either. A brand-new cluster has
nothing to catch up on: when the first heartbeat heard from every replica peer says it
holds no points, the node is caught up at once. A store is caught up once
it holds the record saying so, written only after those comparisons: a crash in between,
or a store from before this record existed, catches up (again) at its next start. The
comparison runs whatever ANTI_ENTROPY_INTERVAL_SECONDS is: it is part of starting, as
Cassandra's bootstrap is.
"""

from __future__ import annotations

import logging

from count.cluster.context import NodeContext
from count.errors import CountError

log = logging.getLogger("count.cluster")

RECORD = "caught_up"
# While catching up, a new anti-entropy round starts this long after the last one ended.
RETRY_S = 1.0


class CatchUp:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._peers_version = -1
        self._peers: list[str] = []
        self.syncing = bool(self.peers) and ctx.replica.storage.meta_get(RECORD) is None
        self.compared: set[str] = set()
        self._empty: set[str] = set()  # peers whose first heartbeat said they hold nothing
        self._heard: set[str] = set()
        if self.syncing:
            log.info("Node %s catching up: its store is new (or wiped), so it answers no read as a "
                     "replica until it has compared with its %d replica peers",
                     ctx.config.node_id, len(self.peers))

    @property
    def peers(self) -> list[str]:
        """The members this node shares ring ranges with (none while it owns none)."""
        ctx = self.ctx
        if self._peers_version != ctx.version:
            self._peers_version = ctx.version
            me = ctx.self_address
            self._peers = [m for m in ctx.ring.members if m != me and me in ctx.ring.members
                           and ctx.ring.shared_ranges(me, m, ctx.rf)]
        return self._peers

    def streamed(self) -> None:
        """This node fetched every range it joined for: it holds what its replicas hold."""
        self.compared.update(self.peers)
        self._record()
        if self.syncing:
            self._check()

    def _record(self) -> None:
        self.ctx.replica.storage.meta_put(RECORD, b"1")

    def counts_for_reads(self, address: str) -> bool:
        """Whether a replica's answer counts towards a read's consistency level."""
        if address == self.ctx.self_address:
            return not self.syncing
        return self.ctx.alive(address) and self.ctx.membership.state(address) != "syncing"

    def heard(self, address: str, points: int) -> None:
        """A peer's heartbeat: the first one heard from each peer says whether it has data
        (one that had none when this node was already listening has none it could lack)."""
        if not self.syncing or address in self._heard or address not in self.peers:
            return
        self._heard.add(address)
        if points == 0:
            self._empty.add(address)
        if len(self._empty) == len(self.peers):
            self.compared.update(self._empty)
            self._check()

    def round_finished(self, compared: list[str]) -> None:
        """An anti-entropy round compared with these peers to the end, without an error."""
        if self.syncing:
            self.compared.update(compared)
            self._check()

    def _check(self) -> None:
        missing = [p for p in self.peers if p not in self.compared]
        if missing:
            return
        try:
            self._record()
        except CountError as exc:
            log.warning("Could not record that this node caught up (%s); it stays out of "
                        "reads until it can", exc)
            return
        self.syncing = False
        log.info("Node %s caught up: compared with every replica peer; it answers reads again",
                 self.ctx.config.node_id)
