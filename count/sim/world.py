"""A simulated cluster: N ``NodeCore``s in one process, each with its real storage in a
directory of its own, joined by a simulated network and clock.

Nothing here sleeps or opens a socket. One event queue, ordered by (simulated time, a
sequence number), holds every delivery, timer and fault; running it is deterministic, so a
seed (the only source of randomness) replays a run exactly. A node's turn is what the node
process's loop does: feed it what arrived, run its timers, carry out its ``Ready``.

Faults act on what the real world acts on: the network drops, delays, duplicates and
reorders messages and cuts links (one way or both); a crash loses a node's memory and keeps
its storage as its last commits left it (``Storage.close(clean=False)``, as kill -9 does); a
pause stops a node's loop while messages queue for it; a wipe deletes its data directory; a
skew moves its wall clock; a full disk makes its storage refuse writes with 507.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from count.cluster.node import NodeCore, Ready
from count.config import Config, load_config
from count.errors import DiskFull
from count.messages import Message
from count.replica import LocalReplica
from count.storage.engine import Storage

# Simulated wall time starts here (2026-01-01T00:00:00Z): versions need a realistic clock.
EPOCH_MS = 1_767_225_600_000
# One-way latency of a message on a healthy link, and its jitter.
LATENCY_S = 0.0005
JITTER_S = 0.001
# Storage upkeep waiting: the next turn comes this much later (the loop polls without
# sleeping; some simulated time must pass).
BUSY_TURN_S = 0.001
# After a pause, the node's timers run this long before it reads what queued meanwhile
# (the kernel's socket buffers reach ZeroMQ's queues only once its threads run again).
RESUME_READ_DELAY_S = 0.001
CLIENT_TIMEOUT_S = 5.0

# Settings the simulated nodes run with, besides the cluster's own.
NODE_SETTINGS = {
    "MEMORY_BUFFER_SIZE": "1000",
    "FLUSH_INTERVAL_SECONDS": "5",
    "LMDB_MAP_SIZE_MB": "16",
    "HEARTBEAT_INTERVAL_MS": "1000",
    "FAILURE_TIMEOUT_MS": "4000",
    "REPLICA_TIMEOUT_MS": "2000",
    "REPLICA_RETRIES": "1",
    "ANTI_ENTROPY_INTERVAL_SECONDS": "10",
}


class SimClock:
    """A node's two clocks over the simulated time: its monotonic clock has its own origin,
    its wall clock its own skew."""

    def __init__(self, world: World, origin_s: float) -> None:
        self.world = world
        self.origin_s = origin_s
        self.skew_ms = 0

    def monotonic_s(self) -> float:
        return self.world.now_s + self.origin_s

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.world.now_s * 1000) + self.skew_ms


class SimStorage(Storage):
    """Real storage whose disk can be made full: every write and commit fails with 507."""

    def __init__(self, disk_full: Callable[[], bool], *args: Any, **kwargs: Any) -> None:
        self._disk_full = disk_full
        super().__init__(*args, **kwargs)

    def _check_disk(self) -> None:
        if self._disk_full():
            # No path in the message: a run's trace must not depend on where it ran.
            raise DiskFull("disk full: no room to store the write (simulated)")

    def write(self, requests: Any) -> None:
        self._check_disk()
        super().write(requests)

    def transact(self, body: Any) -> Any:
        self._check_disk()
        return super().transact(body)


class SimNode:
    def __init__(self, world: World, index: int, config: Config) -> None:
        self.world = world
        self.index = index
        self.address = f"node{index}:8080"
        self.config = config  # for the next start (a restart with another CLUSTER_NODES, say)
        self.clock = SimClock(world, origin_s=1000.0 * index)
        self.state = "down"  # up | down | paused
        self.exit_code: int | None = None  # set when it exited after leaving the cluster
        self.retired = False  # killed for good (to be removed): no fault's end restarts it
        self.incarnation = 0
        self.disk_full = False
        self.storage: SimStorage | None = None
        self.core: NodeCore | None = None
        self.inbox: list[Callable[[NodeCore], None]] = []
        self.next_turn_s: float | None = None
        # Client requests waiting for this incarnation's answer: token -> callback.
        self.waiting: dict[int, Callable[[int, Any], None]] = {}

    @property
    def data_dir(self) -> str:
        return self.config.data_dir

    def start(self) -> None:
        assert self.state == "down"
        self.incarnation += 1
        self.exit_code = None
        self.storage = SimStorage(
            lambda: self.disk_full, self.data_dir,
            map_size_bytes=self.config.lmdb_map_size_mb << 20,
            buffer_points=self.config.memory_buffer_size,
            flush_interval_s=self.config.flush_interval_seconds,
            monotonic=self.clock.monotonic_s)
        rng = random.Random(f"{self.world.seed}/{self.index}/{self.incarnation}")
        with self.world.acting(self):
            self.core = NodeCore(self.config, self.address,
                                 LocalReplica(self.config, self.storage, self.clock),
                                 self.clock, rng)
        self.state = "up"
        self.world.trace("start", self.index, self.incarnation)
        self.wake(self.world.now_s)

    def crash(self) -> None:
        """Lose everything in memory; storage stays as its last commit left it."""
        if self.state == "down":
            return
        assert self.storage is not None
        self.storage.close(clean=False)
        self.storage = None
        self.core = None
        self.state = "down"
        self.inbox.clear()  # what its clients wait for times out
        self.next_turn_s = None
        self.world.trace("crash", self.index, self.incarnation)

    def exit(self) -> None:
        """The node left the cluster: its process stops cleanly, as count-server exits."""
        assert self.storage is not None and self.core is not None
        self.exit_code = self.core.exit_code
        self.storage.close(clean=True)
        self.storage = None
        self.core = None
        self.state = "down"
        self.inbox.clear()
        self.next_turn_s = None
        self.world.trace("exit", self.index, self.exit_code)

    def wipe(self) -> None:
        self.crash()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.world.trace("wipe", self.index)

    def pause(self) -> None:
        if self.state == "up":
            self.state = "paused"
            self.world.trace("pause", self.index)

    def resume(self, timers_first: bool | None = None) -> None:
        if self.state != "paused":
            return
        self.state = "up"
        # The loop's first turn after a stall either runs its timers before it reads what
        # queued meanwhile (the sockets' kernel buffers have not reached ZeroMQ yet) or reads
        # it all first: both happen to a real node, so the seed picks unless told.
        if timers_first is None:
            timers_first = self.world.rng.random() < 0.5
        self.world.trace("resume", self.index, timers_first)
        self._turn(timers_only=timers_first)
        self.wake(self.world.now_s + RESUME_READ_DELAY_S)

    def deliver(self, item: Callable[[NodeCore], None]) -> None:
        if self.state == "down":
            return
        self.inbox.append(item)
        if self.state == "up":
            self.wake(self.world.now_s)

    def wake(self, at_s: float) -> None:
        if self.state != "up":
            return
        at_s = max(at_s, self.world.now_s)
        if self.next_turn_s is None or at_s < self.next_turn_s:
            self.next_turn_s = at_s
            incarnation = self.incarnation
            self.world.at(at_s, lambda: self._scheduled_turn(incarnation, at_s))

    def _scheduled_turn(self, incarnation: int, at_s: float) -> None:
        if incarnation != self.incarnation or self.next_turn_s != at_s or self.state != "up":
            return
        self._turn(timers_only=False)

    def _turn(self, timers_only: bool) -> None:
        core = self.core
        assert core is not None
        self.next_turn_s = None
        inbox: list[Callable[[NodeCore], None]] = []
        if not timers_only:
            inbox, self.inbox = self.inbox, []
        with self.world.acting(self):
            for item in inbox:
                item(core)
            # Replica writes leave before the local commit, as in the node process.
            self.world.network.take_outgoing(self, core.outgoing())
            core.tick()
            ready = core.ready()
        self._carry_out(ready)

    def _carry_out(self, ready: Ready) -> None:
        net = self.world.network
        net.take_outgoing(self, ready.sends)
        for token, frame in ready.answers:
            net.send(self, token[0], "reply", frame, token)
        for frame in ready.publish:
            for peer in self.world.nodes.values():
                # A node's SUB socket connects to the peers its topology names.
                if (peer is not self and peer.core is not None
                        and self.address in peer.core.ctx.links):
                    net.send(self, peer, "gossip", frame, None)
        for token, status, body in ready.replies:
            callback = self.waiting.pop(token, None)
            if callback is not None:
                self.world.trace("reply", self.index, token, status)
                callback(status, body)
        if self.core is not None and self.core.exit_code is not None:
            self.exit()
            return
        if ready.more_work:
            self.wake(self.world.now_s + BUSY_TURN_S)
        elif ready.wake_s is not None:
            # What was due is done; a timer due "now" after rounding waits one busy step.
            self.wake(max(ready.wake_s - self.clock.origin_s, self.world.now_s + BUSY_TURN_S))

    def request(self, token: int, msg: Message, callback: Callable[[int, Any], None]) -> None:
        """A client's operation; ``callback`` gets (status, body), or (0, "refused") when the
        node is down, or (0, "timeout") when no answer came within CLIENT_TIMEOUT_S."""
        if self.state == "down":
            callback(0, "refused")
            return
        self.waiting[token] = callback
        tag, args = msg.TAG, msg.to_wire()
        self.deliver(lambda core: core.client(token, tag, args))

        def timeout() -> None:
            pending = self.waiting.pop(token, None)
            if pending is not None:
                self.world.trace("timeout", self.index, token)
                pending(0, "timeout")
        self.world.at(self.world.now_s + CLIENT_TIMEOUT_S, timeout)


class Network:
    """Links between nodes with seeded faults: loss, delay, duplication, reordering, cuts."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = random.Random(f"{world.seed}/network")
        self.loss = 0.0
        self.duplicate = 0.0
        self.delay_s = 0.0  # extra delay, uniform in [0, delay_s]
        self.reorder_s = 0.0  # extra jitter that reorders messages
        self.cut: Counter[tuple[int, int]] = Counter()  # (from, to) pairs cut, by how many faults
        self.delivered = 0
        self.dropped = 0

    def take_outgoing(self, src: SimNode, sends: list[tuple[str, bytes]]) -> None:
        for address, frame in sends:
            self.send(src, self.world.by_address[address], "request", frame,
                      (src, src.incarnation))

    def send(self, src: SimNode, dst: SimNode, kind: str, frame: bytes, token: Any) -> None:
        copies = 1 + (self.rng.random() < self.duplicate)
        for _ in range(copies):
            if self.cut[(src.index, dst.index)] > 0 or self.rng.random() < self.loss:
                self.dropped += 1
                continue
            delay = LATENCY_S + self.rng.random() * JITTER_S
            if self.delay_s:
                delay += self.rng.random() * self.delay_s
            if self.reorder_s:
                delay += self.rng.random() * self.reorder_s
            self.world.at(self.world.now_s + delay,
                          lambda: self._arrive(src, dst, kind, frame, token, dst.incarnation))

    def _arrive(self, src: SimNode, dst: SimNode, kind: str, frame: bytes, token: Any,
                incarnation: int) -> None:
        if dst.incarnation != incarnation or self.cut[(src.index, dst.index)] > 0:
            self.dropped += 1
            return
        self.delivered += 1
        self.world.trace(kind, src.index, dst.index, frame)
        if kind == "gossip":
            dst.deliver(lambda core: core.gossip(frame))
        elif kind == "request":
            dst.deliver(lambda core: core.peer_request(token, frame))
        else:
            requester, requester_incarnation = token
            if requester is dst and dst.incarnation == requester_incarnation:
                dst.deliver(lambda core: core.peer_reply(src.address, frame))

    def heal(self) -> None:
        self.loss = self.duplicate = self.delay_s = self.reorder_s = 0.0
        self.cut.clear()


class LogRecorder(logging.Handler):
    """Keeps every log line the nodes write, tagged with the node and the simulated time."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.INFO)
        self.world = world
        self.lines: list[tuple[float, int, str, str]] = []  # (time, node, level, message)

    def emit(self, record: logging.LogRecord) -> None:
        node = self.world.current.index if self.world.current is not None else 0
        self.lines.append((self.world.now_s, node, record.levelname, record.getMessage()))


class World:
    def __init__(self, seed: int, nodes: int, rf: int, env: dict[str, str] | None = None,
                 root: str | None = None) -> None:
        assert nodes >= 1
        self.seed = seed
        self.now_s = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._digest = hashlib.sha256()
        self.events = 0
        self.current: SimNode | None = None
        base = root or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.root = tempfile.mkdtemp(prefix="count-sim-", dir=base)
        self.network = Network(self)
        self.rng = random.Random(f"{seed}/world")  # choices of the world that are not faults
        self.rf = rf
        self.env = dict(env or {})
        self.nodes: dict[int, SimNode] = {}
        self.by_address: dict[str, SimNode] = {}
        for i in range(1, nodes + 1):
            self.add_node(i, list(range(1, nodes + 1)))
        self.logs = LogRecorder(self)
        # The nodes' log lines go to the recorder only, at INFO; close() puts it back.
        self._logger = logging.getLogger("count")
        self._logger_was = (self._logger.level, self._logger.propagate)
        self._logger.addHandler(self.logs)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False

    # -- the event queue -------------------------------------------------------------------

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        assert time_s >= self.now_s, (time_s, self.now_s)
        self._seq += 1
        heapq.heappush(self._queue, (time_s, self._seq, action))

    def run_until(self, end_s: float) -> None:
        """Run every event due until ``end_s`` (simulated seconds)."""
        queue = self._queue
        while queue and queue[0][0] <= end_s:
            time_s, _, action = heapq.heappop(queue)
            self.now_s = time_s
            self.events += 1
            action()
        self.now_s = max(self.now_s, end_s)

    def trace(self, kind: str, *fields: Any) -> None:
        """Add an event to the run's digest: equal digests mean equal runs."""
        parts = [f"{self.now_s:.6f}", kind]
        for field in fields:
            parts.append(hashlib.sha1(field).hexdigest()[:12] if isinstance(field, bytes)
                         else str(field))
        self._digest.update(" ".join(parts).encode() + b"\n")

    def digest(self) -> str:
        return self._digest.hexdigest()[:16]

    @contextmanager
    def acting(self, node: SimNode) -> Iterator[None]:
        """Log lines written meanwhile are this node's."""
        previous, self.current = self.current, node
        try:
            yield
        finally:
            self.current = previous

    # -- the cluster -----------------------------------------------------------------------

    def node_config(self, index: int, members: list[int]) -> Config:
        """Node ``index``'s settings with ``members`` (indices) as its CLUSTER_NODES."""
        settings = {**NODE_SETTINGS, **self.env, "NODE_ID": str(index),
                    "CLUSTER_ENABLED": "true",
                    "CLUSTER_NODES": ",".join(f"node{i}:8080" for i in members),
                    "REPLICATION_FACTOR": str(self.rf), "BIND_ADDRESS": f"node{index}:8080",
                    "DATA_DIR": os.path.join(self.root, f"node{index}")}
        return load_config(settings)

    def add_node(self, index: int, members: list[int]) -> SimNode:
        """A node (not started) that lists ``members``; the others do not list it yet."""
        assert index not in self.nodes and index in members
        node = self.nodes[index] = SimNode(self, index, self.node_config(index, members))
        self.by_address[node.address] = node
        return node

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()

    def up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.state == "up"]

    def members(self) -> list[SimNode]:
        """The nodes still in the cluster: not killed for good, not exited after leaving."""
        return [n for n in self.nodes.values() if not n.retired and n.exit_code is None]

    def close(self) -> None:
        for node in self.nodes.values():
            node.crash()
        self._logger.removeHandler(self.logs)
        self._logger.setLevel(self._logger_was[0])
        self._logger.propagate = self._logger_was[1]
        shutil.rmtree(self.root, ignore_errors=True)
