"""The catalogue of operations: what HTTP workers ask of their node, and what nodes ask of
each other.

Every operation is a frozen dataclass with a ``TAG`` and its wire form (``to_wire``: a dict
of msgpack-friendly values; ``from_wire``: the checked inverse, raising ``BadRequest`` for
anything malformed, so that bad input from a worker or a peer is refused at the border and
never reaches the code that acts on it). The node dispatches on the class, never on strings.

    client operations (worker -> node):  Insert, ReadRange, Aggregate, ListSeries, Health,
                                          Readiness, Live, Stats, Endpoints, ClusterStatus,
                                          Repair, Decommission, RemoveNode
    peer operations (node -> node):       ReplicaWrite, ReplicaRead, ReplicaSeries,
                                          DigestRanges, DigestSeries, BucketPoints,
                                          TopologyGet, Prepare, Accept, Commit, JoinRequest,
                                          StreamRanges

Replies are (status, body) pairs; a body of points has one wire form (``points_to_wire`` /
``points_from_wire``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np

from count.cluster.consensus import Ballot, ballot_from_wire
from count.cluster.ring import Arc
from count.cluster.topology import ADDRESS_CHARS_MAX, Topology, TopologyError
from count.errors import BadRequest, Unavailable
from count.storage.aggregate import AGGREGATIONS
from count.storage.merge import Columns
from count.storage.writes import WriteRequest

CONSISTENCY_LEVELS = ("one", "quorum", "all")
SERIES_LIMIT_MAX = 100_000
# Bounds on what one peer operation may ask for (each bounds a turn's work on the peer).
RANGES_PER_MESSAGE_MAX = 16
BUCKETS_PER_MESSAGE_MAX = 24
HINT_TARGET_CHARS_MAX = 256
ARCS_PER_MESSAGE_MAX = 4096
STREAM_POINTS_MAX = 200_000

M = TypeVar("M", bound="Message")
# How an operation is answered: (HTTP status, body); runs exactly once per operation.
Reply = Callable[[int, Any], None]


class Message(abc.ABC):
    """Base of every operation: a tag on the wire and a checked decoder."""

    TAG: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    @abc.abstractmethod
    def from_wire(cls: type[M], args: dict[str, Any]) -> M:
        """The operation from its wire form, every field checked (BadRequest if malformed)."""


# -- checked field readers ------------------------------------------------------------------

def _malformed(what: str, name: str) -> BadRequest:
    return BadRequest(f"malformed {what}: {name}")


def _str(args: dict[str, Any], name: str, what: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise _malformed(what, name)
    return value


def _int(args: dict[str, Any], name: str, what: str) -> int:
    value = args.get(name)
    if type(value) is not int:
        raise BadRequest(f"malformed {what}: {name} must be an integer")
    return value


def _array(args: dict[str, Any], name: str, dtype: type, what: str) -> np.ndarray:
    raw = args.get(name)
    if not isinstance(raw, bytes) or len(raw) % np.dtype(dtype).itemsize:
        raise _malformed(what, name)
    return np.frombuffer(raw, dtype)


def _int_list(args: dict[str, Any], name: str, limit: int, what: str) -> list[int]:
    value = args.get(name)
    if (not isinstance(value, list) or len(value) > limit
            or not all(type(v) is int for v in value)):
        raise _malformed(what, name)
    return value


def _topology(args: dict[str, Any], name: str, what: str) -> Topology:
    try:
        return Topology.from_wire(args.get(name))
    except TopologyError as exc:
        raise BadRequest(f"malformed {what}: {exc}") from None


def _ballot(args: dict[str, Any], what: str) -> Ballot:
    try:
        return ballot_from_wire(args.get("ballot"))
    except TopologyError:
        raise _malformed(what, "ballot") from None


def _node_id(args: dict[str, Any], name: str, what: str) -> int | str:
    value = args.get(name)
    if type(value) is int or (isinstance(value, str) and 0 < len(value) <= ADDRESS_CHARS_MAX):
        return value
    raise _malformed(what, name)


def _consistency(args: dict[str, Any]) -> str | None:
    level = args.get("consistency")
    if level is None:
        return None
    if level not in CONSISTENCY_LEVELS:
        raise BadRequest(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
    return str(level)


def _columns(args: dict[str, Any], what: str) -> tuple[list[str], np.ndarray, np.ndarray,
                                                        np.ndarray]:
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _malformed(what, "names")
    idx = _array(args, "idx", np.uint32, what)
    ts = _array(args, "ts", np.int64, what)
    val = _array(args, "val", np.float64, what)
    if not len(ts) == len(val) == len(idx) or not len(ts):
        raise BadRequest(f"malformed {what}: column lengths differ")
    if int(idx.max()) >= len(names):
        raise BadRequest(f"malformed {what}: series index out of range")
    return names, idx, ts, val


def _columns_wire(names: list[str], idx: np.ndarray, ts: np.ndarray,
                  val: np.ndarray) -> dict[str, Any]:
    return {"names": names, "idx": idx.tobytes(), "ts": ts.tobytes(), "val": val.tobytes()}


# -- client operations ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Insert(Message):
    """Points from a client; the coordinating node assigns their write version."""

    TAG: ClassVar[str] = "insert"
    names: list[str]
    idx: np.ndarray
    ts: np.ndarray
    val: np.ndarray
    consistency: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = _columns_wire(self.names, self.idx, self.ts, self.val)
        wire["consistency"] = self.consistency
        return wire

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Insert:
        return cls(*_columns(args, "insert"), consistency=_consistency(args))

    def points(self) -> int:
        return len(self.ts)

    def with_version(self, version: int) -> WriteRequest:
        return WriteRequest(self.names, self.idx, self.ts, self.val, version)


@dataclasses.dataclass(frozen=True)
class ReadRange(Message):
    """A series' points in [start, end] (milliseconds, inclusive)."""

    TAG: ClassVar[str] = "range"
    series: str
    start: int
    end: int
    consistency: str | None = None

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> ReadRange:
        return cls(_str(args, "series", "read"), _int(args, "start", "read"),
                   _int(args, "end", "read"), _consistency(args))


@dataclasses.dataclass(frozen=True)
class Aggregate(Message):
    """One aggregate over [start, end], or one per ``interval`` ms bucket."""

    TAG: ClassVar[str] = "aggregate"
    series: str
    start: int
    end: int
    aggregation: str
    interval: int | None = None
    consistency: str | None = None

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Aggregate:
        how = args.get("aggregation")
        if how not in AGGREGATIONS:
            raise BadRequest(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        interval = args.get("interval")
        if interval is not None and (type(interval) is not int or interval < 1):
            raise BadRequest("interval must be a positive integer (milliseconds)")
        return cls(_str(args, "series", "read"), _int(args, "start", "read"),
                   _int(args, "end", "read"), str(how), interval, _consistency(args))


def _series_query(args: dict[str, Any]) -> tuple[str, int]:
    prefix, limit = args.get("prefix", ""), args.get("limit", 1000)
    if (not isinstance(prefix, str) or type(limit) is not int
            or not 1 <= limit <= SERIES_LIMIT_MAX):
        raise BadRequest(f"prefix must be text and limit 1..{SERIES_LIMIT_MAX}")
    return prefix, limit


@dataclasses.dataclass(frozen=True)
class ListSeries(Message):
    """Series names with a prefix, from every live member."""

    TAG: ClassVar[str] = "series"
    prefix: str = ""
    limit: int = 1000

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> ListSeries:
        return cls(*_series_query(args))


@dataclasses.dataclass(frozen=True)
class Endpoints(Message):
    """Which members replicate a series."""

    TAG: ClassVar[str] = "endpoints"
    series: str

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Endpoints:
        return cls(_str(args, "series", "request"))


@dataclasses.dataclass(frozen=True)
class _NoArgs(Message):
    @classmethod
    def from_wire(cls: type[M], args: dict[str, Any]) -> M:
        return cls()


@dataclasses.dataclass(frozen=True)
class Health(_NoArgs):
    """healthy, degraded or unhealthy, and why (``count/cluster/health.py``)."""

    TAG: ClassVar[str] = "health"


@dataclasses.dataclass(frozen=True)
class Readiness(_NoArgs):
    """Whether this node would take a write now, and why not."""

    TAG: ClassVar[str] = "ready"


@dataclasses.dataclass(frozen=True)
class Live(_NoArgs):
    """The cheapest answer the node process gives: it is running its loop."""

    TAG: ClassVar[str] = "live"


@dataclasses.dataclass(frozen=True)
class Stats(_NoArgs):
    TAG: ClassVar[str] = "stats"


@dataclasses.dataclass(frozen=True)
class ClusterStatus(_NoArgs):
    TAG: ClassVar[str] = "cluster_status"


@dataclasses.dataclass(frozen=True)
class Repair(_NoArgs):
    """Run an anti-entropy round now (or join the running one) and report it."""

    TAG: ClassVar[str] = "repair"


@dataclasses.dataclass(frozen=True)
class Decommission(_NoArgs):
    """This node leaves the cluster: its ranges stream to their new owners, then it exits."""

    TAG: ClassVar[str] = "decommission"


@dataclasses.dataclass(frozen=True)
class RemoveNode(Message):
    """Take a dead member (by node id or address) out; its ranges are re-replicated."""

    TAG: ClassVar[str] = "removenode"
    node: str

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> RemoveNode:
        node = _str(args, "node", "request")
        if not 0 < len(node) <= ADDRESS_CHARS_MAX:
            raise _malformed("request", "node")
        return cls(node)


# -- peer operations ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class ReplicaWrite(Message):
    """Points with their versions for a replica; ``hint`` names the replica a stand-in
    keeps them for (sloppy quorum)."""

    TAG: ClassVar[str] = "write"
    write: WriteRequest
    hint: str | None = None

    def to_wire(self) -> dict[str, Any]:
        w = self.write
        wire = _columns_wire(w.names, w.idx, w.ts, w.val)
        wire["ver"] = w.version.tobytes() if isinstance(w.version, np.ndarray) else w.version
        wire["hint"] = self.hint
        return wire

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> ReplicaWrite:
        names, idx, ts, val = _columns(args, "replica write")
        raw = args.get("ver")
        version: int | np.ndarray
        if type(raw) is int and raw >= 0:
            version = raw
        else:
            version = _array(args, "ver", np.uint64, "replica write")
            if len(version) != len(ts):
                raise BadRequest("malformed replica write: column lengths differ")
        hint = args.get("hint")
        if hint is not None and (not isinstance(hint, str)
                                 or not 0 < len(hint) <= HINT_TARGET_CHARS_MAX):
            raise _malformed("replica write", "hint")
        return cls(WriteRequest(names, idx, ts, val, version), hint)

    def points(self) -> int:
        return len(self.write.ts)


@dataclasses.dataclass(frozen=True)
class ReplicaRead(Message):
    """A replica's points of one series in [start, end], with versions."""

    TAG: ClassVar[str] = "read"
    series: str
    start: int
    end: int

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> ReplicaRead:
        return cls(_str(args, "series", "replica read"), _int(args, "start", "replica read"),
                   _int(args, "end", "replica read"))


@dataclasses.dataclass(frozen=True)
class ReplicaSeries(Message):
    """A replica's series names with a prefix."""

    TAG: ClassVar[str] = "list"
    prefix: str
    limit: int

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> ReplicaSeries:
        return cls(*_series_query(args))


@dataclasses.dataclass(frozen=True)
class _RangesQuery(Message):
    """A question about some ring ranges; ``ring`` is the asker's ring digest."""

    ring: str
    ranges: list[int]

    @classmethod
    def from_wire(cls: type[M], args: dict[str, Any]) -> M:
        return cls(_str(args, "ring", "anti-entropy request"),  # type: ignore[call-arg]
                   _int_list(args, "ranges", RANGES_PER_MESSAGE_MAX, "anti-entropy request"))


@dataclasses.dataclass(frozen=True)
class DigestRanges(_RangesQuery):
    """One digest per ring range (anti-entropy's first level)."""

    TAG: ClassVar[str] = "ae_ranges"


@dataclasses.dataclass(frozen=True)
class DigestSeries(_RangesQuery):
    """Per series of the ranges, one digest per time bucket (the second level)."""

    TAG: ClassVar[str] = "ae_series"


@dataclasses.dataclass(frozen=True)
class BucketPoints(Message):
    """The points of some time buckets of one series (the last level)."""

    TAG: ClassVar[str] = "ae_points"
    series: str
    buckets: list[int]

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> BucketPoints:
        return cls(_str(args, "series", "anti-entropy request"),
                   _int_list(args, "buckets", BUCKETS_PER_MESSAGE_MAX, "anti-entropy request"))


@dataclasses.dataclass(frozen=True)
class TopologyGet(_NoArgs):
    """The asked node's topology, and whether it is committed (stored) or only configured."""

    TAG: ClassVar[str] = "topology"


@dataclasses.dataclass(frozen=True)
class Prepare(Message):
    """Paxos phase 1 for epoch ``current.epoch + 1``; carries the proposer's committed
    topology so that a voter one epoch behind catches up before it answers."""

    TAG: ClassVar[str] = "prepare"
    ballot: Ballot
    current: Topology

    def to_wire(self) -> dict[str, Any]:
        return {"ballot": list(self.ballot), "current": self.current.to_wire()}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Prepare:
        return cls(_ballot(args, "prepare"), _topology(args, "current", "prepare"))


@dataclasses.dataclass(frozen=True)
class Accept(Message):
    """Paxos phase 2: store ``value`` (the next epoch) at ``ballot``."""

    TAG: ClassVar[str] = "accept"
    ballot: Ballot
    value: Topology

    def to_wire(self) -> dict[str, Any]:
        return {"ballot": list(self.ballot), "value": self.value.to_wire()}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Accept:
        return cls(_ballot(args, "accept"), _topology(args, "value", "accept"))


@dataclasses.dataclass(frozen=True)
class Commit(Message):
    """A chosen epoch: install it if it is newer than this node's."""

    TAG: ClassVar[str] = "commit"
    topology: Topology

    def to_wire(self) -> dict[str, Any]:
        return {"topology": self.topology.to_wire()}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> Commit:
        return cls(_topology(args, "topology", "commit"))


@dataclasses.dataclass(frozen=True)
class JoinRequest(Message):
    """A new node asks a member to propose it as joining."""

    TAG: ClassVar[str] = "join"
    address: str
    node_id: int | str

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> JoinRequest:
        address = _str(args, "address", "join request")
        if not 0 < len(address) <= ADDRESS_CHARS_MAX:
            raise _malformed("join request", "address")
        return cls(address, _node_id(args, "node_id", "join request"))


@dataclasses.dataclass(frozen=True)
class StreamRanges(Message):
    """The points, with versions, of the asker's series in ``arcs`` at ``epoch``, in name
    order from the cursor (``after`` series, from ``after_ts`` on), up to ``points_max``."""

    TAG: ClassVar[str] = "stream"
    epoch: int
    arcs: list[Arc]
    after: str
    after_ts: int
    points_max: int

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "arcs": [list(a) for a in self.arcs], "after": self.after,
                "after_ts": self.after_ts, "points_max": self.points_max}

    @classmethod
    def from_wire(cls, args: dict[str, Any]) -> StreamRanges:
        arcs = args.get("arcs")
        if (not isinstance(arcs, list) or len(arcs) > ARCS_PER_MESSAGE_MAX
                or not all(isinstance(a, list) and len(a) == 2
                           and all(type(t) is int and 0 <= t < 1 << 64 for t in a)
                           for a in arcs)):
            raise _malformed("stream request", "arcs")
        points_max = _int(args, "points_max", "stream request")
        if not 0 < points_max <= STREAM_POINTS_MAX:
            raise _malformed("stream request", "points_max")
        return cls(_int(args, "epoch", "stream request"), [(a[0], a[1]) for a in arcs],
                   _str(args, "after", "stream request"),
                   _int(args, "after_ts", "stream request"), points_max)


def _catalogue(*classes: type[Message]) -> dict[str, type[Message]]:
    tags = {cls.TAG: cls for cls in classes}
    assert len(tags) == len(classes), "two operations share a tag"
    return tags


CLIENT_OPERATIONS = _catalogue(Insert, ReadRange, Aggregate, ListSeries, Health, Readiness,
                               Live, Stats, Endpoints, ClusterStatus, Repair, Decommission,
                               RemoveNode)
PEER_OPERATIONS = _catalogue(ReplicaWrite, ReplicaRead, ReplicaSeries, DigestRanges,
                             DigestSeries, BucketPoints, TopologyGet, Prepare, Accept, Commit,
                             JoinRequest, StreamRanges)


def decode(catalogue: dict[str, type[Message]], tag: str, args: dict[str, Any]) -> Message:
    """The operation ``tag`` names, decoded from ``args`` (BadRequest if unknown or bad)."""
    cls = catalogue.get(tag)
    if cls is None:
        raise BadRequest(f"unknown operation {tag!r:.40}")
    if not isinstance(args, dict):
        raise BadRequest(f"malformed {tag}: arguments")
    return cls.from_wire(args)


# -- reply bodies ---------------------------------------------------------------------------

def points_to_wire(cols: Columns, versions: bool) -> dict[str, bytes]:
    body = {"ts": cols.ts.tobytes(), "val": cols.val.tobytes()}
    if versions:
        body["ver"] = cols.ver.tobytes()
    return body


def points_from_wire(body: Any) -> Columns:
    """Points with versions from a peer's reply (Unavailable if malformed: the peer is at
    fault, not the client)."""
    try:
        cols = Columns(np.frombuffer(body["ts"], np.int64), np.frombuffer(body["val"], np.float64),
                       np.frombuffer(body["ver"], np.uint64))
    except (KeyError, TypeError, ValueError):
        raise Unavailable("malformed points reply from a peer") from None
    if not len(cols.ts) == len(cols.val) == len(cols.ver):
        raise Unavailable("malformed points reply from a peer")
    return cols
