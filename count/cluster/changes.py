"""Membership changes: learning the topology, joining, leaving, removing, and ending each.

Every change is a proposal of the next epoch (``consensus.Proposal``), made by whichever node
wants it, one at a time per node (others wait in a bounded queue):

- **join**: a node that is no member (a new data directory; its CLUSTER_NODES names itself
  and one or more live members) asks a live member (``JoinRequest``) to propose it
  ``joining``, again every JOIN_RETRY_S until it is in. A node with no stored topology
  first learns one: a heartbeat of another epoch or ring makes it fetch the sender's
  (``TopologyGet``); a committed record naming it is adopted (a wiped member), one without
  it makes it join; two unstored records from the same CLUSTER_NODES confirm each other
  (a new cluster's epoch 1).
- **decommission**: the node proposes itself ``leaving``; **removenode**: any node proposes
  a dead member ``leaving``.
- **the end of a change**: once every member that gains ranges says in its heartbeat that
  it has streamed them (``streaming.py``), the member changing (or, if it is down, the
  first live owner) proposes it ``normal`` or ``left``. A decommissioned node exits then.

A node that learns it has left stops serving and asks its driver to exit (``exit_code``).
Pure: peers through ``ctx.ask``, time through the context's clock.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from count.cluster.consensus import Acceptor, Ballot, Promise, Proposal
from count.cluster.context import NodeContext
from count.cluster.membership import Heartbeat
from count.cluster.ring import moves
from count.cluster.streaming import Streaming
from count.cluster.topology import Topology, TopologyError
from count.errors import Conflict, CountError, NotFound, Unavailable
from count.messages import (
    Accept,
    Commit,
    Decommission,
    JoinRequest,
    Prepare,
    RemoveNode,
    Reply,
    TopologyGet,
)

log = logging.getLogger("count.cluster")

PAXOS_RECORD = "paxos"
LISTED_RECORD = "cluster_nodes"
CHANGES_QUEUED_MAX = 16
# A proposal that lost to another (or found no majority) is tried again, this many times.
ATTEMPTS_MAX = 20
RETRY_S = 0.5
JOIN_RETRY_S = 2.0
FINISH_CHECK_S = 1.0
WAITING_LOG_S = 30.0
# A member taken out of CLUSTER_NODES is removed once it is seen going down, or if it has
# not been heard at all this long after this node started.
UNHEARD_REMOVED_AFTER_S = 60.0
# The exit code of a node started on the data of a member that has left.
EXIT_LEFT_BEFORE = 2

Change = Callable[[Topology], Topology]
Done = Callable[[Topology | None, int, str], None]  # (chosen, status, message)


class _Request:
    def __init__(self, change: Change, done: Done, what: str) -> None:
        self.change = change
        self.done = done
        self.what = what
        self.attempts = 0
        self.not_before_s = 0.0
        self.value: Topology | None = None


class Changes:
    def __init__(self, ctx: NodeContext, streaming: Streaming) -> None:
        self.ctx = ctx
        self.streaming = streaming
        storage = ctx.replica.storage
        self.acceptor = Acceptor(storage.meta_get(PAXOS_RECORD),
                                 lambda raw: storage.meta_put(PAXOS_RECORD, raw))
        self._queue: collections.deque[_Request] = collections.deque()
        self._proposal: Proposal | None = None
        self._req: _Request | None = None
        self._round = 0
        self._fetching = False
        self._next_join_s = 0.0
        self._next_finish_s = 0.0
        self._waiting_logged_s = -WAITING_LOG_S
        self.decommissioning = False
        self.exit_code: int | None = None
        self._unlisted = self._unlisted_members()
        self._started_s = ctx.now_s()
        if ctx.topology.state(ctx.self_address) == "left":
            self._left_before()

    # -- learning ------------------------------------------------------------------------

    def heard(self, beat: Heartbeat) -> None:
        """A heartbeat: confirm, or fetch a topology that differs from this node's."""
        ctx = self.ctx
        mine = ctx.topology
        # An unconfirmed node's heartbeat says epoch 0.
        if beat.members_digest == mine.digest() and beat.epoch in (0, mine.epoch):
            if not ctx.confirmed and beat.address in mine.active():
                self.learn(mine)  # two members configured alike: epoch 1 is theirs
                self._fetch(beat.address)  # and the node ids its record has (a wiped node)
            return
        if beat.epoch > mine.epoch or (not ctx.confirmed and beat.epoch >= mine.epoch):
            self._fetch(beat.address)

    def _fetch(self, peer: str) -> None:
        if self._fetching or peer not in self.ctx.links:
            return
        self._fetching = True

        def fetched(status: int, body: Any) -> None:
            self._fetching = False
            if status >= 300 or not isinstance(body, dict) or not body.get("confirmed"):
                return  # not stored there either (a new cluster still confirming)
            try:
                topology = Topology.from_wire(body.get("topology"))
            except TopologyError as exc:
                log.warning("Malformed topology from node %s: %s", self.ctx.name_of(peer), exc)
                return
            self.learn(topology)

        self.ctx.ask(peer, TopologyGet(), fetched)

    def learn(self, topology: Topology) -> None:
        """Take a committed topology if it is newer than this node's (or confirms it)."""
        ctx = self.ctx
        mine = ctx.topology
        if topology.epoch < mine.epoch or (topology.epoch == mine.epoch and ctx.confirmed):
            if topology.epoch == mine.epoch and topology.digest() != mine.digest():
                ctx.warn("topology", f"Two rings for epoch {mine.epoch}: node records differ "
                                     f"({topology.digest()} against {mine.digest()}); the "
                                     "first members' CLUSTER_NODES differed")
            elif topology.epoch == mine.epoch:  # the same record: take the ids it knows
                for m in topology.members:
                    if m.node_id != m.address:
                        ctx.learn_id(m.address, m.node_id)
            return
        self._install(topology.with_ids(ctx.member_ids))

    def _install(self, topology: Topology) -> None:
        ctx = self.ctx
        old, was_confirmed = ctx.topology, ctx.confirmed
        try:
            ctx.set_topology(topology, True)
            ctx.save_topology()
        except CountError as exc:  # storage refused: keep running on the old record
            ctx.set_topology(old, was_confirmed)
            log.warning("Could not store topology epoch %d: %s", topology.epoch, exc)
            return
        if not was_confirmed and topology.epoch > 1:
            log.info("Node %s learned the cluster's topology: epoch %d, %d members",
                     ctx.config.node_id, topology.epoch, len(topology.active()))
        for member in topology.members:
            before = old.state(member.address)
            if before != member.state and was_confirmed:
                log.info("Node %s %s (%s, epoch %d)", ctx.name_of(member.address),
                         _CHANGE_WORDS.get(member.state, member.state), member.address,
                         topology.epoch)
        if topology.state(ctx.self_address) == "left":
            if self.decommissioning or old.state(ctx.self_address) == "leaving":
                log.info("Node %s decommissioned: its ranges are with their new owners; "
                         "exiting", ctx.config.node_id)
                self.exit_code = 0
            else:
                self._left_before()

    def _unlisted_members(self) -> set[str]:
        """Members removed from CLUSTER_NODES between starts of this node (remembered until
        they are listed again): never listed is no such thing (a dynamically joined node)."""
        ctx = self.ctx
        storage = ctx.replica.storage
        listed = ctx.config.members() if ctx.config.cluster_enabled else []
        raw = storage.meta_get(LISTED_RECORD)
        before, unlisted = msgpack.unpackb(raw) if raw else ([], [])
        unlisted = (set(unlisted) | set(before)) - set(listed)
        try:
            storage.meta_put(LISTED_RECORD, msgpack.packb([listed, sorted(unlisted)]))
        except CountError as exc:
            log.warning("Could not record this node's CLUSTER_NODES: %s", exc)
        return unlisted

    def _left_before(self) -> None:
        log.error("Node %s has left the cluster (decommissioned or removed): it serves "
                  "nothing. To join again, empty its DATA_DIR and start it",
                  self.ctx.config.node_id)
        self.exit_code = EXIT_LEFT_BEFORE

    # -- what peers ask ------------------------------------------------------------------

    def serve_topology(self, msg: TopologyGet, reply: Reply) -> None:
        ctx = self.ctx
        reply(200, {"topology": ctx.topology.to_wire(), "confirmed": ctx.confirmed})

    def serve_prepare(self, msg: Prepare, reply: Reply) -> None:
        if msg.current.epoch > self.ctx.topology.epoch:
            self.learn(msg.current)  # the proposer's committed record: this node was behind
        reply(200, self.acceptor.prepare(self.ctx.topology, msg.current.epoch + 1,
                                         msg.ballot).to_wire())

    def serve_accept(self, msg: Accept, reply: Reply) -> None:
        reply(200, self.acceptor.accept(self.ctx.topology, msg.ballot, msg.value).to_wire())

    def serve_commit(self, msg: Commit, reply: Reply) -> None:
        self.learn(msg.topology)
        reply(200, {"epoch": self.ctx.topology.epoch})

    def serve_join(self, msg: JoinRequest, reply: Reply) -> None:
        ctx = self.ctx
        if ctx.topology.state(msg.address) in ("joining", "normal"):
            reply(200, {"topology": ctx.topology.to_wire()})
            return

        def done(chosen: Topology | None, status: int, why: str) -> None:
            if chosen is None:
                reply(status, why)
            else:
                reply(200, {"topology": chosen.to_wire()})

        self.request(lambda t: t.join(msg.address, msg.node_id), done,
                     f"node {msg.node_id} ({msg.address}) joining")

    # -- what operators ask --------------------------------------------------------------

    def decommission(self, msg: Decommission, reply: Reply) -> None:
        """Answered at once (202); the node exits 0 once its ranges have moved."""
        ctx = self.ctx
        me = ctx.self_address
        self._serving()
        if ctx.topology.state(me) == "leaving":
            reply(202, {"decommissioning": ctx.config.node_id, "epoch": ctx.topology.epoch})
            return
        try:
            ctx.topology.leave(me)
        except TopologyError as exc:
            raise Conflict(str(exc)) from None
        self.decommissioning = True

        def done(chosen: Topology | None, status: int, why: str) -> None:
            if chosen is None:
                self.decommissioning = False
                log.error("Decommission of node %s failed: %s", ctx.config.node_id, why)

        self.request(lambda t: t.leave(me), done, f"node {ctx.config.node_id} leaving")
        reply(202, {"decommissioning": ctx.config.node_id, "epoch": ctx.topology.epoch})

    def removenode(self, msg: RemoveNode, reply: Reply) -> None:
        """A dead member out: answered (202) once it is ``leaving``; its ranges are then
        fetched from the surviving replicas and it is ``left``."""
        ctx = self.ctx
        self._serving()
        member = ctx.topology.find(msg.node)
        if member is None:
            address = next((a for a, i in ctx.member_ids.items() if str(i) == msg.node), None)
            member = None if address is None else ctx.topology.member(address)
        if member is None or member.state == "left":
            raise NotFound(f"no member {msg.node}")
        if member.address == ctx.self_address:
            raise Conflict("a node cannot remove itself: use decommission")
        if ctx.alive(member.address):
            raise Conflict(f"node {ctx.name_of(member.address)} is alive: run "
                           "`count decommission` on it instead (removenode is for dead nodes)")
        address = member.address

        def done(chosen: Topology | None, status: int, why: str) -> None:
            if chosen is None:
                reply(status, why)
            else:
                reply(202, {"removing": ctx.name_of(address), "epoch": chosen.epoch})

        self.request(lambda t: t.leave(address, removed=True), done,
                     f"node {ctx.name_of(address)} removed")

    def _serving(self) -> None:
        if not self.ctx.confirmed or not self.ctx.is_member():
            raise Unavailable("this node is not a member of a cluster yet")

    # -- proposing -----------------------------------------------------------------------

    def request(self, change: Change, done: Done, what: str) -> None:
        """Propose ``change`` of the topology current when its turn comes."""
        if len(self._queue) >= CHANGES_QUEUED_MAX:
            done(None, 503, "too many membership changes queued on this node; try again")
            return
        self._queue.append(_Request(change, done, what))
        self._next()

    def _next(self) -> None:
        ctx = self.ctx
        now = ctx.now_s()
        while self._proposal is None and self._queue and self._queue[0].not_before_s <= now:
            req = self._queue.popleft()
            if not ctx.confirmed:
                req.done(None, 503, "this node's topology is not confirmed yet")
                continue
            current = ctx.topology
            try:
                req.value = req.change(current)
            except TopologyError as exc:
                req.done(None, 409, str(exc))
                continue
            req.attempts += 1
            self._round += 1
            self._req = req
            proposal = self._proposal = Proposal(current.voters(), (self._round,
                                                 ctx.self_address), req.value, self._send,
                                                 self._finished)
            proposal.start()

    def _send(self, phase: str, voter: str) -> None:
        """One phase's message of the proposal in flight to one voter."""
        proposal = self._proposal
        assert proposal is not None
        op = (Prepare(proposal.ballot, self.ctx.topology) if phase == "prepare"
              else Accept(proposal.ballot, proposal.value))

        def answered(status: int, body: Any) -> None:
            if self._proposal is not proposal:
                return
            if status >= 300:
                proposal.failed(phase, voter, str(body))
                return
            try:
                promise = Promise.from_wire(body)
            except TopologyError as exc:
                proposal.failed(phase, voter, f"malformed answer ({exc})")
                return
            if promise.current is not None:
                self.learn(promise.current)
            proposal.answer(phase, voter, promise)

        self.ctx.ask(voter, op, answered)

    def _finished(self, chosen: Topology | None, highest: Ballot, why: str) -> None:
        ctx = self.ctx
        req, self._req = self._req, None
        assert req is not None
        self._proposal = None
        self._round = max(self._round, highest[0])
        if chosen is not None:
            self.learn(chosen)
            for peer in set(chosen.active()) | set(ctx.links):
                if peer != ctx.self_address and peer in ctx.links:
                    ctx.ask(peer, Commit(chosen), _ignore)
        assert req.value is not None
        if chosen is not None and chosen.digest() == req.value.digest():
            log.info("Membership change committed at epoch %d: %s", chosen.epoch, req.what)
            req.done(chosen, 200, "")
        elif req.attempts < ATTEMPTS_MAX:
            # Another value won this epoch (then the change is made again on top of it),
            # or no majority answered: tried again, a little later each time.
            req.not_before_s = ctx.now_s() + RETRY_S * (0.5 + ctx.rng.random()) * min(
                req.attempts, 4)
            self._queue.appendleft(req)
        else:
            req.done(None, 503, f"membership change not agreed after {req.attempts} "
                                f"attempts: {why or 'another change won each time'}")
        self._next()

    # -- timers --------------------------------------------------------------------------

    def step(self, now_s: float) -> None:
        self._next()
        if self.exit_code is not None:
            return
        if not self.ctx.is_member() and self.ctx.confirmed and now_s >= self._next_join_s:
            self._next_join_s = now_s + JOIN_RETRY_S
            self._ask_to_join()
        if now_s >= self._next_finish_s:
            self._next_finish_s = now_s + FINISH_CHECK_S
            if self.ctx.topology.changing() is not None:
                self._maybe_finish(now_s)
            else:
                self._remove_omitted()

    def next_wake_s(self) -> float | None:
        due = [self._queue[0].not_before_s] if self._queue else []
        if not self.ctx.is_member():
            due.append(self._next_join_s)
        if self.ctx.topology.changing() is not None or self._omitted():
            due.append(self._next_finish_s)
        return min(due) if due else None

    def _ask_to_join(self) -> None:
        ctx = self.ctx
        seeds = [a for a in ctx.topology.owners() if ctx.alive(a)]
        if not seeds:
            return
        seed = seeds[int(ctx.rng.random() * len(seeds))]

        def answered(status: int, body: Any) -> None:
            if status >= 300:
                ctx.warn("join", f"Node {ctx.config.node_id} could not join yet through node "
                                 f"{ctx.name_of(seed)}: {body}; trying again")
                return
            try:
                self.learn(Topology.from_wire(body.get("topology")))
            except (TopologyError, AttributeError) as exc:
                log.warning("Malformed join answer from node %s: %s", ctx.name_of(seed), exc)

        ctx.ask(seed, JoinRequest(ctx.self_address, ctx.config.node_id), answered)

    def _omitted(self) -> list[str]:
        """Owners an operator took out of this node's CLUSTER_NODES: the guide's manual
        removal (restart the others without the node, then stop it)."""
        ctx = self.ctx
        if not ctx.confirmed or ctx.self_address not in ctx.topology.owners():
            return []
        return [a for a in ctx.topology.owners() if a in self._unlisted]

    def _remove_omitted(self) -> None:
        """Take out (as removenode does) a member left out of CLUSTER_NODES once it is down."""
        ctx = self.ctx
        unheard = ctx.now_s() - self._started_s >= UNHEARD_REMOVED_AFTER_S
        down = [a for a in self._omitted() if ctx.membership.down_since_s(a) is not None
                or (unheard and ctx.membership.latest(a) is None)]
        if not down or self._proposal is not None or self._queue:
            return
        address = down[0]
        log.info("Node %s is not in this node's CLUSTER_NODES and is down: removing it from "
                 "the ring (as `count removenode %s` does)", ctx.name_of(address),
                 ctx.name_of(address))
        self.request(lambda t: t.leave(address, removed=True), _ignore_done,
                     f"node {ctx.name_of(address)} removed (left out of CLUSTER_NODES)")

    def _maybe_finish(self, now_s: float) -> None:
        """End the change in flight once every member gaining ranges has streamed them."""
        ctx = self.ctx
        topology = ctx.topology
        changing = topology.changing()
        assert changing is not None and ctx.future_ring is not None
        if changing.state == "removing":  # the first live owner ends a removal
            live = [a for a in topology.owners() if a != changing.address and ctx.alive(a)]
            driver = live[0] if live else ""
        else:  # a join or a decommission ends by the node itself (a partition holds it up)
            driver = changing.address
        if driver != ctx.self_address or self._proposal is not None or self._queue:
            return
        gainers = moves(ctx.ring, ctx.future_ring, ctx.rf, ctx.future_rf)
        behind = [g for g in gainers if self._streamed(g) < topology.epoch]
        if behind:
            if now_s - self._waiting_logged_s >= WAITING_LOG_S:
                self._waiting_logged_s = now_s
                log.info("Membership change at epoch %d waits for %s to finish streaming",
                         topology.epoch, ", ".join(f"node {ctx.name_of(g)}" for g in behind))
            return
        address = changing.address

        def finish(t: Topology) -> Topology:
            if t.changing() is None or t.changing().address != address:  # type: ignore[union-attr]
                raise TopologyError("the change has already ended")
            return t.finish()

        word = "joined" if changing.state == "joining" else "left"
        self.request(finish, _ignore_done, f"node {ctx.name_of(address)} {word}")

    def _streamed(self, address: str) -> int:
        if address == self.ctx.self_address:
            return self.streaming.streamed
        beat = self.ctx.membership.latest(address)
        return 0 if beat is None or not self.ctx.alive(address) else beat.streamed


_CHANGE_WORDS = {"joining": "joining the ring", "normal": "joined the ring (normal)",
                 "leaving": "leaving the ring", "removing": "being removed from the ring",
                 "left": "left the ring"}


def _ignore(status: int, body: Any) -> None:
    """A commit notice nobody waits for (heartbeats carry the epoch to whoever missed it)."""


def _ignore_done(chosen: Topology | None, status: int, why: str) -> None:
    """The end of a change: a failed attempt is made again at the next check."""


def stored_topology(raw: bytes | None) -> Topology | None:
    """The topology a node stored, if any."""
    return None if raw is None else Topology.from_wire(msgpack.unpackb(raw))
