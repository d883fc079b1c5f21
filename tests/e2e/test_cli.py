"""End-to-end tests of the operator CLI (`count`) against a real node."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests

from count import cli
from tests.e2e.conftest import CountNode, NodeFactory, free_port, guide_fields

pytestmark = pytest.mark.timeout(120)


def run_cli(node: CountNode | None, *args: str, stdin: str | None = None,
            url: str | None = None) -> subprocess.CompletedProcess[str]:
    base = url or node.url("")  # type: ignore[union-attr]
    return subprocess.run([sys.executable, "-m", "count.cli", "--url", base, *args],
                          input=stdin, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "COUNT_URL": ""})


def test_health_insert_query_series_as_json(node: CountNode) -> None:
    health = run_cli(node, "--json", "health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == node.get("/health").json()
    assert guide_fields(json.loads(health.stdout)) == {"status": "healthy", "node_id": 1,
                                                       "cluster_size": 1}
    for probe, status in (("ready", "ready"), ("live", "live")):
        done = run_cli(node, probe, "--json")  # --json after the command works too
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == status, done

    inserted = run_cli(node, "insert", "cli.cpu", "45.5", "--timestamp", "1640995200000",
                       "--json")
    assert inserted.returncode == 0 and json.loads(inserted.stdout) == {"inserted": 1}
    batch = json.dumps([{"series": "cli.cpu", "timestamp": 1640995260000, "value": 46}])
    assert run_cli(node, "insert", "--file", "-", stdin=batch).returncode == 0

    rows = json.loads(run_cli(node, "--json", "query", "cli.cpu").stdout)
    assert rows == [{"timestamp": 1640995200000, "value": 45.5},
                    {"timestamp": 1640995260000, "value": 46.0}]
    window = run_cli(node, "--json", "query", "cli.cpu", "--start", "1640995260000",
                     "--end", "1640995260000")
    assert json.loads(window.stdout) == [{"timestamp": 1640995260000, "value": 46.0}]
    mean = run_cli(node, "--json", "query", "cli.cpu", "--aggregation", "mean")
    assert json.loads(mean.stdout) == 45.75
    buckets = run_cli(node, "--json", "query", "cli.cpu", "--aggregation", "count",
                      "--interval", "60000")
    assert [b["count"] for b in json.loads(buckets.stdout)] == [1, 1]
    assert json.loads(run_cli(node, "--json", "series", "--prefix", "cli.").stdout) == ["cli.cpu"]


def test_people_get_tables(node: CountNode) -> None:
    health = run_cli(node, "health")
    assert health.returncode == 0, health.stderr
    assert health.stdout.splitlines()[:3] == ["status        healthy", "node_id       1",
                                              "cluster_size  1"], health.stdout
    assert "reasons" not in health.stdout  # nothing is wrong
    inserted = run_cli(node, "insert", "tab.cpu", "1.25", "--timestamp", "1640995200000")
    assert inserted.stdout == "inserted 1 point\n", inserted
    run_cli(node, "insert", "tab.cpu", "2", "--timestamp", "1640995260000")
    table = run_cli(node, "query", "tab.cpu").stdout.splitlines()
    assert table[0].split() == ["timestamp", "time", "(UTC)", "value"], table
    assert table[1].split() == ["1640995200000", "2022-01-01T00:00:00.000Z", "1.25"], table
    assert table[2].split() == ["1640995260000", "2022-01-01T00:01:00.000Z", "2.0"], table
    assert table[3] == "(2 rows)"
    buckets = run_cli(node, "query", "tab.cpu", "--aggregation", "sum", "--interval",
                      "3600000").stdout.splitlines()
    assert buckets[0].split() == ["timestamp", "time", "(UTC)", "value", "count"], buckets
    assert buckets[1].split() == ["1640995200000", "2022-01-01T00:00:00.000Z", "3.25", "2"]
    mean = run_cli(node, "query", "tab.cpu", "--aggregation", "mean")
    assert mean.stdout == "mean: 1.625\n"
    empty = run_cli(node, "query", "tab.nothing", "--aggregation", "max")
    assert empty.returncode == 0 and empty.stdout == "max: -\n"
    assert run_cli(node, "series", "--prefix", "tab.").stdout == "tab.cpu\n"


def test_errors_exit_1_with_the_nodes_message(node: CountNode) -> None:
    bad = run_cli(node, "insert", "bad name", "1")
    assert bad.returncode == 1
    assert "400" in bad.stderr and "series name" in bad.stderr
    unreachable = run_cli(None, "health", url="http://127.0.0.1:1")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    usage = run_cli(node, "query")
    assert usage.returncode == 2
    for args in (("nope",), ("health", "--bogus"), ("query", "s", "--start", "soon")):
        assert run_cli(node, *args).returncode == 2, args


# -- cluster commands (endpoints, status, repair) against a real 3-node loopback cluster ---

# Fast failure detection, and no background anti-entropy: what a node lacks stays missing
# until `count repair` moves it.
CLUSTER_ENV = {
    "CLUSTER_ENABLED": "true",
    "REPLICATION_FACTOR": "2",
    "HEARTBEAT_INTERVAL_MS": "200",
    "FAILURE_TIMEOUT_MS": "1000",
    "ANTI_ENTROPY_INTERVAL_SECONDS": "0",
}
CLUSTER_WAIT_S = 30.0


def _alive_seen_by(node: CountNode) -> int:
    try:
        resp = node.get("/health", timeout=2.0)
    except requests.RequestException:
        return -1
    return resp.json()["cluster_size"] if resp.status_code == 200 else -1


def wait_cluster_size(nodes: list[CountNode], size: int) -> None:
    deadline = time.monotonic() + CLUSTER_WAIT_S
    while time.monotonic() < deadline:
        if all(_alive_seen_by(n) == size for n in nodes):
            return
        time.sleep(0.1)
    seen = {n.name: _alive_seen_by(n) for n in nodes}
    raise AssertionError(f"cluster size {size} not seen by all within {CLUSTER_WAIT_S} s: {seen}"
                         + "".join(f"\n--- {n.name}\n{n.log_tail(15)}" for n in nodes))


@pytest.fixture(scope="module")
def cluster(module_node_factory: NodeFactory) -> list[CountNode]:
    """Three nodes, NODE_IDs 1..3 (list index + 1), RF=2, all seeing each other."""
    ports = [free_port() for _ in range(3)]
    members = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [module_node_factory({**CLUSTER_ENV, "CLUSTER_NODES": members, "NODE_ID": str(i)},
                                 start=False, port=port, name=f"cli-n{i}")
             for i, port in enumerate(ports, start=1)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_ready()
    wait_cluster_size(nodes, 3)
    return nodes


def series_on(node: CountNode, wanted: int, count: int, prefix: str) -> list[str]:
    """`count` series names whose replicas include node id `wanted`."""
    found = []
    for i in range(1000):
        name = f"{prefix}.{i}"
        if wanted in node.get(f"/cluster/endpoints/{name}").json()["replicas"]:
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} of 1000 series live on node {wanted}")


def status_rows(stdout: str) -> dict[int, list[str]]:
    """Rows of `count status` by node id: [marker, state, node, address, points, bytes...]
    (the ring state and ownership columns left out; the test of them reads them itself)."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] == "*":
            cells = cells[1:]
            marker = "*"
        else:
            marker = ""
        if len(cells) >= 5 and cells[0] in ("Up", "Down") and cells[2].isdigit():
            rows[int(cells[2])] = [marker, cells[0], cells[2], cells[3], *cells[5:]]
    return rows


def test_endpoints_prints_the_replicas_every_node_agrees_on(cluster: list[CountNode]) -> None:
    expected = cluster[0].get("/cluster/endpoints/app1.cpu").json()["replicas"]
    assert len(expected) == 2 and set(expected) <= {1, 2, 3}
    for node in cluster:
        done = run_cli(node, "endpoints", "app1.cpu")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"app1.cpu: {expected[0]}, {expected[1]}\n"
    as_json = run_cli(cluster[1], "endpoints", "app1.cpu", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"series": "app1.cpu", "replicas": expected}
    bad = run_cli(cluster[0], "endpoints", "bad name")
    assert bad.returncode == 1
    assert "400" in bad.stderr and "series name" in bad.stderr and bad.stdout == ""


def test_status_table_marks_the_answering_node(cluster: list[CountNode]) -> None:
    for answering in (1, 3):
        done = run_cli(cluster[answering - 1], "status")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Cluster: healthy, 3 of 3 nodes up, replication factor 2")
        assert "State" in done.stdout and "Heartbeat" in done.stdout
        rows = status_rows(done.stdout)
        assert sorted(rows) == [1, 2, 3], done.stdout
        assert "epoch 1" in done.stdout.splitlines()[0], done.stdout
        for line in done.stdout.splitlines()[2:5]:  # ring state normal, a third of... x rf
            assert " normal " in line and "%" in line, line
        for node_id, row in rows.items():
            marker, state, _id, address, *_rest = row
            assert state == "Up"
            assert address == cluster[node_id - 1].address
            assert marker == ("*" if node_id == answering else "")
            # Bytes are human readable (every LMDB file holds a few pages at least).
            assert row[6] in ("KiB", "MiB", "GiB"), row
    as_json = run_cli(cluster[1], "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["node_id"] == 2 and status["cluster_size"] == 3
    assert [m["node_id"] for m in status["members"] if m["self"]] == [2]


def test_repair_of_a_whole_cluster_moves_nothing(cluster: list[CountNode]) -> None:
    cluster[0].insert([{"series": f"cli.repair.{i}", "timestamp": 1_000 + i, "value": i}
                       for i in range(20)])
    done = run_cli(cluster[0], "repair")
    assert done.returncode == 0, done.stderr
    peers = re.match(r"Repair with nodes (\d+), (\d+) \(", done.stdout)
    assert peers and {int(peers[1]), int(peers[2])} == {2, 3}, done.stdout
    assert "points received:  0" in done.stdout and "points sent:      0" in done.stdout
    assert "errors:           0" in done.stdout
    report = json.loads(run_cli(cluster[1], "repair", "--json").stdout)
    assert report["points_received"] == report["points_sent"] == 0 and report["errors"] == []


def test_status_shows_a_down_node_and_repair_refills_a_wiped_one(
        cluster: list[CountNode]) -> None:
    first, _second, third = cluster
    points = [{"series": name, "timestamp": 5_000 + i, "value": i}
              for name in series_on(first, 3, 3, "cli.wiped") for i in range(10)]
    first.insert(points)
    third.kill()
    try:
        wait_cluster_size(cluster[:2], 2)
        done = run_cli(first, "status")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Cluster: degraded, 2 of 3 nodes up")
        rows = status_rows(done.stdout)
        assert [rows[i][1] for i in (1, 2, 3)] == ["Up", "Up", "Down"], done.stdout
        unreachable = run_cli(None, "status", url=third.url(""))
        assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
        # Degraded is not healthy: exit 1, the body printed all the same, naming node 3.
        degraded = run_cli(first, "health")
        assert degraded.returncode == 1, degraded
        assert "status        degraded" in degraded.stdout
        assert f"node 3 ({third.address}) is down" in degraded.stdout, degraded.stdout
        assert "node 1 is degraded" in degraded.stderr
        assert run_cli(first, "ready").returncode == 0  # a majority: it takes writes
        # A replaced disk: node 3 comes back empty and must pull all it holds.
        shutil.rmtree(third.data_dir)
    finally:
        third.restart()
    wait_cluster_size(cluster, 3)
    done = run_cli(third, "repair")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Repair with nodes")
    received = int(re.search(r"points received: +([0-9,]+)", done.stdout)[1].replace(",", ""))
    # Catching up (a wiped store compares with every replica peer at start, whatever
    # ANTI_ENTROPY_INTERVAL_SECONDS says) may have pulled the points before this repair ran;
    # either way they are stored on node 3 now, with its share of earlier tests' points.
    assert third.stats()["points_written"] >= len(points), done.stdout
    assert received <= third.stats()["points_written"], done.stdout
    assert "points sent:      0" in done.stdout, done.stdout
    again = json.loads(run_cli(third, "repair", "--json").stdout)
    assert again["points_received"] == again["points_sent"] == 0, again


def test_repair_errors_exit_1(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """A round that reports errors prints them and exits 1 (in-process: hard to provoke)."""
    report = {"peers": [2, 3], "ranges_compared": 10, "ranges_differing": 1,
              "series_differing": 1, "points_received": 4, "points_sent": 0,
              "errors": ["node 3: points: timed out"], "duration_ms": 12.5}
    monkeypatch.setattr(cli, "_request", lambda *_args, **_kwargs: report)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--url", "http://127.0.0.1:1", "repair"])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert "points received:  4" in out and "errors:           1" in out
    assert "node 3: points: timed out" in err and "1 error" in err
