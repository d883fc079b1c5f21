"""The guide's scaling and failure procedures, followed as written, under write load.

- "Adding Nodes": node 4 is configured with all four members; the three running nodes are
  restarted one at a time with the four-member CLUSTER_NODES (the ring is cluster state:
  that changes nothing on them); then node 4 starts and joins. Every node must then report
  ``cluster_size: 4`` once it has joined, no acknowledged point may be lost at any moment, and
  node 4 must end up holding the series the four-member ring gives it (read it alone), and
  the old replicas must delete what moved away from them (cleanup).
- "Removing Nodes", graceful removal: writes stop going to node 3; the others are restarted
  one at a time with node 3 left out of CLUSTER_NODES; node 3 is stopped, and the others
  then remove it from the ring (as removenode does). Every series then has its replication
  factor on the remaining nodes (each read alone).
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
from tests.e2e.workload import (
    PointLog,
    Writers,
    acked_grows,
    holds_every_acked,
    unexpected,
    verify_all,
    writers_on,
)

if TYPE_CHECKING:
    from tests.e2e.cluster import ClusterFactory

pytest_plugins = ("tests.e2e.cluster",)

pytestmark = pytest.mark.timeout(240)










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
        writers = writers_on(cluster, log, [1, 2, 3], "grow")
        acked_grows(cluster, log, 60, "writes on three nodes")

        # 1. node 4's configuration lists all four; 2. the others are restarted one at a time
        # with the new list (each is back and seen by the others before the next goes).
        for i in (1, 2, 3):
            cluster.node(i).env_overrides["CLUSTER_NODES"] = four
            cluster.restart(i, sig=signal.SIGTERM)
            acked_grows(cluster, log, 20, f"writes after node {i} restarted with four members")
        # 3. node 4 starts, empty; 4. every node shows cluster_size: 4.
        # It joins (streaming what the four-member ring gives it) and is then counted.
        cluster.start([4])
        for i in cluster.ids:
            cluster.wait_until(lambda i=i: cluster.health(i)["cluster_size"] == 4,
                               f"node {i} shows cluster_size 4")
        acked_grows(cluster, log, 60, "writes with four members")
        writers.append(*writers_on(cluster, log, [4], "grow"))
        acked_grows(cluster, log, 60, "writes through node 4")
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])
    cluster.wait_converged()  # node 4 has caught up with every replica peer

    # Cleanup: each old replica deletes the series the new ring moved away from it (and
    # what it kept as a stand-in during the restarts), once their replicas acknowledged them.
    ring3, ring = Ring([addr[i] for i in (1, 2, 3)]), Ring([addr[i] for i in (1, 2, 3, 4)])
    moved = {i: sum(1 for s in log.series_names()
                    if addr[i] in ring3.replicas(s, 2) and addr[i] not in ring.replicas(s, 2))
             for i in (1, 2, 3)}
    assert sum(moved.values()) > 0, moved
    cluster.wait_until(lambda: all(cluster.stats(i)["cleanup_series_dropped"] >= moved[i]
                                   for i in (1, 2, 3)), f"old replicas drop {moved}", 120)
    print(verify_all(log, [cluster.node(i) for i in (4, 1, 2, 3)], "after adding node 4"),
          dict(log.statuses))

    # The data moved: node 4 alone holds every acknowledged point of the series the
    # four-member ring places on it.
    on4 = {s for s in log.series_names() if addr[4] in ring.replicas(s, 2)}
    holds_every_acked(cluster.alone(4, sig=signal.SIGTERM), log, on4, "node 4 alone")


def test_complete_cluster_failure_recovery(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, start=False)
    log = PointLog()
    writers: list[Writers] = []
    try:
        cluster.start()
        writers = writers_on(cluster, log, [1, 2, 3], "down")
        acked_grows(cluster, log, 150, "writes on three nodes")
        for i in cluster.ids:  # the whole cluster fails at once
            cluster.kill(i)
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])

    # 1. one node starts on its old data, alone: it serves what it holds, refuses writes.
    addr = [cluster.node(i).address for i in cluster.ids]
    ring = Ring(addr)
    cluster.start([1], converge=False)
    cluster.wait_sees(1, 1)
    lone = cluster.node(1)
    held = {s for s in log.series_names() if addr[0] in ring.replicas(s, 2)}
    holds_every_acked(lone, log, held, "node 1 alone on its old data")
    resp = lone.post("/insert", json={"series": "down.new", "timestamp": 1, "value": 1.0})
    assert resp.status_code == 503, (resp.status_code, resp.text)

    # 2. the others start one by one; the cluster takes writes again once two are up.
    cluster.start([2])
    resp = lone.post("/insert", json={"series": "down.new", "timestamp": 1, "value": 1.0})
    assert resp.status_code == 201, (resp.status_code, resp.text)
    cluster.start([3])
    print(verify_all(log, [cluster.node(i) for i in (3, 2, 1)], "after a complete failure"))
    assert [p["value"] for p in cluster.node(3).range("down.new")] == [1.0]


def test_guide_remove_node_procedure_under_write_load(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "5"})
    addr = {i: cluster.node(i).address for i in cluster.ids}
    log = PointLog()
    writers = writers_on(cluster, log, [1, 2, 3], "shrink")
    try:
        acked_grows(cluster, log, 90, "writes on three nodes")
        # 1. stop sending writes to node 3 (the load balancer's part)
        writers.pop().stop()
        # 2. wait for data to replicate: node 3 hands over what it holds as hints
        cluster.wait_until(lambda: all(cluster.stats(i)["hints_pending"] == 0 for i in (1, 2, 3)),
                           "no hints pending")
        # 3, 4. the remaining nodes are restarted one at a time without node 3
        for i in (1, 2):
            cluster.node(i).env_overrides["CLUSTER_NODES"] = f"{addr[1]},{addr[2]}"
            cluster.restart(i, converge=False, sig=signal.SIGTERM)
            cluster.wait_until(lambda i=i: {1, 2} <= cluster.alive_seen(i), f"node {i} back")
            acked_grows(cluster, log, 20, f"writes after node {i} restarted with two members")
        # 5. node 3 stops
        assert cluster.stop(3) == 0
        acked_grows(cluster, log, 40, "writes on the two remaining nodes")
    finally:
        for w in writers:
            w.stop()
    assert not unexpected(log), (unexpected(log), log.errors[:5])
    # Node 3 stopped after being taken out of their lists: they remove it from the ring.
    for i in (1, 2):
        cluster.wait_until(lambda i=i: addr[3] not in {m["address"]
                                                        for m in cluster.status(i)["members"]},
                           f"node 3 removed from node {i}'s ring", 60)
        assert "is not in this node's CLUSTER_NODES and is down: removing it" in (
            cluster.node(1).log + cluster.node(2).log)
    # With two members and RF=2 both hold every series: the removal fetched from the
    # surviving replica, and anti-entropy copies to each what node 3 held for it.
    for i in (1, 2):
        cluster.wait_until(lambda i=i: cluster.stats(i)["anti_entropy"]["rounds"] >= 2,
                           f"two anti-entropy rounds on node {i}", 60)
    names = log.series_names()
    holds_every_acked(cluster.alone(2, sig=signal.SIGTERM), log, names, "node 2 alone")
    cluster.start([1], converge=False)
    holds_every_acked(cluster.alone(1, sig=signal.SIGTERM), log, names, "node 1 alone")
    cluster.start([2])
    print(verify_all(log, [cluster.node(i) for i in (1, 2)], "after removing node 3"))
