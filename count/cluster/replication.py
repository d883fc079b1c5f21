"""The pure parts of replication: consistency levels, splitting and encoding writes, and
counting acknowledgements. No I/O: the coordinator wires them to channels and storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from count.errors import Unavailable
from count.storage.engine import WriteRequest
from count.storage.merge import Columns

Reply = Callable[[int, Any], None]
CONSISTENCY_LEVELS = ("one", "quorum", "all")


def required(level: str, rf: int) -> int:
    """Acknowledgements a consistency level needs out of ``rf`` replicas."""
    return {"one": 1, "quorum": rf // 2 + 1, "all": rf}[level]


def subset(write: WriteRequest, name_mask: np.ndarray) -> WriteRequest:
    """The points of ``write`` whose series are selected by ``name_mask``."""
    if name_mask.all():
        return write
    chosen = np.flatnonzero(name_mask)
    point_mask = name_mask[write.idx]
    remap = np.full(len(write.names), -1, np.int64)
    remap[chosen] = np.arange(len(chosen))
    version = write.version
    if isinstance(version, np.ndarray):
        version = version[point_mask]
    return WriteRequest([write.names[i] for i in chosen],
                        remap[write.idx[point_mask]].astype(np.uint32),
                        write.ts[point_mask], write.val[point_mask], version)


def write_args(write: WriteRequest, hint: str | None) -> dict[str, Any]:
    """A write as a peer operation; points keep their versions."""
    version = write.version
    return {"names": write.names, "idx": write.idx.tobytes(), "ts": write.ts.tobytes(),
            "val": write.val.tobytes(),
            "ver": version.tobytes() if isinstance(version, np.ndarray) else version,
            "hint": hint}


def points_body(cols: Columns, versions: bool) -> dict[str, bytes]:
    body = {"ts": cols.ts.tobytes(), "val": cols.val.tobytes()}
    if versions:
        body["ver"] = cols.ver.tobytes()
    return body


def columns_of(body: Any) -> Columns:
    """Points with versions from a peer's read reply (CountError if malformed)."""
    try:
        cols = Columns(np.frombuffer(body["ts"], np.int64), np.frombuffer(body["val"], np.float64),
                       np.frombuffer(body["ver"], np.uint64))
    except (KeyError, TypeError, ValueError):
        raise Unavailable("malformed read reply from a peer") from None
    if not len(cols.ts) == len(cols.val) == len(cols.ver):
        raise Unavailable("malformed read reply from a peer")
    return cols


class Quorum:
    """One client insert waiting until every replica group has W acknowledgements."""

    def __init__(self, reply: Reply, groups: list[int], needed: int, level: str, rf: int,
                 points: int) -> None:
        self.reply = reply
        self.sizes = groups
        self.acks = [0] * len(groups)
        self.fails = [0] * len(groups)
        self.needed = needed
        self.level = level
        self.rf = rf
        self.points = points
        self.done = False
        self.errors: list[tuple[int, str]] = []

    def result(self, groups: list[int], status: int, detail: str) -> None:
        ok = status < 300
        for g in groups:
            if ok:
                self.acks[g] += 1
            else:
                self.fails[g] += 1
        if not ok:
            self.errors.append((status, detail))
        if self.done:
            return
        if all(a >= self.needed for a in self.acks):
            self.done = True
            self.reply(201, {"inserted": self.points})
        elif any(size - fail < self.needed for size, fail in zip(self.sizes, self.fails,
                                                                  strict=True)):
            self.done = True
            statuses = {status for status, _ in self.errors}
            # Replicas that all failed the same way (a full disk, 507) report that status.
            status = statuses.pop() if len(statuses) == 1 else 503
            if self.sizes == [1]:
                self.reply(status, self.errors[0][1])
                return
            self.reply(status, f"write reached {min(self.acks)} of {self.rf} replicas but "
                               f"consistency={self.level} needs {self.needed}; points may be "
                               f"stored on some replicas "
                               f"({'; '.join(d for _, d in self.errors[:3])})")


class Gather:
    """Answers from several nodes; ``done`` runs once when every node has answered or failed."""

    def __init__(self, nodes: list[str], done: Callable[[dict[str, Any], dict[str, tuple[int, str]]], None]) -> None:
        self.waiting = set(nodes)
        self.answers: dict[str, Any] = {}
        self.errors: dict[str, tuple[int, str]] = {}
        self._done = done
        if not self.waiting:
            done(self.answers, self.errors)

    def callback(self, node: str) -> Reply:
        def on_result(status: int, body: Any) -> None:
            if node not in self.waiting:
                return
            self.waiting.discard(node)
            if status < 300:
                self.answers[node] = body
            else:
                self.errors[node] = (status, str(body))
            if not self.waiting:
                self._done(self.answers, self.errors)
        return on_result


def merge_writes(parts: list[WriteRequest]) -> WriteRequest:
    """One write holding several single-series writes that carry per-point versions."""
    names = [p.names[0] for p in parts]
    idx = np.concatenate([np.full(len(p.ts), i, np.uint32) for i, p in enumerate(parts)])
    return WriteRequest(names, idx, np.concatenate([p.ts for p in parts]),
                        np.concatenate([p.val for p in parts]),
                        np.concatenate([p.versions() for p in parts]))
