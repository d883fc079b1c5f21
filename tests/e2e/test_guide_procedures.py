"""The guide's scaling and failure procedures, followed as written, under write load.

- "Adding Nodes": node 4 is configured with all four members; the three running nodes are
  restarted one at a time with the four-member CLUSTER_NODES; then node 4 starts. Every node
  must then report ``cluster_size: 4``, no acknowledged point may be lost at any moment, and
  node 4 must end up holding the series the four-member ring gives it (read it alone), and
  the old replicas must delete what moved away from them (cleanup).
- "Complete Cluster Failure": every node is SIGKILLed; one node is started on its old data
  and serves what it holds; the others are started one by one; nothing acknowledged is lost.

Writers run through the whole procedure and remember every outcome (``workload.PointLog``):
a 503 while a restart leaves a write short of its replicas is an unknown outcome, never a
loss; the checks read every acknowledged point back through every node.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from count.cluster.ring import Ring
from tests.e2e.workload import PointLog, Writers, load_batch, verify_all

if TYPE_CHECKING:
    from tests.e2e.cluster import Cluster, ClusterFactory

pytest_plugins = ("tests.e2e.cluster",)

pytestmark = pytest.mark.timeout(240)


def _writers(cluster: Cluster, log: PointLog, ids: list[int], prefix: str) -> list[Writers]:
    return [Writers(cluster.node(i), log, threads=2, make_batch=load_batch(f"{prefix}.n{i}"),
                    seed=i).start() for i in ids]


def _acked_grows(cluster: Cluster, log: PointLog, by: int, what: str) -> None:
    target = log.statuses[201] + by
    cluster.wait_until(lambda: log.statuses[201] >= target, what, 60)


def _unexpected(log: PointLog) -> dict[object, int]:
    """Statuses no correct node gives here: 201, 503 (short of replicas while a node
    restarts) and connection errors of a node's own clients while it restarts are expected."""
    return {s: n for s, n in log.statuses.items()
            if s not in (201, 503) and not (isinstance(s, str) and "Timeout" not in s)}


def test_guide_add_node_procedure_under_write_load(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(4, 2, start=False)
    addr = {i: cluster.node(i).address for i in cluster.ids}
    four = ",".join(addr[i] for i in (1, 2, 3, 4))
    log = PointLog()
    writers: list[Writers] = []
    try:
        for i in (1, 2, 3):
            cluster.node(i).env_overrides["CLUSTER_NODES"] = ",".join(addr[j] for j in (1, 2, 3))
        cluster.start([1, 2, 3])
        writers = _writers(cluster, log, [1, 2, 3], "grow")
        _acked_grows(cluster, log, 60, "writes on three nodes")

        # 1. node 4's configuration lists all four; 2. the others are restarted one at a time
        # with the new list (each is back and seen by the others before the next goes).
        for i in (1, 2, 3):
            cluster.node(i).env_overrides["CLUSTER_NODES"] = four
            cluster.restart(i, sig=signal.SIGTERM)
            _acked_grows(cluster, log, 20, f"writes after node {i} restarted with four members")
        # 3. node 4 starts, empty; 4. every node shows cluster_size: 4.
        cluster.start([4])
        for i in cluster.ids:
            assert cluster.health(i)["cluster_size"] == 4, (i, cluster.health(i))
        _acked_grows(cluster, log, 60, "writes with four members")
        writers.append(*_writers(cluster, log, [4], "grow"))
        _acked_grows(cluster, log, 60, "writes through node 4")
    finally:
        for w in writers:
            w.stop()
    assert not _unexpected(log), (_unexpected(log), log.errors[:5])
    cluster.wait_converged()  # node 4 has caught up with every replica peer

    # Cleanup: each old replica deletes the series the new ring moved away from it (and
    # what it kept as a stand-in during the restarts), once their replicas acknowledged them.
    ring3, ring = Ring([addr[i] for i in (1, 2, 3)]), Ring([addr[i] for i in (1, 2, 3, 4)])
    moved = {i: sum(1 for s in log.series_names()
                    if addr[i] in ring3.replicas(s, 2) and addr[i] not in ring.replicas(s, 2))
             for i in (1, 2, 3)}
    assert sum(moved.values()) > 0, moved
    cluster.wait_until(lambda: all(cluster.stats(i)["cleanup_series_dropped"] >= moved[i]
                                   for i in (1, 2, 3)), f"old replicas drop {moved}", 60)
    print(verify_all(log, [cluster.node(i) for i in (4, 1, 2, 3)], "after adding node 4"),
          dict(log.statuses))

    # The data moved: node 4 alone holds every acknowledged point of the series the
    # four-member ring places on it.
    on4 = {s for s in log.series_names() if addr[4] in ring.replicas(s, 2)}
    assert on4, "no series placed on node 4"
    lone = cluster.alone(4, sig=signal.SIGTERM)
    for name in sorted(on4):
        got = {p["timestamp"]: p["value"] for p in lone.range(name)}
        acked = {ts for (s, ts), attempts in log.attempts.items()
                 if s == name and any(o == "ack" for _, o in attempts)}
        assert acked <= set(got), (name, len(acked - set(got)), "acknowledged points missing")


def test_complete_cluster_failure_recovery(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, start=False)
    log = PointLog()
    writers: list[Writers] = []
    try:
        cluster.start()
        writers = _writers(cluster, log, [1, 2, 3], "down")
        _acked_grows(cluster, log, 150, "writes on three nodes")
        for i in cluster.ids:  # the whole cluster fails at once
            cluster.kill(i)
    finally:
        for w in writers:
            w.stop()
    assert not _unexpected(log), (_unexpected(log), log.errors[:5])

    # 1. one node starts on its old data, alone: it serves what it holds, refuses writes.
    addr = [cluster.node(i).address for i in cluster.ids]
    ring = Ring(addr)
    cluster.start([1], converge=False)
    cluster.wait_sees(1, 1)
    lone = cluster.node(1)
    held = {s for s in log.series_names() if addr[0] in ring.replicas(s, 2)}
    for name in sorted(held):
        got = {p["timestamp"] for p in lone.range(name)}
        acked = {ts for (s, ts), attempts in log.attempts.items()
                 if s == name and any(o == "ack" for _, o in attempts)}
        assert acked <= got, (name, len(acked - got), "acknowledged points missing on node 1")
    resp = lone.post("/insert", json={"series": "down.new", "timestamp": 1, "value": 1.0})
    assert resp.status_code == 503, (resp.status_code, resp.text)

    # 2. the others start one by one; the cluster takes writes again once two are up.
    cluster.start([2])
    resp = lone.post("/insert", json={"series": "down.new", "timestamp": 1, "value": 1.0})
    assert resp.status_code == 201, (resp.status_code, resp.text)
    cluster.start([3])
    print(verify_all(log, [cluster.node(i) for i in (3, 2, 1)], "after a complete failure"))
    assert [p["value"] for p in cluster.node(3).range("down.new")] == [1.0]
