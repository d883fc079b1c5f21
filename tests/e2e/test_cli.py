"""End-to-end tests of the operator CLI (`count`) against a real node."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import CountNode

pytestmark = pytest.mark.timeout(120)


def run_cli(node: CountNode | None, *args: str, stdin: str | None = None,
            url: str | None = None) -> subprocess.CompletedProcess[str]:
    base = url or node.url("")  # type: ignore[union-attr]
    return subprocess.run([sys.executable, "-m", "count.cli", "--url", base, *args],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COUNT_URL": ""})


def test_health_insert_query_series(node: CountNode) -> None:
    health = run_cli(node, "health")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "healthy", "node_id": 1, "cluster_size": 1}

    inserted = run_cli(node, "insert", "cli.cpu", "45.5", "--timestamp", "1640995200000")
    assert inserted.returncode == 0 and json.loads(inserted.stdout) == {"inserted": 1}
    batch = json.dumps([{"series": "cli.cpu", "timestamp": 1640995260000, "value": 46}])
    assert run_cli(node, "insert", "--file", "-", stdin=batch).returncode == 0

    rows = json.loads(run_cli(node, "query", "cli.cpu").stdout)
    assert rows == [{"timestamp": 1640995200000, "value": 45.5},
                    {"timestamp": 1640995260000, "value": 46.0}]
    window = run_cli(node, "query", "cli.cpu", "--start", "1640995260000", "--end", "1640995260000")
    assert json.loads(window.stdout) == [{"timestamp": 1640995260000, "value": 46.0}]
    mean = run_cli(node, "query", "cli.cpu", "--aggregation", "mean")
    assert json.loads(mean.stdout) == 45.75
    buckets = run_cli(node, "query", "cli.cpu", "--aggregation", "count", "--interval", "60000")
    assert [b["count"] for b in json.loads(buckets.stdout)] == [1, 1]
    assert json.loads(run_cli(node, "series", "--prefix", "cli.").stdout) == ["cli.cpu"]


def test_errors_exit_1_with_the_nodes_message(node: CountNode) -> None:
    bad = run_cli(node, "insert", "bad name", "1")
    assert bad.returncode == 1
    assert "400" in bad.stderr and "series name" in bad.stderr
    unreachable = run_cli(None, "health", url="http://127.0.0.1:1")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    usage = run_cli(node, "query")
    assert usage.returncode == 2
