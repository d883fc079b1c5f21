"""One node's decisions as a state machine: messages and ticks in, a ``Ready`` out.

``NodeCore`` holds everything that decides (membership and the failure detector, the ring,
the links to peers, the write and read paths, hand-off, anti-entropy, cleanup) and does no
I/O of its own: a driver feeds it what arrived (``client``, ``peer_request``, ``peer_reply``,
``gossip``), calls ``tick`` for the timers, and takes ``ready()``: the replies to clients
and peers, the frames to send, the heartbeat to publish, and when to wake it next. Time
and randomness come in through the ``Clock`` and ``random.Random`` it is given; storage is
its own replica's, which it commits once per turn.

Two drivers run it unchanged: the node process's ZeroMQ loop (``count/node_process.py``)
and the simulation (``count/sim/``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from typing import Any

from count.clock import Clock
from count.cluster.antientropy import AntiEntropy
from count.cluster.catchup import CatchUp
from count.cluster.changes import Changes, stored_topology
from count.cluster.cleanup import Cleanup
from count.cluster.context import TOPOLOGY_RECORD, NodeContext
from count.cluster.handoff import HandOff
from count.cluster.hints import HintLog
from count.cluster.membership import Event, Heartbeat, Membership, describe
from count.cluster.placement import Placement
from count.cluster.quorum import once
from count.cluster.reads import Reads
from count.cluster.status import Status
from count.cluster.streaming import Streaming
from count.cluster.topology import Topology
from count.cluster.wire import Result, WireError, pack_reply, unpack_request
from count.cluster.writes import Writes
from count.config import Config
from count.errors import CountError
from count.failsafe import survive
from count.messages import (
    CLIENT_OPERATIONS,
    PEER_OPERATIONS,
    Accept,
    Aggregate,
    BucketPoints,
    ClusterStatus,
    Commit,
    Decommission,
    DigestRanges,
    DigestSeries,
    Endpoints,
    Health,
    Insert,
    JoinRequest,
    ListSeries,
    Live,
    Message,
    Prepare,
    Readiness,
    ReadRange,
    RemoveNode,
    Repair,
    ReplicaRead,
    ReplicaSeries,
    ReplicaWrite,
    Reply,
    Stats,
    StreamRanges,
    TopologyGet,
    decode,
)
from count.replica import LocalReplica

log = logging.getLogger("count.node")

# A node that has had no request for this long is idle (compaction may run at full pace).
IDLE_AFTER_S = 1.0
# While streaming, the node looks at its sources this often (pages also come on replies).
STREAM_WAKE_S = 0.05
_WARN_EVENTS = ("unreachable", "partition", "config_mismatch", "local_pause")
# Client operations on data: refused by a node that is no member (yet) of a cluster.
_DATA_OPERATIONS = (Insert, ReadRange, Aggregate, ListSeries, Endpoints, Repair)

Handler = Callable[[Any, Reply], None]


@dataclasses.dataclass
class Ready:
    """What a turn produced, for the driver to carry out."""

    replies: list[tuple[Any, int, Any]]  # (client token, status, body)
    sends: list[tuple[str, bytes]]  # (peer address, request frame)
    answers: list[tuple[Any, bytes]]  # (peer request token, reply frame)
    publish: list[bytes]  # heartbeat frames
    wake_s: float | None  # monotonic time the next timer is due (None: nothing pending)
    more_work: bool  # storage upkeep is waiting: call tick again without sleeping


class NodeCore:
    def __init__(self, config: Config, self_address: str, replica: LocalReplica, clock: Clock,
                 rng: random.Random) -> None:
        heartbeat_s = config.heartbeat_interval_ms / 1000
        membership = Membership(
            self_address, config.node_id, [self_address], heartbeat_interval_s=heartbeat_s,
            # One late heartbeat must never be taken for a failure.
            failure_timeout_s=max(config.failure_timeout_ms,
                                  2 * config.heartbeat_interval_ms) / 1000)
        topology, confirmed = _starting_topology(config, self_address, replica)
        self.ctx = ctx = NodeContext(config, self_address, replica, clock, rng, topology,
                                     confirmed, membership, HintLog(replica.storage))
        if confirmed and replica.storage.meta_get(TOPOLOGY_RECORD) is None:
            ctx.save_topology()  # a lone node's one-member record
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        placement = Placement(ctx)
        self.writes = Writes(ctx, placement)
        self.catchup = CatchUp(ctx)
        self.reads = Reads(ctx, placement, self.catchup.counts_for_reads)
        self.handoff = HandOff(ctx)
        self.anti_entropy = AntiEntropy(ctx, self.catchup)
        self.cleanup = Cleanup(ctx, placement, self.anti_entropy)
        self.streaming = Streaming(ctx, self.catchup)
        self.changes = Changes(ctx, self.streaming)
        self.status = Status(ctx, placement, self.anti_entropy, self.catchup, self.streaming)
        self._client_handlers: dict[type[Message], Handler] = {
            Insert: self.writes.insert,
            ReadRange: self.reads.read_range,
            Aggregate: self.reads.aggregate,
            ListSeries: self.reads.list_series,
            Health: self.status.health,
            Readiness: self.status.readiness,
            Live: self.status.live,
            Stats: self.status.stats,
            Endpoints: self.status.endpoints,
            ClusterStatus: self.status.cluster_status,
            Repair: lambda msg, reply: self.anti_entropy.start_now(reply),
            Decommission: self.changes.decommission,
            RemoveNode: self.changes.removenode,
        }
        self._peer_handlers: dict[type[Message], Handler] = {
            ReplicaWrite: self.writes.serve,
            ReplicaRead: self.reads.serve_read,
            ReplicaSeries: self.reads.serve_series,
            DigestRanges: self.anti_entropy.serve_ranges,
            DigestSeries: self.anti_entropy.serve_series,
            BucketPoints: self.anti_entropy.serve_points,
            TopologyGet: self.changes.serve_topology,
            Prepare: self.changes.serve_prepare,
            Accept: self.changes.serve_accept,
            Commit: self.changes.serve_commit,
            JoinRequest: self.changes.serve_join,
            StreamRanges: self.streaming.serve,
        }
        assert set(self._client_handlers) == set(CLIENT_OPERATIONS.values())
        assert set(self._peer_handlers) == set(PEER_OPERATIONS.values())
        ctx.serve = self._serve_peer_op
        self.generation = clock.wall_ms()
        self.seq = 0
        self._next_heartbeat_s = clock.monotonic_s()
        self._last_request_s = clock.monotonic_s()
        self._replies: list[tuple[Any, int, Any]] = []
        self._answers: list[tuple[Any, bytes]] = []
        self._publish: list[bytes] = []
        self._more_work = False
        self.rejected = 0

    # -- inputs ----------------------------------------------------------------------------

    def client(self, token: Any, tag: str, args: dict[str, Any]) -> None:
        """A request from an HTTP worker; it is answered once, in this or a later Ready."""
        def to_client(status: int, body: Any) -> None:
            self._replies.append((token, status, body))
        reply = once(to_client)
        self._last_request_s = self.clock.monotonic_s()
        try:
            msg = decode(CLIENT_OPERATIONS, tag, args)
        except CountError as exc:
            reply(exc.status, str(exc))
            return
        if isinstance(msg, _DATA_OPERATIONS) and not self._serves_data():
            reply(503, self._why_no_data())
            return
        self._run(self._client_handlers[type(msg)], msg, reply, tag)

    def _serves_data(self) -> bool:
        ctx = self.ctx
        return ctx.single or (ctx.confirmed and ctx.is_member() and self.exit_code is None)

    def _why_no_data(self) -> str:
        ctx = self.ctx
        if self.exit_code is not None:
            return "this node has left the cluster"
        if not ctx.confirmed:
            return ("this node is waiting for another member to confirm CLUSTER_NODES (a new "
                    "cluster), or to learn the cluster's topology from one")
        return "this node is not a member yet: it is asking a member to let it join"

    def peer_request(self, token: Any, frame: bytes | memoryview) -> None:
        """A peer's message of operations; answered with one result per operation, in order,
        once all are done. A frame that is no message is dropped (the peer times out)."""
        try:
            _sender, message_id, ops = unpack_request(frame)
        except WireError as exc:
            self.rejected += 1
            log.warning("Rejected a malformed message from a peer: %s", exc)
            return
        self._last_request_s = self.clock.monotonic_s()
        results: list[Result | None] = [None] * len(ops)
        remaining = [len(ops)]

        def slot(i: int) -> Reply:
            def put(status: int, body: Any) -> None:
                results[i] = (status, body)
                remaining[0] -= 1
                if remaining[0] == 0:
                    done = [r for r in results if r is not None]
                    self._answers.append((token, pack_reply(message_id, done)))
            return once(put)

        if not ops:
            self._answers.append((token, pack_reply(message_id, [])))
        for i, (tag, args) in enumerate(ops):
            try:
                msg = decode(PEER_OPERATIONS, tag, args)
            except CountError as exc:
                slot(i)(exc.status, str(exc))
                continue
            self._run(self._peer_handlers[type(msg)], msg, slot(i), tag)

    def peer_reply(self, peer: str, frame: bytes | memoryview) -> None:
        """The reply to the message in flight to ``peer``."""
        link = self.ctx.links.get(peer)
        if link is not None:
            link.receive(frame)

    def gossip(self, frame: bytes | memoryview) -> None:
        """A heartbeat from a peer (a malformed one is dropped)."""
        beat = Heartbeat.unpack(frame)
        if beat is None:
            self.rejected += 1
            return
        self._on_events(self.ctx.membership.receive(beat, self.clock.monotonic_s()))
        self.catchup.heard(beat.address, beat.load.get("points", 0))
        self.changes.heard(beat)

    def tick(self) -> None:
        """Run the timers that are due: heartbeat and failure detector, hand-off,
        anti-entropy, cleanup, storage upkeep."""
        ctx = self.ctx
        now = self.clock.monotonic_s()
        if ctx.links and now >= self._next_heartbeat_s:
            self._next_heartbeat_s = now + self.heartbeat_s
            state = "syncing" if self.catchup.syncing else "normal"
            self._publish.append(self._heartbeat(state).pack())
            self._on_events(ctx.membership.tick(now))
        try:
            self.changes.step(now)
            self.streaming.step(now)
            self.handoff.step(now)
            self.anti_entropy.step(now)
            self.cleanup.step(now)
        except Exception:
            survive(log, "Background cluster work failed; retrying next turn")
        ctx.finish_turn()
        idle = now - self._last_request_s >= IDLE_AFTER_S
        self._more_work = ctx.replica.maintain(idle)

    # -- outputs ---------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[str, bytes]]:
        """The frames the links have to send now (a driver may take them before ``ready``,
        so that replica writes leave before this node's own commit)."""
        now = self.clock.monotonic_s()
        sends = []
        for peer, link in self.ctx.links.items():
            if link.busy:
                frame = link.poll(now)
                if frame is not None:
                    sends.append((peer, frame[1]))
        return sends

    def ready(self) -> Ready:
        """Commit the turn's writes, then hand over everything the turn produced."""
        self.ctx.finish_turn()
        sends = self.outgoing()
        replies, self._replies = self._replies, []
        answers, self._answers = self._answers, []
        publish, self._publish = self._publish, []
        return Ready(replies, sends, answers, publish, self._wake_s(), self._more_work)

    def _wake_s(self) -> float | None:
        ctx = self.ctx
        due = [d for link in ctx.links.values() if (d := link.next_deadline_s()) is not None]
        if ctx.links:
            due.append(self._next_heartbeat_s)
        if self.streaming.pending():
            due.append(self.clock.monotonic_s() + STREAM_WAKE_S)
        for wake in (self.handoff.next_wake_s(), self.anti_entropy.next_wake_s(),
                     self.cleanup.next_wake_s(), self.changes.next_wake_s()):
            if wake is not None:
                due.append(wake)
        storage_wake = ctx.replica.next_wakeup_s()
        if storage_wake is not None:
            due.append(self.clock.monotonic_s() + storage_wake)
        return min(due) if due else None

    def leave(self) -> bytes:
        """The last heartbeat of a clean shutdown: peers mark this node down at once."""
        return self._heartbeat("leaving").pack()

    @property
    def exit_code(self) -> int | None:
        """Set once this node has left the cluster: the driver stops and exits with it."""
        return self.changes.exit_code

    def peers(self) -> tuple[int, list[str]]:
        """(a version that changes when they do, the peers this node talks to)."""
        return self.ctx.version, list(self.ctx.links)

    # -- internals -------------------------------------------------------------------------

    def _heartbeat(self, state: str) -> Heartbeat:
        self.seq += 1
        ctx = self.ctx
        return Heartbeat(ctx.config.node_id, ctx.self_address, self.generation,
                         self.seq, state, ctx.topology.digest(), self.status.load(),
                         ctx.topology.epoch if ctx.confirmed else 0, self.streaming.streamed)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            (log.warning if event.kind in _WARN_EVENTS else log.info)("%s", describe(event))
            if event.kind in ("unreachable", "leaving"):
                link = self.ctx.links.get(event.address)
                if link is not None:
                    link.fail_all(f"node {self.ctx.name_of(event.address)} is down")
            if event.kind in ("joining", "restarted", "back_online"):
                self.ctx.learn_id(event.address, event.node_id)

    def _serve_peer_op(self, msg: Message, reply: Reply) -> None:
        self._run(self._peer_handlers[type(msg)], msg, reply, msg.TAG)

    def _run(self, handler: Handler, msg: Message, reply: Reply, tag: str) -> None:
        try:
            handler(msg, reply)
        except CountError as exc:
            reply(exc.status, str(exc))
        except Exception:
            survive(log, "Query failed: %s", tag)
            reply(500, "internal error; see the node's log")


def _starting_topology(config: Config, self_address: str, replica: LocalReplica
                       ) -> tuple[Topology, bool]:
    """The topology a node starts with, and whether it is stored (else only configured)."""
    stored = stored_topology(replica.storage.meta_get(TOPOLOGY_RECORD))
    if stored is not None:
        listed = set(config.members()) if config.cluster_enabled else set()
        for address in sorted(listed - set(stored.active())):
            if address != self_address:
                log.info("CLUSTER_NODES lists %s, which is no member: a new node joins by "
                         "starting with itself and a live member in its CLUSTER_NODES; nothing "
                         "changes here", address)
        for address in sorted(set(stored.owners()) - listed) if listed else ():
            log.warning("CLUSTER_NODES does not list %s, which is a member: the ring is "
                        "cluster state. If it was taken out of this list, it is removed once "
                        "it stops (the guide's manual removal); `count decommission` on it, or "
                        "`count removenode ID` if it is dead, do the same at once", address)
        return stored, True
    alone = not config.cluster_enabled or config.members() == [self_address]
    if alone:  # a single node, or the first of a cluster others will join: nobody to ask
        return Topology.initial([self_address], {self_address: config.node_id}), True
    return Topology.initial(config.members(), {self_address: config.node_id}), False
