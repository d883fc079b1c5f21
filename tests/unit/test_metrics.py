"""The pure parts of /metrics: Stats and ClusterStatus answers as metric families, per-role
process sums, the request middleware's labels, and the multiprocess directory's lifecycle."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import falcon
import falcon.testing
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from count import metrics_dir
from count.http.node_metrics import STATS_COUNTERS, STATS_GAUGES, cluster_families, stats_families
from count.http.process_metrics import Usage, process_families, process_tree
from count.http.request_metrics import WORKER_REGISTRY, RequestMetrics

# A Stats answer as a node gives it (shape of count/cluster/status.py Status.stats).
STATS = {
    "series": 3, "buffer_points": 10, "segments": 1, "blocks": 4, "tails": 3, "flushes": 2,
    "commits": 7, "block_cache_hits": 5, "block_cache_misses": 6, "wal_appends": 8,
    "compacting": True, "map_size_bytes": 1 << 30, "file_bytes": 40960, "commits_served": 9,
    "points_written": 100, "inserts": 11, "reads": 12, "replica_writes_failed": 13,
    "hints_stored": 14, "hinted_points_delivered": 15, "read_repairs": 16,
    "read_repair_points": 17, "writes_refused": 18, "cleanup_series_dropped": 19,
    "cleanup_points_dropped": 20, "hints_pending": 21,
    "anti_entropy": {"rounds": 4, "running": True, "cached_series": 2, "ranges_done": 30,
                     "ranges_total": 90,
                     "last": {"peers": [2, 3], "ranges_compared": 300, "ranges_differing": 5,
                              "series_differing": 2, "points_received": 40, "points_sent": 41,
                              "errors": ["node 3: timeout"], "duration_ms": 1500.0}},
    "streaming": {"active": True, "epoch": 2, "ranges_done": 10, "ranges_total": 40,
                  "points": 5000, "bytes": 120000, "points_per_s": 2500, "eta_s": 6.0,
                  "sources": ["2"]},
}
STATUS = {
    "node_id": 1, "address": "127.0.0.1:8081", "status": "degraded", "cluster_size": 2,
    "replication_factor": 2, "ring": "a6dd1452dc4e78cf", "epoch": 2,
    "members": [
        {"node_id": 1, "address": "127.0.0.1:8081", "state": "normal", "ring_state": "normal",
         "alive": True,
         "self": True, "heartbeat_age_s": None, "ownership": 0.6667, "points": 10,
         "bytes": 4096, "hints_pending": 5},
        {"node_id": 2, "address": "127.0.0.1:8082", "state": "syncing", "ring_state": "joining",
         "alive": True,
         "self": False, "heartbeat_age_s": 0.25, "ownership": 0.6667, "points": 8,
         "bytes": 2048, "hints_pending": 0},
        {"node_id": None, "address": "127.0.0.1:8083", "state": "unknown", "alive": False,
         "self": False, "heartbeat_age_s": None, "ownership": 0.6666, "points": None,
         "bytes": None, "hints_pending": 0},
    ],
}


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(families: Iterable[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The families rendered as Prometheus text and parsed back: {(sample, labels): value}."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Families(families))  # auto_describe: a duplicate name is refused
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_stats_field_is_a_metric_with_its_value() -> None:
    samples = exposition(stats_families(STATS))
    for field, name, _ in STATS_COUNTERS:
        assert samples[(name + "_total", ())] == STATS[field], name
    for field, name, _ in STATS_GAUGES:
        assert samples[(name, ())] == float(STATS[field]), name
    assert samples[("count_compacting", ())] == 1.0
    assert samples[("count_points_written_total", ())] == 100
    assert samples[("count_anti_entropy_rounds_total", ())] == 4
    assert samples[("count_anti_entropy_running", ())] == 1
    assert samples[("count_anti_entropy_running_ranges_done", ())] == 30
    assert samples[("count_anti_entropy_running_ranges_total", ())] == 90
    last = "count_anti_entropy_last_round_"
    assert samples[(last + "points_received", ())] == 40
    assert samples[(last + "points_sent", ())] == 41
    assert samples[(last + "ranges_compared", ())] == 300
    assert samples[(last + "errors", ())] == 1
    assert samples[(last + "peers", ())] == 2
    assert samples[(last + "duration_seconds", ())] == 1.5
    assert samples[("count_streaming_active", ())] == 1
    assert samples[("count_streaming_ranges_done", ())] == 10
    assert samples[("count_streaming_ranges_total", ())] == 40
    assert samples[("count_streaming_points", ())] == 5000
    mapped = ({field for field, _, _ in (*STATS_COUNTERS, *STATS_GAUGES)}
              | {"anti_entropy", "streaming"})
    assert mapped == set(STATS), "a Stats field without a metric (or a metric without a field)"


def test_missing_or_odd_fields_leave_their_metric_out() -> None:
    stats = {"points_written": 5, "reads": "many",
             "anti_entropy": {"rounds": 0, "running": False, "cached_series": 0, "last": {}}}
    names = {name for name, _ in exposition(stats_families(stats))}
    assert names == {"count_points_written_total", "count_anti_entropy_rounds_total",
                     "count_anti_entropy_running", "count_anti_entropy_cached_series"}


def test_cluster_status_as_gauges_by_member() -> None:
    samples = exposition(cluster_families(STATUS))
    up = {dict(labels)["member"]: value for (name, labels), value in samples.items()
          if name == "count_member_up"}
    assert up == {"1": 1.0, "2": 1.0, "127.0.0.1:8083": 0.0}  # no NODE_ID heard: the address
    assert samples[("count_cluster_members", ())] == 3
    assert samples[("count_cluster_members_alive", ())] == 2
    assert samples[("count_cluster_replication_factor", ())] == 2
    assert {dict(labels)["status"]: v for (name, labels), v in samples.items()
            if name == "count_cluster_status"} == {"healthy": 0, "degraded": 1, "unhealthy": 0}
    assert {dict(labels)["state"]: v for (name, labels), v in samples.items()
            if name == "count_cluster_members_by_state"} == {
        "normal": 1, "syncing": 1, "leaving": 0, "unknown": 1}
    assert samples[("count_member_ownership_ratio", (("member", "2"),))] == 0.6667
    assert samples[("count_member_heartbeat_age_seconds", (("member", "2"),))] == 0.25
    assert ("count_member_heartbeat_age_seconds", (("member", "1"),)) not in samples
    assert samples[("count_member_points", (("member", "1"),))] == 10
    assert ("count_member_points", (("member", "127.0.0.1:8083"),)) not in samples
    assert samples[("count_member_hints_pending_points", (("member", "1"),))] == 5
    assert samples[("count_cluster_ring_info", (("digest", "a6dd1452dc4e78cf"),))] == 1
    assert samples[("count_cluster_epoch", ())] == 2
    assert {dict(labels)["state"]: v for (name, labels), v in samples.items()
            if name == "count_cluster_members_by_ring_state"} == {
        "joining": 1, "normal": 1, "leaving": 0, "removing": 0}
    assert samples[("count_node_info", (("address", "127.0.0.1:8081"), ("node_id", "1")))] == 1
    assert samples[("count_member_info", (("address", "127.0.0.1:8082"), ("member", "2"),
                                          ("self", "0")))] == 1


def test_a_state_or_status_the_translation_does_not_know_still_shows() -> None:
    status = {**STATUS, "status": "confused",
              "members": [{**STATUS["members"][0], "state": "joining"}]}  # type: ignore[dict-item]
    samples = exposition(cluster_families(status))
    assert samples[("count_cluster_status", (("status", "confused"),))] == 1
    assert samples[("count_cluster_status", (("status", "healthy"),))] == 0
    assert samples[("count_cluster_members_by_state", (("state", "joining"),))] == 1
    assert samples[("count_cluster_members_by_state", (("state", "normal"),))] == 0


def test_process_figures_are_summed_per_role() -> None:
    usages = {"server": [Usage(100, 1.5, 10, 1, 2)],
              "http": [Usage(200, 0.5, 20, 3, 4), Usage(300, 0.25, 30, 5, 6)],
              "node": []}
    samples = exposition(process_families(usages))
    assert samples[("count_process_resident_memory_bytes", (("process", "http"),))] == 500
    assert samples[("count_process_cpu_seconds_total", (("process", "http"),))] == 0.75
    assert samples[("count_process_open_fds", (("process", "server"),))] == 10
    assert samples[("count_process_disk_read_bytes_total", (("process", "http"),))] == 8
    assert samples[("count_process_disk_written_bytes_total", (("process", "server"),))] == 2
    assert samples[("count_processes", (("process", "http"),))] == 2
    assert samples[("count_processes", (("process", "node"),))] == 0


def test_process_tree_splits_the_children_of_the_server() -> None:
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
                for _ in range(2)]
    try:
        tree = process_tree(os.getpid(), sleepers[0].pid)
        assert [p.pid for p in tree["server"]] == [os.getpid()]
        assert [p.pid for p in tree["http"]] == [sleepers[0].pid]
        assert sleepers[1].pid in [p.pid for p in tree["node"]]
        assert sleepers[0].pid not in [p.pid for p in tree["node"]]
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


# -- the request middleware ------------------------------------------------------------------


class _Echo:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.data = req.bounded_stream.read()
        resp.status = falcon.HTTP_201


def _value(name: str, **labels: str) -> float:
    return WORKER_REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
def test_requests_are_labelled_by_route_template_method_and_status() -> None:
    app = falcon.App(middleware=[RequestMetrics()])
    app.add_route("/echo/{name}", _Echo())
    client = falcon.testing.TestClient(app)
    route = "/echo/{name}"

    def samples() -> tuple[float, ...]:
        return (_value("count_http_requests_total", route=route, method="POST", status="201"),
                _value("count_http_request_duration_seconds_count", route=route),
                _value("count_http_request_bytes_total", route=route),
                _value("count_http_response_bytes_total", route=route),
                _value("count_http_requests_total", route="unmatched", method="GET",
                       status="404"),
                _value("count_http_requests_total", route=route, method="other", status="400"))

    before = samples()
    for name in ("a", "b", "c"):  # three paths, one route
        assert client.simulate_post(f"/echo/{name}", body=b"12345").status_code == 201
    assert client.simulate_get("/no/such/route").status_code == 404
    refused = client.simulate_request("BREW", "/echo/a")
    assert refused.status_code == 400  # Falcon refuses a method it does not know
    after = samples()
    assert [a - b for a, b in zip(after, before)] == [3, 4, 15, 15 + len(refused.content), 1, 1]
    assert _value("count_http_requests_in_flight") == 0
    paths = {s.labels.get("route") for m in WORKER_REGISTRY.collect() for s in m.samples}
    assert not {"/echo/a", "/echo/b", "/echo/c"} & paths


# -- the multiprocess directory --------------------------------------------------------------


def test_each_run_gets_a_fresh_directory_and_dead_runs_lose_theirs(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"count-metrics-{dead.pid}"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    alive = tmp_path / f"count-metrics-{os.getppid()}"
    alive.mkdir()
    other = tmp_path / "count-metrics-notapid"
    other.mkdir()
    mine = tmp_path / f"count-metrics-{os.getpid()}"
    mine.mkdir()
    (mine / "counter_2.db").write_bytes(b"x")  # an earlier process with this pid
    path = metrics_dir.create(tmp_path)
    assert path == mine and list(path.iterdir()) == []
    assert not stale.exists() and alive.exists() and other.exists()
    metrics_dir.remove(path)
    assert not path.exists()

