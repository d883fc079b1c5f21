"""What every part of one node's cluster logic shares, and the few primitives they act by.

The parts (writes, reads, hand-off, anti-entropy, status) never wait and never do I/O: they
ask peers through ``ask`` (a ``PeerLink`` carries the operation; this node's own operations
run after the turn's commit), write to this node's replica through ``write_here`` (queued
for the turn's one commit), and learn the time from the clock they are given. ``finish_turn``
commits the queued writes together, then runs what waited for them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import msgpack

from count.clock import Clock
from count.cluster.hints import HintLog
from count.cluster.link import PeerLink
from count.cluster.membership import Membership
from count.cluster.ring import Ring
from count.cluster.topology import Topology
from count.config import Config
from count.errors import CountError
from count.failsafe import survive
from count.messages import Message, ReplicaWrite, Reply
from count.replica import LocalReplica
from count.storage.writes import WriteRequest

log = logging.getLogger("count.cluster")

# Rounds of commit -> callbacks in one turn (a read's repair of this node is the second).
TURN_ROUNDS_MAX = 4
# Writes queued for one turn's commit; past it the turn commits early (bounds one commit).
TURN_WRITES_MAX = 8192
# Replication failures of one peer are logged at most once per this many seconds.
WARN_EVERY_S = 5.0
MEMBER_IDS_RECORD = "member_ids"
TOPOLOGY_RECORD = "topology"


def _ignore(status: int, body: Any) -> None:
    """The reply of a write nobody waits for (a hint kept after a failed replica write)."""


class NodeContext:
    def __init__(self, config: Config, self_address: str, replica: LocalReplica, clock: Clock,
                 rng: random.Random, topology: Topology, confirmed: bool,
                 membership: Membership, hints: HintLog) -> None:
        self.config = config
        self.self_address = self_address
        self.replica = replica
        self.clock = clock
        self.rng = rng
        self.membership = membership
        self.links: dict[str, PeerLink] = {}
        self.hints = hints
        # Bumped whenever the topology changes: what is cached per ring keys on it.
        self.version = 0
        # How this node serves a peer operation; set by the node that owns this context.
        self.serve: Callable[[Message, Reply], None] = _unserved
        self.counters = {"inserts": 0, "reads": 0, "replica_writes_failed": 0,
                         "hints_stored": 0, "hinted_points_delivered": 0,
                         "read_repairs": 0, "read_repair_points": 0, "writes_refused": 0,
                         "cleanup_series_dropped": 0, "cleanup_points_dropped": 0}
        known = replica.storage.meta_get(MEMBER_IDS_RECORD)
        self.member_ids: dict[str, int | str] = msgpack.unpackb(known) if known else {}
        self._writes: list[tuple[WriteRequest, str | None, Reply]] = []
        self._after_commit: list[Callable[[], None]] = []
        self._warned_s: dict[str, float] = {}
        self.set_topology(topology, confirmed)

    # -- the topology ----------------------------------------------------------------------

    def set_topology(self, topology: Topology, confirmed: bool) -> None:
        """Take ``topology`` as this node's: its rings, whom it tracks and links to.

        ``confirmed``: stored, not merely read from CLUSTER_NODES (a node whose record is
        only configured serves no client until a member confirms it)."""
        self.topology = topology
        self.confirmed = confirmed
        self.version += 1
        owners = topology.owners()
        self.ring = Ring(owners or [self.self_address])
        self.rf = min(self.config.replication_factor, len(self.ring.members))
        self.single = not self.config.cluster_enabled
        changing = topology.changing()
        self.future_ring = Ring(topology.future()) if changing is not None else None
        self.future_rf = (self.rf if self.future_ring is None else
                          min(self.config.replication_factor, len(self.future_ring.members)))
        members = topology.active()
        if self.self_address not in members:
            members.append(self.self_address)
        # An unconfirmed record is compared with others' as epoch 0: only two unconfirmed
        # nodes configured differently are a mismatch (a joiner's list differs by design).
        self.membership.set_members(members, owners, topology.digest(),
                                    topology.epoch if confirmed else 0)
        for address in [a for a in self.links if a not in members]:
            self.links.pop(address).fail_all(f"node {self.name_of(address)} left the cluster")
        for address in members:
            if address != self.self_address and address not in self.links:
                self.links[address] = PeerLink(self.self_address, address,
                                               self.config.replica_timeout_ms / 1000,
                                               self.config.replica_retries)

    def is_member(self) -> bool:
        """Whether this node is in its topology, joining or owning ranges."""
        return self.topology.state(self.self_address) in ("joining", "normal", "leaving")

    def save_topology(self) -> None:
        """Store the topology (raises CountError if storage refuses: the caller decides)."""
        self.replica.storage.meta_put(TOPOLOGY_RECORD, msgpack.packb(self.topology.to_wire()))

    # -- who is who ------------------------------------------------------------------------

    def now_s(self) -> float:
        return self.clock.monotonic_s()

    def alive(self, address: str) -> bool:
        return self.membership.alive(address)

    def name_of(self, address: str) -> int | str:
        """A member as operators know it: its NODE_ID, else its address."""
        node_id = self.membership.node_id(address)
        if node_id is None:
            node_id = self.member_ids.get(address)
        if node_id is None:
            member = self.topology.member(address)
            node_id = None if member is None else member.node_id
        return address if node_id is None else node_id

    def learn_id(self, address: str, node_id: int | str | None) -> None:
        """Remember a member's NODE_ID (from its heartbeat) across restarts, and in the
        topology record (whose digest leaves ids out), so that endpoints, status and
        removenode name a member by id even before it is heard from again, and nodes that
        fetch the record (a wiped one) learn the ids with it."""
        if node_id is None or self.member_ids.get(address) == node_id:
            return
        self.member_ids[address] = node_id
        member = self.topology.member(address)
        try:
            self.replica.storage.meta_put(MEMBER_IDS_RECORD, msgpack.packb(self.member_ids))
            if member is not None and member.node_id != node_id:
                self.topology = self.topology.with_ids({address: node_id})
                if self.confirmed:
                    self.save_topology()
        except CountError as exc:
            log.warning("Could not record the id of node %s: %s", node_id, exc)

    def warn(self, node: str, message: str) -> None:
        """Log a failure concerning ``node``, at most once per WARN_EVERY_S."""
        now = self.now_s()
        if now - self._warned_s.get(node, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned_s[node] = now
            log.warning("%s", message)

    # -- acting ----------------------------------------------------------------------------

    def ask(self, node: str, op: Message, reply: Reply) -> None:
        """Run a peer operation on ``node``: this node after the commit, or over its link."""
        if node == self.self_address:
            self.after_commit(lambda: self.serve(op, reply))
        elif not self.alive(node):
            reply(503, f"node {self.name_of(node)} is down")
        else:
            self.links[node].submit(op, reply)

    def hint_allowed(self, target: str) -> bool:
        """Whether a hint may still be kept for ``target`` (down less than the hint window)."""
        window_s = self.config.max_hint_window_seconds
        down = self.membership.down_since_s(target)
        return window_s > 0 and (down is None or self.now_s() - down < window_s)

    def replicate(self, node: str, write: WriteRequest, hint: str | None, reply: Reply) -> None:
        """Write to one node (this one or a peer); a failed replica write leaves a hint here.

        ``hint`` names the replica a stand-in writes for. Past that replica's hint window the
        stand-in still takes the points (they count for the write) but keeps no hint: the
        live replicas and anti-entropy repair the replica when it is back."""
        stands_for = hint
        if hint is not None and not self.hint_allowed(hint):
            hint = None
        if node == self.self_address:
            self.write_here(write, hint, reply)
            return

        def on_result(status: int, body: Any) -> None:
            if status >= 300:
                self.counters["replica_writes_failed"] += 1
                target = stands_for or node
                self.warn(node, f"Replication to node {self.name_of(node)} failed: {body}")
                if status in (503, 507) and self.hint_allowed(target):
                    self.write_here(write, target, _ignore)
            reply(status, body)

        self.ask(node, ReplicaWrite(write, hint), on_result)

    def write_here(self, write: WriteRequest, hint: str | None, reply: Reply) -> None:
        """Queue a write to this node's replica for this turn's commit."""
        self._writes.append((write, hint, reply))
        if len(self._writes) >= TURN_WRITES_MAX:
            self._commit()

    def after_commit(self, thunk: Callable[[], None]) -> None:
        """Run ``thunk`` once this turn's writes are committed (reads see this turn's writes)."""
        self._after_commit.append(thunk)

    def finish_turn(self) -> None:
        """Commit every write queued this turn at once, then run what waited for it."""
        for _ in range(TURN_ROUNDS_MAX):
            if not self._writes and not self._after_commit:
                return
            if self._writes:
                self._commit()
            thunks, self._after_commit = self._after_commit, []
            for thunk in thunks:
                try:
                    thunk()
                except Exception:
                    survive(log, "Query failed after commit")

    def _commit(self) -> None:
        writes, self._writes = self._writes, []
        status, body = self.replica.commit([w for w, _, _ in writes])
        hinted = [(hint, w) for w, hint, _ in writes if hint is not None]
        if status < 300 and hinted:
            try:
                self.hints.add(hinted, self.clock.wall_ms() / 1000)
                self.counters["hints_stored"] += len(hinted)
            except CountError as exc:
                status, body = exc.status, str(exc)
        for _, _, reply in writes:
            reply(status, body)


def _unserved(op: Message, reply: Reply) -> None:
    raise AssertionError(f"no server for {op.TAG}")
