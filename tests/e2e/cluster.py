"""A cluster of real ``count-server`` nodes on loopback, built on ``CountNode``.

``Cluster(workdir, n, rf=2, env={...})`` gives ``n`` nodes with one CLUSTER_NODES list and
NODE_IDs 1..n; nodes are addressed by their NODE_ID everywhere (``cluster.node(2)``,
``cluster.kill(2)``), the same ids ``/cluster/endpoints`` answers with. Every process is
started from the calling (main) thread, so conftest's PR_SET_PDEATHSIG still ties each
server to the test runner; waits are bounded and their errors carry the nodes' log tails.

Fixtures: ``make_cluster`` (function scope: ``make_cluster(n, rf, env)`` -> a started,
converged Cluster, all killed at teardown) and ``cluster3`` (module scope: three nodes,
RF=2, fast heartbeats, shared by the read/write tests that leave it whole).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import START_TIMEOUT_S, CountNode, NodeError, free_port

# Failure detection in a few seconds instead of the defaults' 4 to 5: most tests only need
# some node to be seen down, not the defaults' exact timing.
FAST_ENV: dict[str, str] = {
    "HEARTBEAT_INTERVAL_MS": "500",
    "FAILURE_TIMEOUT_MS": "2000",
}
# Bound of every cluster-level wait (membership convergence, hand-off, anti-entropy).
CLUSTER_TIMEOUT_S = 30.0


class Cluster:
    def __init__(self, workdir: Path, n: int, rf: int | None = 2,
                 env: Mapping[str, str | None] | None = None, name: str = "c") -> None:
        assert n >= 1
        self.workdir = Path(workdir)
        self.rf = rf
        ports = [free_port() for _ in range(n)]
        self.members = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.nodes: dict[int, CountNode] = {}
        for i, port in enumerate(ports, start=1):
            node_env: dict[str, str | None] = {
                "CLUSTER_ENABLED": "true", "CLUSTER_NODES": self.members, "NODE_ID": str(i),
            }
            if rf is not None:
                node_env["REPLICATION_FACTOR"] = str(rf)
            node_env.update(env or {})
            self.nodes[i] = CountNode(self.workdir, env=node_env, port=port, name=f"{name}-n{i}")

    # -- access ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def ids(self) -> list[int]:
        return list(self.nodes)

    def node(self, i: int) -> CountNode:
        return self.nodes[i]

    __getitem__ = node

    def __iter__(self) -> Iterator[CountNode]:
        return iter(self.nodes.values())

    def live_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running()]

    def live(self) -> list[CountNode]:
        return [self.nodes[i] for i in self.live_ids()]

    def id_of_address(self, address: str) -> int:
        for i, node in self.nodes.items():
            if node.address == address:
                return i
        raise KeyError(address)

    # -- process control ---------------------------------------------------------------------

    def start(self, ids: list[int] | None = None, timeout: float = START_TIMEOUT_S,
              converge: bool = True, _baseline: dict[tuple[int, int], int] | None = None
              ) -> Cluster:
        """Start the given nodes (default: all that are not running) and wait until each
        answers; then, if ``converge``, until every running node has heard from this run of
        each started node and every running node sees every running node alive."""
        ids = [i for i in (ids or self.ids) if not self.nodes[i].running()]
        baseline = self._rejoin_baseline(ids) if _baseline is None else _baseline
        for i in ids:  # from this thread: PR_SET_PDEATHSIG is per forking thread
            self.nodes[i].start()
        for i in ids:
            self.nodes[i].wait_ready(timeout)
        if converge:
            self._wait_rejoined(baseline)
            self.wait_converged()
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s whole process tree."""
        self.nodes[i].kill()

    # A peer that has not noticed a quick kill still counts the old run as alive, so "sees
    # every node alive" alone does not say it has met the new run: its log line does.
    def _rejoins(self, observer: int, i: int) -> int:
        return len(re.findall(rf"Node {i} (?:joining|back online|restarted) \(",
                              self.nodes[observer].log))

    def _rejoin_baseline(self, ids: list[int]) -> dict[tuple[int, int], int]:
        """For each running node j not in ``ids``: how often it has logged meeting each i."""
        return {(j, i): self._rejoins(j, i) for j in self.live_ids() if j not in ids
                for i in ids}

    def _wait_rejoined(self, baseline: dict[tuple[int, int], int],
                       timeout: float = CLUSTER_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = [(j, i) for (j, i), n in baseline.items()
                       if self.nodes[j].running() and self._rejoins(j, i) <= n]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise NodeError(f"node(s) {waiting} (observer, started) never logged meeting the "
                                f"new run within {timeout} s\n{self.log_tails()}")
            time.sleep(0.1)

    def stop(self, i: int, timeout: float | None = None) -> int:
        """SIGTERM node ``i`` (a clean stop: it says it is leaving); its exit code."""
        node = self.nodes[i]
        return node.stop() if timeout is None else node.stop(timeout=timeout)

    def restart(self, i: int, converge: bool = True, sig: int | None = None) -> CountNode:
        """Start node ``i`` again on the same DATA_DIR (SIGKILLed first if still running, or
        stopped with ``sig``); then wait until the live nodes see each other."""
        node = self.nodes[i]
        baseline = self._rejoin_baseline([i])
        if node.running():
            if sig is None:
                node.kill()
            else:
                node.stop(sig)
        self.start([i], converge=converge, _baseline=baseline)
        return node

    def wipe(self, i: int, converge: bool = True) -> CountNode:
        """Kill node ``i``, delete its DATA_DIR and start it again, empty."""
        node = self.nodes[i]
        baseline = self._rejoin_baseline([i])
        node.kill()
        shutil.rmtree(node.data_dir, ignore_errors=True)
        assert not node.data_dir.exists()
        self.start([i], converge=converge, _baseline=baseline)
        return node

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.cleanup()

    # -- membership waits ----------------------------------------------------------------

    def health(self, i: int) -> dict[str, Any]:
        """Node ``i``'s /health body: 200 unless it is unhealthy, then 503 (same body)."""
        resp = self.nodes[i].get("/health", timeout=5)
        body = resp.json()
        expected = 503 if body.get("status") == "unhealthy" else 200
        assert resp.status_code == expected, (resp.status_code, resp.text[:300])
        return body

    def status(self, i: int) -> dict[str, Any]:
        resp = self.nodes[i].get("/cluster/status", timeout=5)
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        return resp.json()

    def alive_seen(self, i: int) -> set[int]:
        """Node ids that node ``i`` sees alive (itself included)."""
        return {self.id_of_address(m["address"]) for m in self.status(i)["members"] if m["alive"]}

    def wait_sees(self, i: int, alive: set[int] | int, timeout: float = CLUSTER_TIMEOUT_S
                  ) -> dict[str, Any]:
        """Wait until node ``i`` sees exactly ``alive`` (a set of ids, or a count) alive."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                if isinstance(alive, int):
                    last = self.health(i)
                    if last["cluster_size"] == alive:
                        return last
                else:
                    last = self.alive_seen(i)
                    if last == alive:
                        return {"alive": last}
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise NodeError(f"node {i} does not see {alive} alive within {timeout} s (last: {last})"
                        f"\n{self.nodes[i].log_tail()}")

    def wait_converged(self, timeout: float = CLUSTER_TIMEOUT_S) -> None:
        """Wait until every running node sees exactly the running nodes alive, none of them
        still catching up (state "syncing")."""
        deadline = time.monotonic() + timeout
        want = set(self.live_ids())
        for i in sorted(want):
            try:
                self.wait_sees(i, want, max(0.5, deadline - time.monotonic()))
                self.wait_until(lambda i=i: not self.syncing_seen(i),
                                f"node {i} sees no member catching up",
                                max(0.5, deadline - time.monotonic()))
            except NodeError as exc:
                tails = "\n".join(f"--- node {j} ---\n{self.nodes[j].log_tail(15)}"
                                  for j in sorted(want) if j != i)
                raise NodeError(f"{exc}\n{tails}") from None

    def syncing_seen(self, i: int) -> list[int]:
        """The running members node ``i`` sees catching up after a new or wiped store."""
        live = {self.nodes[j].address for j in self.live_ids()}
        return [self.id_of_address(m["address"]) for m in self.status(i)["members"]
                if m["state"] == "syncing" and m["address"] in live]

    # -- helpers over the API ------------------------------------------------------------

    def endpoints(self, series: str, via: int | None = None) -> list[int]:
        node = self.nodes[via if via is not None else self.live_ids()[0]]
        resp = node.get(f"/cluster/endpoints/{series}")
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        return resp.json()["replicas"]

    def series_on(self, wanted: Callable[[list[int]], bool], count: int, prefix: str,
                  via: int | None = None, limit: int = 10_000) -> list[str]:
        """``count`` series names ``prefix.k`` whose replica list satisfies ``wanted``."""
        found = []
        for k in range(limit):
            name = f"{prefix}.{k}"
            if wanted(self.endpoints(name, via)):
                found.append(name)
                if len(found) == count:
                    return found
        raise AssertionError(f"fewer than {count} of {limit} series names matched")

    def insert(self, i: int, points: Any, consistency: str | None = None,
               expect: int | None = 201) -> requests.Response:
        params = {"consistency": consistency} if consistency else None
        resp = self.nodes[i].post("/insert", data=json.dumps(points).encode(), params=params,
                                  headers={"Content-Type": "application/json"})
        if expect is not None:
            assert resp.status_code == expect, (i, resp.status_code, resp.text[:500])
        return resp

    def stats(self, i: int) -> dict[str, Any]:
        return self.nodes[i].stats()

    def wait_until(self, predicate: Callable[[], Any], what: str,
                   timeout: float = CLUSTER_TIMEOUT_S, interval: float = 0.2) -> Any:
        """Poll ``predicate`` until it returns something truthy (bounded); that value."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except (requests.RequestException, AssertionError) as exc:
                last_exc = exc
            time.sleep(interval)
        raise NodeError(f"{what}: not within {timeout} s (last error: {last_exc!r})\n"
                        + self.log_tails())

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- node {i} ---\n{n.log_tail(lines)}" for i, n in self.nodes.items())

    def alone(self, i: int, sig: int | None = None) -> CountNode:
        """Take every other node down (SIGKILL, or ``sig``) and wait until node ``i`` sees
        itself alone: it then answers reads from its own storage only."""
        for j in self.live_ids():
            if j != i:
                if sig is None:
                    self.kill(j)
                else:
                    self.nodes[j].stop(sig)
        self.wait_sees(i, 1)
        return self.nodes[i]

    def __repr__(self) -> str:
        return f"Cluster({self.members}, rf={self.rf})"


class ClusterFactory:
    """Creates clusters and kills every node of them at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.clusters: list[Cluster] = []
        self._count = 0

    def __call__(self, n: int = 3, rf: int | None = 2, env: Mapping[str, str | None] | None = None,
                 start: bool = True, fast: bool = True) -> Cluster:
        self._count += 1
        merged: dict[str, str | None] = dict(FAST_ENV) if fast else {}
        merged.update(env or {})
        cluster = Cluster(self.workdir / f"cluster{self._count}", n, rf, merged,
                          name=f"c{self._count}")
        self.clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    def cleanup(self) -> None:
        for cluster in self.clusters:
            cluster.cleanup()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``make_cluster(n=3, rf=2, env=None, start=True, fast=True)`` -> a converged Cluster."""
    factory = ClusterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes, RF=2, fast heartbeats, for the whole module: tests must leave it whole."""
    factory = ClusterFactory(tmp_path_factory.mktemp("cluster3"))
    try:
        yield factory(3, 2)
    finally:
        factory.cleanup()
