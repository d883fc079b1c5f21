"""A seeded client workload against the simulated cluster, and the history it records.

Clients write unique points and overwrite points already written (through another node
than the first write, so different coordinators race on one key), at every consistency
level, and read series back from every node. Every value written is unique, so a value read
names the write it came from. The history keeps, per operation, when it was sent, when it
was answered and how.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from count.messages import CONSISTENCY_LEVELS, Insert, ReadRange, points_from_wire
from count.sim.world import World
from count.storage.writes import TIMESTAMP_MAX_MS

SERIES = 12
LEVEL_WEIGHTS = (1, 2, 1)  # one, quorum, all
KIND_WEIGHTS = {"write": 4, "overwrite": 2, "read": 3}
POINTS_PER_SERIES_MAX = 4
SERIES_PER_WRITE_MAX = 3
TS_STEP_MS = 1000


@dataclass
class Write:
    op: int
    node: int
    level: str
    sent_s: float
    points: list[tuple[str, int, float]]
    done_s: float | None = None
    outcome: str = "pending"  # ok | failed | maybe | pending
    status: int = 0
    detail: str = ""


@dataclass
class Read:
    op: int
    node: int
    level: str
    series: str
    sent_s: float
    done_s: float | None = None
    status: int = 0
    detail: str = ""
    points: dict[int, float] = field(default_factory=dict)


class Workload:
    def __init__(self, world: World, rng: random.Random, series: int = SERIES) -> None:
        self.world = world
        self.rng = rng
        self.series = [f"s{k}" for k in range(series)]
        self.writes: list[Write] = []
        self.reads: list[Read] = []
        self.next_op = 0
        self._next_ts = {s: 0 for s in self.series}
        self._written_keys: list[tuple[str, int, int]] = []  # (series, ts, first node)
        # Every value ever sent for a key: a read may return only these.
        self.values: dict[tuple[str, int], set[float]] = {}

    def schedule(self, start_s: float, end_s: float, ops_per_s: float) -> None:
        """Operations at seeded (Poisson) times in [start_s, end_s)."""
        t = start_s
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        while True:
            t += self.rng.expovariate(ops_per_s)
            if t >= end_s:
                return
            kind = self.rng.choices(kinds, weights)[0]
            self.world.at(t, getattr(self, f"_{kind}"))

    def _node(self, avoid: int | None = None) -> int:
        ids = [i for i in self.world.nodes if i != avoid] or list(self.world.nodes)
        return self.rng.choice(ids)

    def _level(self) -> str:
        return self.rng.choices(CONSISTENCY_LEVELS, LEVEL_WEIGHTS)[0]

    def _op_id(self) -> int:
        self.next_op += 1
        return self.next_op

    def _write(self) -> None:
        points: list[tuple[str, int]] = []
        for name in self.rng.sample(self.series, self.rng.randint(1, SERIES_PER_WRITE_MAX)):
            for _ in range(self.rng.randint(1, POINTS_PER_SERIES_MAX)):
                self._next_ts[name] += 1
                points.append((name, self._next_ts[name] * TS_STEP_MS))
        self.send_write(self._node(), self._level(), points)

    def _overwrite(self) -> None:
        if not self._written_keys:
            self._write()
            return
        picks = [self.rng.choice(self._written_keys)
                 for _ in range(self.rng.randint(1, SERIES_PER_WRITE_MAX))]
        keys = list(dict.fromkeys((s, ts) for s, ts, _ in picks))
        self.send_write(self._node(avoid=picks[0][2]), self._level(), keys)

    def send_write(self, node: int, level: str, keys: list[tuple[str, int]]) -> Write:
        op = self._op_id()
        points = [(s, ts, float(op * 64 + k)) for k, (s, ts) in enumerate(keys)]
        for s, ts, value in points:
            self.values.setdefault((s, ts), set()).add(value)
            self._written_keys.append((s, ts, node))
        names = list(dict.fromkeys(s for s, _, _ in points))
        index = {name: i for i, name in enumerate(names)}
        msg = Insert(names, np.array([index[s] for s, _, _ in points], np.uint32),
                     np.array([ts for _, ts, _ in points], np.int64),
                     np.array([v for _, _, v in points], np.float64), level)
        write = Write(op, node, level, self.world.now_s, points)
        self.writes.append(write)

        def done(status: int, body: Any) -> None:
            write.done_s, write.status, write.detail = self.world.now_s, status, str(body)
            if status == 201:
                write.outcome = "ok"
            elif status == 0 and body == "timeout":
                write.outcome = "maybe"
            else:
                write.outcome = "failed"
        self.world.nodes[node].request(op, msg, done)
        return write

    def _read(self) -> None:
        self.send_read(self._node(), self._level(), self.rng.choice(self.series))

    def send_read(self, node: int, level: str, series: str) -> Read:
        op = self._op_id()
        read = Read(op, node, level, series, self.world.now_s)
        self.reads.append(read)

        def done(status: int, body: Any) -> None:
            read.done_s, read.status = self.world.now_s, status
            if status == 200:
                # The client's reply carries no versions; the wire form is the same.
                cols = points_from_wire({**body, "ver": np.zeros(len(body["ts"]) // 8,
                                                                 np.uint64).tobytes()})
                read.points = dict(zip(cols.ts.tolist(), cols.val.tolist(), strict=True))
            else:
                read.detail = str(body)
        self.world.nodes[node].request(op, ReadRange(series, 0, TIMESTAMP_MAX_MS, level), done)
        return read
