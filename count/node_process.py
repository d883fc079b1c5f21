"""The node process: owns the LMDB environment and coordinates every request of this node.

One thread runs one loop. Each turn it polls every socket (the HTTP workers' ROUTER, the
replica ROUTER, gossip SUB, and one REQ channel per peer), hands what arrived to the
coordinator, commits the turn's writes together, then runs timers: heartbeats, the failure
detector, hinted hand-off, anti-entropy and storage upkeep, each bounded per turn. Signal
handlers only set a flag; the loop answers what is queued and returns.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event

import zmq

from count.broker.router import Router
from count.cluster.channel import PeerChannel
from count.cluster.coordinator import Coordinator
from count.cluster.gossip import Gossip
from count.cluster.hints import HintLog
from count.cluster.membership import Heartbeat, Membership, describe, members_digest
from count.cluster.peer_server import PeerServer
from count.cluster.ring import Ring
from count.cluster.self_address import bind_endpoint, peer_endpoint
from count.config import Config, parse_host_port
from count.lifecycle import die_with_parent
from count.logfilter import install_log_filter
from count.replica import LocalReplica
from count.storage.engine import Storage

log = logging.getLogger("count.node")

POLL_MAX_MS = 200
IDLE_AFTER_S = 1.0
_WARN_EVENTS = ("unreachable", "partition", "config_mismatch")


class NodeLoop:
    def __init__(self, config: Config, self_address: str, endpoint: str, storage: Storage) -> None:
        self.config = config
        self.self_address = self_address
        self.stopping = False
        self.context = zmq.Context()
        members = config.members()
        self.replica = LocalReplica(config, storage)
        message_bytes_max = 2 * config.max_body_bytes + (1 << 20)
        self.router = Router(self.context, endpoint, message_bytes_max)
        self.membership = Membership(
            self_address, config.node_id, members,
            heartbeat_interval_s=config.heartbeat_interval_ms / 1000,
            # One late heartbeat must never be taken for a failure.
            failure_timeout_s=max(config.failure_timeout_ms,
                                  2 * config.heartbeat_interval_ms) / 1000)
        peers = [m for m in members if m != self_address]
        self.channels = {
            m: PeerChannel(self.context, self_address, m,
                           peer_endpoint(m, config.peer_ports(parse_host_port(m).port)[1]),
                           config.replica_timeout_ms, config.replica_retries)
            for m in peers}
        self.gossip: Gossip | None = None
        self.peer_server: PeerServer | None = None
        if peers:
            gossip_port, replica_port = config.peer_ports(config.bind_address.port)
            self.gossip = Gossip(self.context, bind_endpoint(config.bind_address, gossip_port),
                                 [peer_endpoint(m, config.peer_ports(parse_host_port(m).port)[0])
                                  for m in peers])
            # A peer's read reply can carry MAX_QUERY_POINTS points of 24 bytes.
            self.peer_server = PeerServer(
                self.context, bind_endpoint(config.bind_address, replica_port),
                max(message_bytes_max, 24 * config.max_query_points + (1 << 20)))
        self.coordinator = Coordinator(config, self.replica, Ring(members), self.membership,
                                       self.channels, HintLog(storage), self_address)
        self.generation = int(time.time() * 1000)
        self.seq = 0
        self.next_heartbeat_s = 0.0
        self.digest = members_digest(members)

    # -- gossip ----------------------------------------------------------------------------

    def _heartbeat(self, state: str) -> None:
        if self.gossip is None:
            return
        self.seq += 1
        self.gossip.publish(Heartbeat(self.config.node_id, self.self_address, self.generation,
                                      self.seq, state, self.digest, self.coordinator.load()))

    def _membership_events(self, events: list) -> None:
        for event in events:
            (log.warning if event.kind in _WARN_EVENTS else log.info)("%s", describe(event))
            if event.kind in ("unreachable", "leaving"):
                self.coordinator.on_member_down(event.address)
            if event.kind in ("joining", "restarted", "back_online"):
                self.coordinator.learn_id(event.address, event.node_id)

    # -- the loop --------------------------------------------------------------------------

    def _timeout_ms(self, more_work: bool) -> int:
        if more_work:
            return 0
        wake_s = [POLL_MAX_MS / 1000]
        now = time.monotonic()
        if self.gossip is not None:
            wake_s.append(self.next_heartbeat_s - now)
        wake_s.extend(d - now for ch in self.channels.values()
                      if (d := ch.next_deadline_s()) is not None)
        storage_wake = self.replica.next_wakeup_s()
        if storage_wake is not None:
            wake_s.append(storage_wake)
        return max(0, int(min(wake_s) * 1000))

    def run(self) -> None:
        last_request = time.monotonic()
        more_work = False
        while not self.stopping:
            poller = zmq.Poller()
            poller.register(self.router.sock, zmq.POLLIN)
            if self.peer_server is not None:
                poller.register(self.peer_server.sock, zmq.POLLIN)
            if self.gossip is not None:
                poller.register(self.gossip.sub, zmq.POLLIN)
            waiting = {ch.sock: ch for ch in self.channels.values()
                       if ch.inflight and ch.sock is not None}
            for sock in waiting:
                poller.register(sock, zmq.POLLIN)
            ready = dict(poller.poll(self._timeout_ms(more_work)))
            if self.router.sock in ready or (self.peer_server and self.peer_server.sock in ready):
                last_request = time.monotonic()
            self.turn(ready, waiting)
            idle = time.monotonic() - last_request >= IDLE_AFTER_S
            more_work = self.replica.maintain(idle)
        self.turn({self.router.sock: zmq.POLLIN}, {})
        self._heartbeat("leaving")

    def turn(self, ready: dict, waiting: dict) -> None:
        co = self.coordinator
        if self.router.sock in ready:
            for identity, req in self.router.drain():
                co.accept_local(req.op, req.args, self._worker_reply(identity, req.req_id))
        if self.peer_server is not None and self.peer_server.sock in ready:
            for identity, _sender, ops in self.peer_server.drain():
                co.accept_peer(ops, self._peer_answer(identity))
        for sock, channel in waiting.items():
            if sock in ready:
                channel.receive()
        now = time.monotonic()
        if self.gossip is not None and self.gossip.sub in ready:
            for beat in self.gossip.receive():
                self._membership_events(self.membership.receive(beat, now))
        # Replica writes leave before the local commit, so peers sync while this node does.
        self._pump(now)
        co.finish_turn()
        if self.gossip is not None and now >= self.next_heartbeat_s:
            self.next_heartbeat_s = now + self.config.heartbeat_interval_ms / 1000
            self._heartbeat("normal")
            self._membership_events(self.membership.tick(now))
        try:
            co.background(now)
        except Exception:
            log.exception("Background cluster work failed; retrying next turn")
        co.finish_turn()
        self._pump(now)

    def _pump(self, now_s: float) -> None:
        for channel in self.channels.values():
            if channel.busy:
                channel.pump(now_s)

    def _worker_reply(self, identity: bytes, req_id: int) -> Callable[[int, object], None]:
        def reply(status: int, body: object) -> None:
            self.router.reply(identity, req_id, status, body)
        return reply

    def _peer_answer(self, identity: bytes) -> Callable[[list], None]:
        def answer(results: list) -> None:
            assert self.peer_server is not None
            self.peer_server.reply(identity, results)
        return answer

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        if self.gossip is not None:
            self.gossip.close()
        if self.peer_server is not None:
            self.peer_server.close()
        self.router.close()
        self.context.term()


def run_node_process(config: Config, self_address: str, endpoint: str, ready: Event) -> None:
    """Open storage, serve until SIGTERM, then say goodbye to peers, flush, compact, close."""
    die_with_parent()
    install_log_filter(config.log_level, "node")
    storage = Storage(
        config.data_dir,
        map_size_bytes=config.lmdb_map_size_mb << 20,
        buffer_points=config.memory_buffer_size,
        flush_interval_s=config.flush_interval_seconds,
    )
    loop = NodeLoop(config, self_address, endpoint, storage)

    def stop(signum: int, _frame: object) -> None:
        loop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if config.cluster_enabled:
        log.info("Node %s joining the cluster as %s (%d members, replication factor %d)",
                 config.node_id, self_address, len(config.members()), config.replication_factor)
    log.info("Node %s storage ready at %s", config.node_id, config.data_dir)
    ready.set()
    try:
        loop.run()
    finally:
        loop.close()
    log.info("Node %s stopping: flushing and compacting storage", config.node_id)
    storage.close(clean=True)
    log.info("Node %s storage closed cleanly", config.node_id)
    sys.exit(0)
