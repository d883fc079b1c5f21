"""GET /metrics as a real Prometheus sees it: three real nodes scraped every second by the
Debian package's ``prometheus`` with the alerting rules of compose/alerts.yml; after writes
and reads through the nodes its HTTP API (``/api/v1/query``) must give the exact request and
point counts, the latency histogram, and the cluster gauges; killing a node must set off the
node-down alerts. compose/prometheus.yml and compose/alerts.yml pass ``promtool``'s checks,
and every metric the alerts and the README name is in a real scrape."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.e2e.conftest import REPO_ROOT, _die_with_test_runner, free_port

if TYPE_CHECKING:  # imported by pytest_plugins below, so that its asserts are rewritten
    from tests.e2e.cluster import Cluster, ClusterFactory

pytest_plugins = ("tests.e2e.cluster",)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS = "the prometheus binary is not installed (Debian package prometheus; .ci/run installs it)"
NO_PROMTOOL = "promtool is not installed (Debian package prometheus; .ci/run installs it)"
ALERTS = REPO_ROOT / "compose" / "alerts.yml"
SCRAPE_CONFIG = REPO_ROOT / "compose" / "prometheus.yml"
README = REPO_ROOT / "README.md"
WAIT_S = 40.0
INSERT_ROUTE = "/insert"
RANGE_ROUTE = "/query/range/{series:path}"
# Metrics only exported in some states: while an anti-entropy round runs, after one finished.
CONDITIONAL = re.compile(r"count_anti_entropy_(running_ranges|last_round)\w*")


class Prometheus:
    """One ``prometheus`` server on 127.0.0.1 with its own config and storage in ``workdir``."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": [{"job_name": "count",
                                      "static_configs": [{"targets": targets}]}]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_test_runner)
        self.wait_until(lambda: requests.get(self.url + "/-/ready", timeout=2).ok, "ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's samples, keyed by their labels as ``k=v,...`` (sorted)."""
        resp = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
                for r in body["data"]["result"]}

    def by_instance(self, expr: str) -> dict[str, float]:
        """``sum by (instance) (expr)``: one value per scraped node."""
        return {key.removeprefix("instance="): value
                for key, value in self.query(f"sum by (instance) ({expr})").items()}

    def rules(self) -> list[dict[str, Any]]:
        body = requests.get(self.url + "/api/v1/rules", timeout=5).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def wait_until(self, predicate: Any, what: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                last = predicate()
                if last:
                    return last
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.25)
        raise AssertionError(f"prometheus: {what} not within {timeout} s (last: {last!r})\n"
                             f"{self.log.read_text()[-2000:]}")


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[list[Prometheus]]:
    if PROMETHEUS is None:
        pytest.skip(NO_PROMETHEUS)
    started: list[Prometheus] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _alert_count() -> int:
    return len(re.findall(r"^\s*- alert: ", ALERTS.read_text(), re.MULTILINE))


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_promtool_accepts_the_compose_scrape_config_and_alert_rules() -> None:
    if PROMTOOL is None:
        pytest.skip(NO_PROMTOOL)
    alerts = _alert_count()
    assert alerts >= 5
    rules = _promtool("check", "rules", ALERTS)
    assert rules.returncode == 0 and f"SUCCESS: {alerts} rules found" in rules.stdout, rules
    config = _promtool("check", "config", SCRAPE_CONFIG)  # its rule_files too
    assert config.returncode == 0 and "SUCCESS: 1 rule files found" in config.stdout, config
    assert f"SUCCESS: {alerts} rules found" in config.stdout, config


def _monitoring_section() -> str:
    text = README.read_text()
    start = text.index("\n## Monitoring")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _scrape_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _assert_named_metrics_exist(scrape: str) -> None:
    """Every count_ metric the alert rules and the README's Monitoring section name is in
    a real scrape (a histogram by its _bucket/_sum/_count samples)."""
    exported = _scrape_names(scrape)
    exported |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    named = set(re.findall(r"\bcount_[a-z_]+[a-z](?![\w-])",
                           ALERTS.read_text() + _monitoring_section()))
    missing = {n for n in named if n not in exported and not CONDITIONAL.fullmatch(n)}
    assert not missing, f"named but not exported: {sorted(missing)}"


def _insert_batches(cluster: Cluster, node: int, batches: int, per_batch: int) -> None:
    """``batches`` inserts through ``node``, each on a new connection (so gunicorn's
    workers share them) and each of ``per_batch`` points of its own series."""
    for b in range(batches):
        points = [{"series": f"metrics.b{b}", "timestamp": 1_700_000_000_000 + i, "value": i}
                  for i in range(per_batch)]
        resp = requests.post(cluster.node(node).url("/insert"), data=json.dumps(points),
                             timeout=10)
        assert resp.status_code == 201, resp.text


def test_prometheus_scrapes_three_nodes_and_sees_what_they_did(
        make_cluster: ClusterFactory, prometheus_factory: list[Prometheus], tmp_path: Path) -> None:
    cluster = make_cluster(3, 2)
    n1, n2, n3 = (cluster.node(i).address for i in (1, 2, 3))
    prom = Prometheus(tmp_path, [n1, n2, n3], [ALERTS])
    prometheus_factory.append(prom)
    prom.start()
    prom.wait_until(lambda: prom.by_instance("up") == {n1: 1, n2: 1, n3: 1}, "all three up")

    inserts, per_batch, bad, reads = 20, 5, 3, 7
    _insert_batches(cluster, 1, inserts, per_batch)
    for _ in range(bad):
        resp = requests.post(cluster.node(1).url("/insert"), data=b'{"series": "x"}', timeout=10)
        assert resp.status_code == 400, resp.text
    for b in range(reads):  # seven paths, one route
        resp = requests.get(cluster.node(2).url(f"/query/range/metrics.b{b}"), timeout=10)
        assert resp.status_code == 200 and len(resp.json()) == per_batch, resp.text

    # Each point is on both of its replicas (RF=2, every node up, quorum of 2 acknowledged).
    prom.wait_until(lambda: prom.query("sum(count_points_written_total)") == {
        "": inserts * per_batch * 2}, "points written on every replica")
    ok = f'count_http_requests_total{{route="{INSERT_ROUTE}",method="POST",status="201"}}'
    prom.wait_until(lambda: prom.by_instance(ok) == {n1: inserts}, "inserts counted")
    prom.wait_until(lambda: prom.by_instance(
        f'count_http_requests_total{{route="{RANGE_ROUTE}",status="200"}}') == {n2: reads},
        "reads counted")

    # The request counts are exact: every worker's samples are merged into each scrape.
    refused = f'count_http_requests_total{{route="{INSERT_ROUTE}",status="400"}}'
    assert prom.by_instance(refused) == {n1: bad}
    assert prom.by_instance("count_inserts_total") == {n1: inserts, n2: 0, n3: 0}
    assert prom.by_instance("count_reads_total") == {n1: 0, n2: reads, n3: 0}
    assert prom.query('count_http_requests_total{route=~"/query/range/metrics.*"}') == {}
    hist = "count_http_request_duration_seconds"
    on_insert = f'route="{INSERT_ROUTE}"'
    assert prom.by_instance(f"{hist}_count{{{on_insert}}}") == {n1: inserts + bad}
    assert prom.by_instance(f'{hist}_bucket{{{on_insert},le="+Inf"}}') == {n1: inserts + bad}
    assert 0 < prom.by_instance(f"{hist}_sum{{{on_insert}}}")[n1] < (inserts + bad) * 10
    p90 = prom.query(f'histogram_quantile(0.9, sum by (le) ({hist}_bucket{{{on_insert},'
                     f'instance="{n1}"}}))')  # over every request since the node started
    assert len(p90) == 1 and 0 < next(iter(p90.values())) <= 30, p90
    for text in (requests.get(cluster.node(1).url("/metrics"), timeout=5).text
                 for _ in range(6)):  # whichever worker answers, the same counts
        assert f'count_http_requests_total{{method="POST",route="{INSERT_ROUTE}",status="201"}}' \
               f" {float(inserts)}" in text

    # The cluster as each node sees it.
    up = prom.query("count_member_up")
    assert len(up) == 9 and set(up.values()) == {1.0}, up
    assert prom.by_instance("count_cluster_members_alive") == {n1: 3, n2: 3, n3: 3}
    assert prom.by_instance("count_cluster_members") == {n1: 3, n2: 3, n3: 3}
    assert prom.by_instance('count_cluster_status{status="healthy"}') == {n1: 1, n2: 1, n3: 1}
    assert prom.by_instance("count_node_process_up") == {n1: 1, n2: 1, n3: 1}
    owns = prom.by_instance("count_member_ownership_ratio")
    assert set(owns) == {n1, n2, n3} and all(math.isclose(v, 2, abs_tol=0.01)
                                             for v in owns.values()), owns
    assert len(prom.query("count(count by (digest) (count_cluster_ring_info))")) == 1
    for expr in ('count_process_resident_memory_bytes{process="node"}',
                 'count_process_cpu_seconds_total{process="http"}',
                 'count_process_open_fds{process="node"}',
                 "count_data_dir_filesystem_free_bytes", "count_lmdb_file_bytes"):
        values = prom.by_instance(expr)
        assert set(values) == {n1, n2, n3} and min(values.values()) > 0, (expr, values)
    assert sum(prom.by_instance("count_series").values()) == inserts * 2
    _assert_named_metrics_exist(requests.get(cluster.node(1).url("/metrics"), timeout=5).text)

    # The alert rules evaluate against the real metrics without error; none is active
    # (but for the disk ones, which depend on this machine's disk).
    alerts = _alert_count()
    prom.wait_until(lambda: len(rules := prom.rules()) == alerts
                    and all(r["health"] == "ok" for r in rules), "every rule evaluated")
    assert prom.query('ALERTS{alertname!~"CountDisk.*"}') == {}

    # A dead node: Prometheus cannot scrape it, its peers see it down; the alerts go off
    # (pending until their `for:` has passed).
    cluster.kill(3)
    prom.wait_until(lambda: prom.by_instance('ALERTS{alertname="CountNodeDown"}') == {n3: 1},
                    "CountNodeDown for node 3")
    prom.wait_until(lambda: prom.by_instance('ALERTS{alertname="CountMemberDown",member="3"}')
                    == {n1: 1, n2: 1}, "CountMemberDown for member 3 on nodes 1 and 2")
    prom.wait_until(lambda: prom.by_instance('ALERTS{alertname="CountClusterDegraded"}')
                    == {n1: 1, n2: 1}, "CountClusterDegraded on nodes 1 and 2")
    assert prom.by_instance('count_member_up{member="3"}') == {n1: 0, n2: 0}
    assert prom.by_instance("count_cluster_members_alive") == {n1: 2, n2: 2}
