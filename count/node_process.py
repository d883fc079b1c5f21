"""The node process: the ZeroMQ driver of this node's ``NodeCore``.

One thread runs one loop. Each turn it polls every socket (the HTTP workers' ROUTER, the
replica ROUTER, gossip SUB, and one REQ socket per peer with a message in flight), feeds
what arrived to the core, runs its timers, and carries out its ``Ready``: replies to
workers and peers, frames to peers, the heartbeat. The core decides everything; this file
only moves bytes and reads the clock. Signal handlers only set a flag; the loop answers
what is queued and returns.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
from multiprocessing.synchronize import Event

import zmq

from count.broker.router import Router
from count.clock import SystemClock
from count.cluster.gossip import Gossip
from count.cluster.node import NodeCore, Ready
from count.cluster.peer_server import PeerServer
from count.cluster.peer_socket import PeerSocket
from count.cluster.self_address import bind_endpoint, peer_endpoint
from count.config import Config, parse_host_port
from count.lifecycle import child_ignores_sigint, die_with_parent
from count.logfilter import install_log_filter
from count.replica import LocalReplica
from count.storage.engine import Storage

log = logging.getLogger("count.node")

POLL_MAX_MS = 200


class NodeLoop:
    def __init__(self, config: Config, self_address: str, endpoint: str, storage: Storage,
                 clock: SystemClock) -> None:
        self.config = config
        self.clock = clock
        self.stopping = False
        self.context = zmq.Context()
        self.core = NodeCore(config, self_address, LocalReplica(config, storage, clock), clock,
                             random.Random())
        message_bytes_max = 2 * config.max_body_bytes + (1 << 20)
        self.router = Router(self.context, endpoint, message_bytes_max)
        self.sockets: dict[str, PeerSocket] = {}
        self.gossip: Gossip | None = None
        self.peer_server: PeerServer | None = None
        self._peers_version = -1
        if config.cluster_enabled:
            gossip_port, replica_port = config.peer_ports(config.bind_address.port)
            self.gossip = Gossip(self.context, bind_endpoint(config.bind_address, gossip_port), [])
            # A peer's read reply can carry MAX_QUERY_POINTS points of 24 bytes.
            self.peer_server = PeerServer(
                self.context, bind_endpoint(config.bind_address, replica_port),
                max(message_bytes_max, 24 * config.max_query_points + (1 << 20)))
        self._sync_peers()

    def _sync_peers(self) -> None:
        """Open a socket to each peer the core talks to, listen to their gossip; close the
        ones it no longer does (the topology changed)."""
        version, peers = self.core.peers()
        if version == self._peers_version:
            return
        self._peers_version = version
        ports = {m: self.config.peer_ports(parse_host_port(m).port) for m in peers}
        for gone in [m for m in self.sockets if m not in ports]:
            self.sockets.pop(gone).close()
        for m in peers:
            if m not in self.sockets:
                self.sockets[m] = PeerSocket(self.context, peer_endpoint(m, ports[m][1]))
        if self.gossip is not None:
            self.gossip.connect([peer_endpoint(m, ports[m][0]) for m in peers])

    def run(self) -> None:
        ready: Ready | None = None
        while not self.stopping and self.core.exit_code is None:
            poller = zmq.Poller()
            poller.register(self.router.sock, zmq.POLLIN)
            if self.peer_server is not None:
                poller.register(self.peer_server.sock, zmq.POLLIN)
            if self.gossip is not None:
                poller.register(self.gossip.sub, zmq.POLLIN)
            for sock in self.sockets.values():
                if sock.awaiting and sock.sock is not None:
                    poller.register(sock.sock, zmq.POLLIN)
            poller.poll(self._timeout_ms(ready))
            ready = self.turn()
        self.turn()  # answer the requests queued when the signal came
        if self.gossip is not None:
            self.gossip.publish(self.core.leave())

    def _timeout_ms(self, ready: Ready | None) -> int:
        if ready is None or ready.more_work:
            return 0
        if ready.wake_s is None:
            return POLL_MAX_MS
        return max(0, min(POLL_MAX_MS, int((ready.wake_s - self.clock.monotonic_s()) * 1000)))

    def turn(self) -> Ready:
        core = self.core
        for identity, req in self.router.drain():
            core.client((identity, req.req_id), req.op, req.args)
        if self.peer_server is not None:
            for identity, frame in self.peer_server.drain():
                core.peer_request(identity, frame)
        for peer, sock in self.sockets.items():
            reply = sock.receive()
            if reply is not None:
                core.peer_reply(peer, reply)
        if self.gossip is not None:
            for frame in self.gossip.receive():
                core.gossip(frame)
        # Replica writes leave before the local commit, so peers sync while this node does.
        self._send(core.outgoing())
        core.tick()
        ready = core.ready()
        self._sync_peers()
        self._send(ready.sends)
        for (identity, req_id), status, body in ready.replies:
            self.router.reply(identity, req_id, status, body)
        if self.peer_server is not None:
            for identity, frame in ready.answers:
                self.peer_server.reply(identity, frame)
        if self.gossip is not None:
            for frame in ready.publish:
                self.gossip.publish(frame)
        return ready

    def _send(self, sends: list[tuple[str, bytes]]) -> None:
        for peer, frame in sends:
            sock = self.sockets.get(peer)
            if sock is not None:  # a peer that has just left: its link failed its messages
                sock.send(frame)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        if self.gossip is not None:
            self.gossip.close()
        if self.peer_server is not None:
            self.peer_server.close()
        self.router.close()
        self.context.term()


def run_node_process(config: Config, self_address: str, endpoint: str, ready: Event) -> None:
    """Open storage, serve until SIGTERM, then say goodbye to peers, flush, compact, close."""
    die_with_parent()
    child_ignores_sigint()  # the supervisor stops this process, with SIGTERM
    install_log_filter(config.log_level, "node")
    clock = SystemClock()
    storage = Storage(
        config.data_dir,
        map_size_bytes=config.lmdb_map_size_mb << 20,
        buffer_points=config.memory_buffer_size,
        flush_interval_s=config.flush_interval_seconds,
        monotonic=clock.monotonic_s,
    )
    loop = NodeLoop(config, self_address, endpoint, storage, clock)

    def stop(signum: int, _frame: object) -> None:
        loop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    if config.cluster_enabled:
        log.info("Node %s joining the cluster as %s (CLUSTER_NODES lists %d, replication "
                 "factor %d)", config.node_id, self_address, len(config.members()),
                 config.replication_factor)
    log.info("Node %s storage ready at %s", config.node_id, config.data_dir)
    ready.set()
    try:
        loop.run()
    finally:
        loop.close()
    log.info("Node %s stopping: flushing and compacting storage", config.node_id)
    storage.close(clean=True)
    log.info("Node %s storage closed cleanly", config.node_id)
    sys.exit(loop.core.exit_code or 0)
