"""Who is in the cluster and who is alive, judged from the heartbeats members gossip.

The members are the topology's (``count/cluster/topology.py``; ``set_members`` when it
changes), named by their HTTP address. Each member is judged by its own phi accrual
detector, and every change is an ``Event`` the caller logs (``describe``) and acts on, e.g.
refusing writes without a majority of the voters (the members that own ranges).
Pure: the caller passes ``now_s`` (a monotonic clock in seconds) and does all the I/O.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from count.cluster.failure import PhiAccrualDetector

HEARTBEAT_WIRE_VERSION = 2
# "syncing": the member lost its data (or is new) and is catching up from its peers.
STATES = ("normal", "syncing", "leaving")
# Bounds on what a heartbeat off the network may hold.
HEARTBEAT_BYTES_MAX = 64 * 1024
WIRE_STRING_CHARS_MAX = 256
WIRE_HINT_ENTRIES_MAX = 1024
# A starting cluster gets this many heartbeat intervals, plus one failure timeout, to find
# itself before a missing majority is reported as a partition.
STARTUP_GRACE_INTERVALS = 3
# A gap between two ticks longer than this many heartbeat intervals means this node's own
# loop stalled (SIGSTOP, a frozen VM, a long pause): the peers' heartbeats sent meanwhile
# have not been read yet, so no peer is judged on that tick (Cassandra's local pause guard).
LOCAL_PAUSE_INTERVALS = 2


def _string(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= WIRE_STRING_CHARS_MAX:
        raise ValueError(f"heartbeat {what}: expected 1..{WIRE_STRING_CHARS_MAX} characters")
    return value


def _count(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"heartbeat {what}: expected a non-negative integer, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class Heartbeat:
    """One gossip message: a member saying it is alive, which run it is, and its load."""

    node_id: int | str
    address: str
    generation: int  # the sender's start time in ms: a larger one means it restarted
    seq: int  # one more per heartbeat within a generation
    state: str  # "normal", "syncing" while catching up, or "leaving" on a clean shutdown
    members_digest: str  # the digest of the sender's topology
    load: dict[str, Any]  # {"points": int, "bytes": int, "hints": {target address: hints held}}
    epoch: int = 0  # the sender's topology epoch (0: it has none yet)
    streamed: int = 0  # the last epoch whose ranges it has fetched in full

    def to_wire(self) -> list[Any]:
        """A msgpack-friendly list, led by the wire version."""
        return [HEARTBEAT_WIRE_VERSION, self.node_id, self.address, self.generation, self.seq,
                self.state, self.members_digest, self.load.get("points", 0),
                self.load.get("bytes", 0), dict(self.load.get("hints", {})), self.epoch,
                self.streamed]

    def pack(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def unpack(cls, frame: bytes | memoryview) -> Heartbeat | None:
        """A heartbeat off the network, or None if the frame is not one."""
        if len(frame) > HEARTBEAT_BYTES_MAX:
            return None
        try:
            return cls.from_wire(msgpack.unpackb(frame, raw=False))
        except (ValueError, TypeError, msgpack.UnpackException):
            return None

    @classmethod
    def from_wire(cls, obj: object) -> Heartbeat:
        """Check and decode ``to_wire`` output from a peer; ValueError on anything else."""
        if not isinstance(obj, list | tuple) or not obj or type(obj[0]) is not int:
            raise ValueError("heartbeat: expected a list led by a wire version")
        if obj[0] != HEARTBEAT_WIRE_VERSION or len(obj) != 12:
            raise ValueError(f"heartbeat: expected version {HEARTBEAT_WIRE_VERSION} with 12"
                             f" fields, got version {obj[0]} with {len(obj)}")
        (_, node_id, address, generation, seq, state, digest, points, nbytes, hints, epoch,
         streamed) = obj
        node_id = (_count if type(node_id) is int else _string)(node_id, "node_id")
        if state not in STATES:
            raise ValueError(f"heartbeat state: expected one of {STATES}, got {state!r:.40}")
        if not isinstance(hints, dict) or len(hints) > WIRE_HINT_ENTRIES_MAX:
            raise ValueError(f"heartbeat hints: expected a map of <= {WIRE_HINT_ENTRIES_MAX}")
        load = {"points": _count(points, "points"), "bytes": _count(nbytes, "bytes"),
                "hints": {_string(k, "hint target"): _count(v, "hint count")
                          for k, v in hints.items()}}
        return cls(node_id, _string(address, "address"), _count(generation, "generation"),
                   _count(seq, "seq"), state, _string(digest, "members_digest"), load,
                   _count(epoch, "epoch"), _count(streamed, "streamed"))


def members_digest(members: Sequence[str]) -> str:
    """A short fingerprint of a member list; members with different lists are misconfigured."""
    return hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]


class Event(NamedTuple):
    """A change in the cluster worth an operator's attention (see ``_LOG_LINES`` for kinds)."""

    kind: str
    address: str  # the member concerned; "" for partition events
    node_id: int | str | None
    detail: str  # restarted: "generation G"; partition: "sees A of N"; healed: "A of N"


_LOG_LINES = {
    "joining": "Node {who} joining ({address})",
    "unreachable": "Node {who} unreachable ({address})",
    "back_online": "Node {who} back online ({address})",
    "leaving": "Node {who} leaving ({address})",
    "restarted": "Node {who} restarted ({address}, {detail})",
    "partition": "Network partition detected: this node {detail} members alive;"
                 " writes are refused until a majority is reachable",
    "partition_healed": "Network partition healed: {detail} members alive",
    "config_mismatch": "Cluster configuration differs: node {who} ({address}) lists other"
                       " members than this node (CLUSTER_NODES must be the same on every node"
                       " of a new cluster; {detail})",
    "local_pause": "Not marking nodes down: this node's own loop stalled for {detail}"
                   " (a local pause); its peers' heartbeats have not been read yet",
}


def describe(event: Event) -> str:
    """The log line for ``event``, worded so an operator can grep for it."""
    who = event.address if event.node_id is None else event.node_id
    return _LOG_LINES[event.kind].format(who=who, address=event.address, detail=event.detail)


@dataclass
class MemberView:
    """What the cluster status shows for one member."""

    address: str
    node_id: int | str | None
    alive: bool
    state: str  # "normal" | "syncing" | "leaving" | "unknown" (no heartbeat yet)
    heartbeat_age_s: float | None
    generation: int | None
    load: dict[str, Any]
    is_self: bool


@dataclass
class _Peer:
    """The latest news from one other member."""

    detector: PhiAccrualDetector
    latest: Heartbeat | None = None
    down_since_s: float | None = None
    mismatch_generation: int | None = None  # the last generation reported as misconfigured

    def age_s(self, now_s: float) -> float:
        assert self.detector.last_heartbeat_s is not None
        return now_s - self.detector.last_heartbeat_s


def _about(kind: str, hb: Heartbeat, detail: str = "") -> Event:
    return Event(kind, hb.address, hb.node_id, detail)


class Membership:
    """This node's view of the members: who is alive, and whether a majority is reachable."""

    def __init__(self, self_address: str, self_node_id: int | str, members: Sequence[str], *,
                 heartbeat_interval_s: float, failure_timeout_s: float,
                 local_pause_s: float | None = None, voters: Sequence[str] | None = None,
                 digest: str | None = None, epoch: int = 0) -> None:
        self.self_address = self_address
        self.self_node_id = self_node_id
        self._detector = functools.partial(PhiAccrualDetector, failure_timeout_s=failure_timeout_s,
                                           expected_interval_s=heartbeat_interval_s)
        self._peers: dict[str, _Peer] = {}
        self.set_members(members, members if voters is None else voters,
                         members_digest(members) if digest is None else digest, epoch)
        self._grace_s = heartbeat_interval_s * STARTUP_GRACE_INTERVALS + failure_timeout_s
        self._interval_s = heartbeat_interval_s
        self._local_pause_s = (LOCAL_PAUSE_INTERVALS * heartbeat_interval_s
                               if local_pause_s is None else local_pause_s)
        self._first_tick_s: float | None = None
        self._last_tick_s: float | None = None
        self._grace_over = False
        self._partitioned = False  # a partition was reported and has not healed yet

    def set_members(self, members: Sequence[str], voters: Sequence[str], digest: str,
                    epoch: int) -> None:
        """The topology changed: track ``members`` (self included), count a majority of
        ``voters``; peers kept keep their detectors and latest heartbeats."""
        assert self.self_address in members, (self.self_address, members)
        assert len(set(members)) == len(members), members
        assert set(voters) <= set(members), (voters, members)
        self.members = tuple(members)
        self.voters = tuple(voters)
        self.size = len(self.voters)
        self.digest = digest
        self.epoch = epoch
        self._peers = {a: self._peers.get(a) or _Peer(self._detector())
                       for a in self.members if a != self.self_address}

    def receive(self, hb: Heartbeat, now_s: float) -> list[Event]:
        """Take in a heartbeat; returns the events it causes."""
        peer = self._peers.get(hb.address)
        if peer is None:
            return []
        old = peer.latest
        if old is not None and (hb.generation, hb.seq) <= (old.generation, old.seq):
            return []
        was_alive = self.alive(hb.address)
        restarted = old is not None and hb.generation > old.generation
        if restarted:
            peer.detector = self._detector()  # a new run is not judged by the old one's rhythm
        peer.detector.heartbeat(now_s)
        peer.latest = hb
        events = [_about("restarted", hb, f"generation {hb.generation}")] if restarted else []
        if hb.state == "leaving":
            if restarted or old is None or old.state != "leaving":
                events.append(_about("leaving", hb))
            peer.down_since_s = now_s if peer.down_since_s is None else peer.down_since_s
        else:
            if old is None or not (was_alive or restarted):
                events.append(_about("joining" if old is None else "back_online", hb))
            peer.down_since_s = None
        if (hb.epoch == self.epoch and hb.members_digest != self.digest
                and peer.mismatch_generation != hb.generation):
            peer.mismatch_generation = hb.generation
            events.append(_about("config_mismatch", hb,
                                 f"their members {hb.members_digest}, ours {self.digest}"))
        return events + self._partition_events()

    def tick(self, now_s: float) -> list[Event]:
        """Mark down the members whose heartbeats stopped; returns the events that causes."""
        if self._first_tick_s is None:
            self._first_tick_s = now_s
        last, self._last_tick_s = self._last_tick_s, now_s
        if last is not None and now_s - last > self._local_pause_s:
            stalled_s = now_s - last - self._interval_s
            for peer in self._peers.values():
                peer.detector.shift(stalled_s, now_s)
            return [Event("local_pause", "", None, f"{stalled_s:.1f} s")]
        self._grace_over = self._grace_over or now_s - self._first_tick_s >= self._grace_s
        events = []
        for address, peer in self._peers.items():
            if self.alive(address) and not peer.detector.available(now_s):
                peer.down_since_s = now_s
                events.append(Event("unreachable", address, self.node_id(address),
                                    f"silent for {peer.age_s(now_s):.1f} s"))
        return events + self._partition_events()

    def alive(self, address: str) -> bool:
        if address == self.self_address:
            return True
        peer = self._peers.get(address)
        return peer is not None and peer.latest is not None and peer.down_since_s is None

    def state(self, address: str) -> str | None:
        """The state the member's latest heartbeat gave (None: never heard, or self)."""
        peer = self._peers.get(address)
        return None if peer is None or peer.latest is None else peer.latest.state

    def alive_members(self) -> list[str]:
        """The alive members, self included, in configuration order."""
        return [a for a in self.members if self.alive(a)]

    def alive_count(self) -> int:
        return len(self.alive_members())

    def alive_voters(self) -> int:
        return sum(1 for a in self.voters if self.alive(a))

    def has_majority(self) -> bool:
        """A majority of the voters alive (a node with no voters, not yet joined, has none)."""
        return self.alive_voters() > self.size / 2

    def whole(self) -> bool:
        """Every member alive and listing the same members as this node."""
        return all(p.latest is not None and p.down_since_s is None
                   and p.latest.members_digest == self.digest for p in self._peers.values())

    def health(self) -> str:
        """'healthy' all alive, 'degraded' some down but a majority alive, else 'unhealthy'."""
        if self.alive_count() == len(self.members) and self.has_majority():
            return "healthy"
        return "degraded" if self.has_majority() else "unhealthy"

    def node_id(self, address: str) -> int | str | None:
        if address == self.self_address:
            return self.self_node_id
        peer = self._peers.get(address)
        return None if peer is None or peer.latest is None else peer.latest.node_id

    def latest(self, address: str) -> Heartbeat | None:
        """The member's latest heartbeat (None: never heard, or self)."""
        peer = self._peers.get(address)
        return None if peer is None else peer.latest

    def down_since_s(self, address: str) -> float | None:
        """When the member was marked down; None if it is alive or was never heard from."""
        peer = self._peers.get(address)
        return None if peer is None else peer.down_since_s

    def hints_held(self) -> dict[str, dict[str, int]]:
        """Hints each alive member says it holds, per target, from its latest heartbeat."""
        return {a: dict(p.latest.load.get("hints", {})) for a, p in self._peers.items()
                if p.latest is not None and self.alive(a)}

    def view(self, now_s: float) -> list[MemberView]:
        """One entry per member, in configuration order."""
        views = []
        for address in self.members:
            peer = self._peers.get(address)
            hb = None if peer is None else peer.latest
            views.append(MemberView(
                address=address, node_id=self.node_id(address), alive=self.alive(address),
                state="normal" if peer is None else ("unknown" if hb is None else hb.state),
                heartbeat_age_s=None if peer is None or hb is None else peer.age_s(now_s),
                generation=None if hb is None else hb.generation,
                load={} if hb is None else dict(hb.load), is_self=peer is None))
        return views

    def _partition_events(self) -> list[Event]:
        """Report a lost majority (after the startup grace) and its return, once each."""
        majority, seen = self.has_majority(), f"{self.alive_voters()} of {self.size}"
        if not majority and not self._partitioned and self._grace_over:
            self._partitioned = True
            return [Event("partition", "", None, f"sees {seen}")]
        if majority and self._partitioned:
            self._partitioned = False
            return [Event("partition_healed", "", None, seen)]
        return []
