"""Concurrent write workloads that remember what every request did, and a checker for them.

Each writer thread sends batches and records every point it attempted with the outcome of
its request: ``ack`` (201), ``rejected`` (a 4xx: definitely not stored) or ``unknown`` (a
5xx, a timeout, a connection error: it may or may not have been stored). A thread writes
its attempts in order, so for each (series, timestamp) the checker knows which values may
legitimately be there after a crash: the last acknowledged one, or one of the unknown ones
attempted after it.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from tests.e2e.conftest import CountNode

if TYPE_CHECKING:
    from tests.e2e.cluster import Cluster

Key = tuple[str, int]
Batch = list[dict[str, Any]]


class PointLog:
    """Every attempted point, per key, in the order its (single) writer thread sent it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts: dict[Key, list[tuple[float, str]]] = collections.defaultdict(list)
        self.statuses: collections.Counter[Any] = collections.Counter()
        self.errors: list[str] = []

    def record(self, batch: Batch, outcome: str, status: Any) -> None:
        with self._lock:
            self.statuses[status] += 1
            for p in batch:
                self.attempts[(p["series"], p["timestamp"])].append((float(p["value"]), outcome))

    def note(self, message: str) -> None:
        with self._lock:
            if len(self.errors) < 50:
                self.errors.append(message)

    def acked_now(self, series: str) -> dict[int, float]:
        """{timestamp: value} of the points of ``series`` whose last attempt so far was acked."""
        with self._lock:
            return {ts: attempts[-1][0] for (s, ts), attempts in self.attempts.items()
                    if s == series and attempts[-1][1] == "ack"}

    def acked_points(self) -> int:
        return sum(1 for a in self.attempts.values() if any(o == "ack" for _, o in a))

    def allowed(self, key: Key) -> tuple[set[float], bool]:
        """(values the key may hold, whether it may be absent)."""
        attempts = [a for a in self.attempts.get(key, []) if a[1] != "rejected"]
        last_ack = max((i for i, (_, o) in enumerate(attempts) if o == "ack"), default=None)
        if last_ack is None:
            return {v for v, _ in attempts}, True
        return {attempts[last_ack][0]} | {v for v, o in attempts[last_ack + 1:] if o == "unknown"}, False

    def series_names(self) -> set[str]:
        return {s for s, _ in self.attempts}

    def verify(self, node: CountNode) -> dict[str, Any]:
        """Read every series back; return a report with the problems found (empty = good)."""
        missing: list[Key] = []
        wrong: list[tuple[Key, float, set[float]]] = []
        phantom: list[tuple[Key, float]] = []
        found = 0
        by_series: dict[str, list[int]] = collections.defaultdict(list)
        for series, ts in self.attempts:
            by_series[series].append(ts)
        for name in sorted(by_series):
            rows = node.range(name)
            stamps = [r["timestamp"] for r in rows]
            assert stamps == sorted(set(stamps)), f"{name}: not sorted/unique"
            got = {r["timestamp"]: r["value"] for r in rows}
            found += len(got)
            for ts in by_series[name]:
                values, may_be_absent = self.allowed((name, ts))
                if ts not in got:
                    if not may_be_absent:
                        missing.append((name, ts))
                elif got[ts] not in values:
                    wrong.append(((name, ts), got[ts], values))
            for ts, value in got.items():
                if (name, ts) not in self.attempts:
                    phantom.append(((name, ts), value))
        return {"missing": missing, "wrong": wrong, "phantom": phantom, "found": found,
                "acked": self.acked_points()}


def insert_outcome(session: requests.Session, node: CountNode, batch: Batch,
                   timeout: float = 15.0) -> tuple[str, Any, str]:
    """POST one batch; (outcome, status or exception name, response text)."""
    body = json.dumps(batch if len(batch) != 1 else batch[0]).encode()
    try:
        resp = session.post(node.url("/insert"), data=body, timeout=timeout,
                            headers={"Content-Type": "application/json"})
    except requests.RequestException as exc:
        return "unknown", type(exc).__name__, str(exc)[:200]
    if resp.status_code == 201:
        return "ack", 201, resp.text
    if 400 <= resp.status_code < 500:
        return "rejected", resp.status_code, resp.text[:200]
    return "unknown", resp.status_code, resp.text[:200]


class Writers:
    """``threads`` writer threads, each calling ``make_batch(thread, seq, rng)`` in a loop."""

    def __init__(self, node: CountNode, log: PointLog, threads: int,
                 make_batch: Callable[[int, int, random.Random], Batch],
                 requests_per_thread: int | None = None, seed: int = 0) -> None:
        self.node = node
        self.log = log
        self.make_batch = make_batch
        self.requests_per_thread = requests_per_thread
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i, seed), daemon=True,
                                         name=f"writer-{i}") for i in range(threads)]
        self.sent = 0
        self._lock = threading.Lock()

    def start(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def _run(self, index: int, seed: int) -> None:
        rng = random.Random(seed * 1000 + index)
        session = requests.Session()
        seq = 0
        while not self.stop_event.is_set():
            if self.requests_per_thread is not None and seq >= self.requests_per_thread:
                break
            batch = self.make_batch(index, seq, rng)
            outcome, status, text = insert_outcome(session, self.node, batch)
            self.log.record(batch, outcome, status)
            if outcome != "ack":
                self.log.note(f"writer {index} request {seq}: {status} {text}")
            with self._lock:
                self.sent += 1
            seq += 1
            if outcome == "unknown" and not isinstance(status, int):
                time.sleep(0.05)  # connection refused: the node is down; do not spin

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.join(timeout)

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"writer threads still running after {timeout} s: {alive}"


T0_MS = 1_640_995_200_000  # the README's timestamp


def load_batch(prefix: str) -> Callable[[int, int, random.Random], Batch]:
    """A ``make_batch`` for ``Writers``: ten new points over four series per request, and
    every third request from the sixth on also overwrites one earlier point of its thread."""
    def make(thread: int, seq: int, rng: random.Random) -> Batch:
        batch = [{"series": f"{prefix}.t{thread}.s{j % 4}", "timestamp": T0_MS + seq * 10 + j,
                  "value": rng.randint(0, 1_000_000) / 4} for j in range(10)]
        if seq >= 5 and seq % 3 == 0:
            old, j = rng.randrange(seq), rng.randrange(10)
            batch.append({"series": f"{prefix}.t{thread}.s{j % 4}",
                          "timestamp": T0_MS + old * 10 + j, "value": -rng.randint(1, 1000)})
        return batch
    return make


def verify_all(log: PointLog, nodes: list[CountNode], when: str) -> str:
    """Read everything back through each node; fail on a lost, wrong or phantom point.
    Returns the summary line (acknowledged, maybe, lost) of the last node read."""
    unknown = sum(1 for a in log.attempts.values() for _, o in a if o == "unknown")
    summary = ""
    for node in nodes:
        report = log.verify(node)
        summary = (f"{when}, read through {node.name}: acknowledged {report['acked']}, maybe "
                   f"(unknown outcome) {unknown}, lost {len(report['missing'])}, wrong "
                   f"{len(report['wrong'])}, phantom {len(report['phantom'])}, found "
                   f"{report['found']}")
        assert not report["missing"], f"{summary}; lost e.g. {report['missing'][:5]}"
        assert not report["wrong"], f"{summary}; wrong e.g. {report['wrong'][:5]}"
        assert not report["phantom"], f"{summary}; phantom e.g. {report['phantom'][:5]}"
    return summary


def writers_on(cluster: Cluster, log: PointLog, ids: list[int], prefix: str) -> list[Writers]:
    """Two writer threads through each of the nodes ``ids``, logging into ``log``."""
    return [Writers(cluster.node(i), log, threads=2, make_batch=load_batch(f"{prefix}.n{i}"),
                    seed=i).start() for i in ids]


def acked_grows(cluster: Cluster, log: PointLog, by: int, what: str) -> None:
    """Wait until ``by`` more requests have been acknowledged (the cluster takes writes)."""
    target = log.statuses[201] + by
    cluster.wait_until(lambda: log.statuses[201] >= target, what, 60)


def holds_every_acked(node: CountNode, log: PointLog, names: set[str], what: str) -> None:
    """``node`` (alone: it answers from its own storage) holds every acknowledged point of
    the series ``names``."""
    assert names, f"{what}: no series to check"
    for name in sorted(names):
        got = {p["timestamp"] for p in node.range(name)}
        acked = {ts for (s, ts), attempts in log.attempts.items()
                 if s == name and any(o == "ack" for _, o in attempts)}
        assert acked <= got, (what, name, len(acked - got), "acknowledged points missing")


def unexpected(log: PointLog) -> dict[object, int]:
    """Statuses no correct node gives here: 201, 503 (short of replicas while a node
    restarts or leaves) and connection errors of a node's own clients while it is down are
    expected."""
    return {s: n for s, n in log.statuses.items()
            if s not in (201, 503) and not (isinstance(s, str) and "Timeout" not in s)}
