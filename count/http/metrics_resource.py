"""``GET /metrics``: the node in the Prometheus text exposition format.

A scrape reaches one HTTP worker, which answers with
- every worker's request metrics (``count/http/request_metrics.py``), merged from the run's
  PROMETHEUS_MULTIPROC_DIR by prometheus_client's MultiProcessCollector (when the app runs
  outside count-server, without that directory: this worker's own);
- the node process's figures, asked for now with the Stats and ClusterStatus operations and
  translated (``count/http/node_metrics.py``); ``count_node_process_up`` is 0 and they are
  left out when it does not answer within SCRAPE_TIMEOUT_MS;
- the node's processes and DATA_DIR's file system (``count/http/process_metrics.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from count import messages as op
from count.broker.client import NodeClient
from count.config import Config
from count.errors import CountError
from count.http.node_metrics import cluster_families, stats_families
from count.http.process_metrics import disk_families, tree_families
from count.http.request_metrics import WORKER_REGISTRY
from count.metrics_dir import ENV_NAME

# The longest a scrape waits for each answer of the node process (Prometheus' default
# scrape timeout is 10 s); less if REQUEST_TIMEOUT_MS is.
SCRAPE_TIMEOUT_MS = 3000


class NodeCollector(Collector):
    """The node process's answers and the node's processes, read at each collect()."""

    def __init__(self, config: Config, client: NodeClient, server_pid: int) -> None:
        self.config = config
        self.client = client
        self.server_pid = server_pid

    def collect(self) -> Iterator[Metric]:
        timeout_ms = min(self.config.request_timeout_ms, SCRAPE_TIMEOUT_MS)
        try:
            stats = self.client.call(op.Stats(), timeout_ms=timeout_ms)
            status = self.client.call(op.ClusterStatus(), timeout_ms=timeout_ms)
        except CountError:
            stats = status = None
        yield GaugeMetricFamily("count_node_process_up", "1 if the node process answered this "
                                "scrape's Stats and ClusterStatus, else 0.",
                                value=float(stats is not None))
        if stats is not None and status is not None:
            yield from stats_families(stats)
            yield from cluster_families(status)
        yield from disk_families(self.config.data_dir)
        yield from tree_families(self.server_pid, os.getppid())


class Metrics:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = CollectorRegistry(auto_describe=False)
        directory = os.environ.get(ENV_NAME)
        if directory:
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        else:
            registry.register(WORKER_REGISTRY)  # a registry is a collector too
        registry.register(self.collector)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)

