"""Membership changes with real processes, under write load: a dynamic join, a decommission,
a removenode of a SIGKILLed node, and a join interrupted by kill -9 of the joiner.

Every test writes through the whole change and then reads every acknowledged point back
through every remaining node (``verify_all``: zero lost, wrong or phantom), and checks the
placement the change ends with: the joiner alone holds its ranges; after a node leaves,
the survivors alone hold every series.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from count.cluster.ring import Ring
from tests.e2e.conftest import REPO_ROOT
from tests.e2e.workload import (
    T0_MS,
    PointLog,
    acked_grows,
    holds_every_acked,
    unexpected,
    verify_all,
    writers_on,
)

if TYPE_CHECKING:
    from tests.e2e.cluster import Cluster, ClusterFactory

pytest_plugins = ("tests.e2e.cluster",)

pytestmark = pytest.mark.timeout(240)


def _ring_states(cluster: Cluster, i: int) -> dict[int, str]:
    """Each member's ring state as node ``i`` has it; one that has left is no longer listed."""
    status = cluster.status(i)
    listed = {cluster.id_of_address(m["address"]): m["ring_state"] for m in status["members"]}
    return {j: listed.get(j, "left") for j in cluster.ids}


def _wait_states(cluster: Cluster, ids: list[int], want: dict[int, str], what: str,
                 timeout: float = 120) -> None:
    cluster.wait_until(lambda: all({k: v for k, v in _ring_states(cluster, i).items()
                                    if k in want} == want for i in ids), what, timeout)


def _seeded_cluster(make_cluster: ClusterFactory, n_running: int, env: dict[str, str]
                    ) -> Cluster:
    """``n_running`` + 1 nodes: the first ``n_running`` list only themselves; the last
    (not started) lists itself and node 1, as a node joining a running cluster does."""
    cluster = make_cluster(n_running + 1, 2, start=False, env=env)
    addr = {i: cluster.node(i).address for i in cluster.ids}
    for i in range(1, n_running + 1):
        cluster.node(i).env_overrides["CLUSTER_NODES"] = ",".join(
            addr[j] for j in range(1, n_running + 1))
    new = n_running + 1
    cluster.node(new).env_overrides["CLUSTER_NODES"] = f"{addr[new]},{addr[1]}"
    cluster.start(list(range(1, n_running + 1)))
    return cluster


def test_a_fourth_node_joins_under_write_load(make_cluster: ClusterFactory) -> None:
    cluster = _seeded_cluster(make_cluster, 3, {})
    addr = {i: cluster.node(i).address for i in cluster.ids}
    log = PointLog()
    writers = writers_on(cluster, log, [1, 2, 3], "join")
    try:
        acked_grows(cluster, log, 100, "writes on three nodes")
        cluster.node(4).start_ready()
        _wait_states(cluster, [1, 2, 3, 4], {4: "normal"}, "node 4 joined on every node")
        for i in (1, 2, 3, 4):
            assert cluster.health(i)["cluster_size"] == 4, (i, cluster.health(i))
        acked_grows(cluster, log, 60, "writes with four members")
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])
    assert "Streaming: node 4 fetched every range" in cluster.node(4).log
    print(verify_all(log, [cluster.node(i) for i in (4, 1, 2, 3)], "after node 4 joined"),
          dict(log.statuses))
    ring = Ring([addr[i] for i in (1, 2, 3, 4)])
    on4 = {s for s in log.series_names() if addr[4] in ring.replicas(s, 2)}
    holds_every_acked(cluster.alone(4, sig=signal.SIGTERM), log, on4, "node 4 alone")


def test_decommission_under_write_load_exits_zero(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(4, 2)
    log = PointLog()
    writers = writers_on(cluster, log, [1, 2, 3], "leave")
    try:
        acked_grows(cluster, log, 100, "writes on four nodes")
        done = subprocess.run(
            [sys.executable, "-m", "count.cli", "--url", cluster.node(4).url(""),
             "decommission"], capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "Node 4 decommissioned" in done.stdout, done.stdout
        assert cluster.node(4).wait_exit(30) == 0
        _wait_states(cluster, [1, 2, 3], {4: "left"}, "node 4 left on every node")
        acked_grows(cluster, log, 60, "writes on three nodes")
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])
    print(verify_all(log, [cluster.node(i) for i in (1, 2, 3)], "after node 4 left"),
          dict(log.statuses))
    addr = [cluster.node(i).address for i in (1, 2, 3)]
    ring = Ring(addr)
    on1 = {s for s in log.series_names() if addr[0] in ring.replicas(s, 2)}
    holds_every_acked(cluster.alone(1, sig=signal.SIGTERM), log, on1, "node 1 alone")


def test_removenode_of_a_killed_node_restores_the_replication_factor(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    log = PointLog()
    writers = writers_on(cluster, log, [1, 2], "remove")
    try:
        acked_grows(cluster, log, 100, "writes on three nodes")
        cluster.kill(3)
        cluster.wait_sees(1, {1, 2})
        resp = cluster.node(1).post("/cluster/removenode/3")
        assert resp.status_code == 202, (resp.status_code, resp.text)
        _wait_states(cluster, [1, 2], {3: "left"}, "node 3 removed on every node")
        acked_grows(cluster, log, 60, "writes on two nodes")
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])
    resp = cluster.node(1).post("/cluster/removenode/3")
    assert resp.status_code == 404, (resp.status_code, resp.text)
    print(verify_all(log, [cluster.node(i) for i in (1, 2)], "after removing node 3"))
    # Two members, two replicas: each alone holds everything, anti-entropy being off.
    names = log.series_names()
    holds_every_acked(cluster.alone(2, sig=signal.SIGTERM), log, names, "node 2 alone")
    cluster.start([1], converge=False)
    holds_every_acked(cluster.alone(1, sig=signal.SIGTERM), log, names, "node 1 alone")


def _bulk(cluster: Cluster, points: int, series: int) -> list[dict[str, Any]]:
    """Load ``points`` points over ``series`` series, 10,000 per request."""
    sent = []
    per = points // series
    for s in range(series):
        batch = {"series": f"bulk.{s}", "timestamps": list(range(T0_MS, T0_MS + per)),
                 "values": [float(v) for v in range(per)]}
        for start in range(0, per, 10_000):
            part = {"series": batch["series"],
                    "timestamps": batch["timestamps"][start:start + 10_000],
                    "values": batch["values"][start:start + 10_000]}
            cluster.insert(1 + s % 3, part)
        sent.append(batch)
    return sent


def test_a_join_killed_mid_stream_resumes_on_restart(make_cluster: ClusterFactory) -> None:
    cluster = _seeded_cluster(make_cluster, 3, {"STREAM_THROUGHPUT_POINTS": "20000"})
    _bulk(cluster, 300_000, 30)
    joiner = cluster.node(4)
    joiner.start_ready()

    def streaming() -> dict[str, Any]:
        progress = joiner.stats()["streaming"]
        return progress if progress.get("active") and progress["ranges_done"] > 0 else {}

    before = cluster.wait_until(streaming, "node 4 streams a few ranges", 60)
    cluster.kill(4)
    joiner.start_ready()
    _wait_states(cluster, [1, 2, 3, 4], {4: "normal"}, "node 4 joined after its restart", 180)
    runs = joiner.log.split("Streaming: node 4 fetches ")
    assert len(runs) >= 3, joiner.log[-2000:]
    fetched, total = (int(x) for x in runs[-1].split(" ranges")[0].split(" of "))
    assert fetched < total, (fetched, total, before)  # the second run left out what was done
    addr = {i: cluster.node(i).address for i in cluster.ids}
    ring = Ring([addr[i] for i in (1, 2, 3, 4)])
    alone = cluster.alone(4, sig=signal.SIGTERM)
    for s in range(30):
        name = f"bulk.{s}"
        if addr[4] in ring.replicas(name, 2):
            assert len(alone.range(name)) == 10_000, name


def _rebalance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "rebalance.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_rebalance_script_prints_the_plan_repairs_and_judges(make_cluster: ClusterFactory
                                                             ) -> None:
    cluster = make_cluster(3, 2)
    for k in range(0, 400, 100):
        cluster.insert(1, {"series": [f"bal.{s}" for s in range(k, k + 100)],
                           "timestamps": [T0_MS] * 100, "values": [1.0] * 100})
    url = cluster.node(2).url("")
    done = _rebalance("--url", url, "--settle", "3", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    report = json.loads(done.stdout)
    assert sum(m["points"] for m in report["members"]) == 800  # 400 points, two copies
    assert all(abs(m["off"]) <= 0.15 for m in report["members"]), report
    done = _rebalance("--url", url, "--plan-only")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.startswith("Cluster at epoch 1, replication factor 2"), done.stdout
    assert "Target" in done.stdout and "balanced: worst member" in done.stdout, done.stdout
    # Unreasonable tolerance: not balanced is exit 1; a dead URL is 1; bad usage is 2.
    assert _rebalance("--url", url, "--plan-only", "--tolerance", "-1").returncode == 1
    assert _rebalance("--url", "http://127.0.0.1:9", "--plan-only").returncode == 1
    assert _rebalance("--bogus").returncode == 2
    helped = _rebalance("--help")
    assert helped.returncode == 0 and "--plan-only" in helped.stdout
