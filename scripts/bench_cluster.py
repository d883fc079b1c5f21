"""Cluster benchmark for Count: 3 real nodes on loopback, throughput, replication cost,
failure detection, recovery and memory.

Starts every node it measures on 127.0.0.1 (fresh temporary DATA_DIRs, one process group per
node), prints the figures and a summary table with each target met or missed, and stops every
process it started and removes every temporary directory, also on Ctrl-C, SIGTERM or errors
(try/finally plus atexit; the servers also get PR_SET_PDEATHSIG, so they die with this script
even on kill -9).

What it measures:

1. Write latency at replication factor 1, 2 and 3 (a fresh 3-node cluster for each RF, the
   three up at once and measured in turn, in rounds of alternating order), under the same
   light load: one client, sequential requests, round-robin over the three nodes,
   single-point inserts then 1,000-point batches over 100 series. Prints p50/p99 and the
   ratios RF2/RF1 and RF3/RF1 of the p50s (targets <= 1.5x and <= 2x, the guide's table).
2. Batch ingest on a fresh 3-node cluster (RF=2 unless --rf): 10,000-point bodies
   (10 timestamps x 1,000 series), pre-generated before timing, posted by several client
   threads on keep-alive connections spread round-robin over the nodes (--clients-per-node),
   in the array-of-objects form and in the columnar form {"series","timestamps","values"};
   total points/s (target >= 600,000).
3. Single-point POST /insert with wrk (scripts/insert.lua), 64 connections split over the
   three nodes, one wrk per node, all at once; total req/s (target >= 2,500), p50 as the
   request-weighted mean of the three wrk p50s and p99 as the worst of their p99s. For
   scale, the same 64 connections on one plain (non-cluster) node started alongside, in
   ABBA order over the rounds (the full run does two), and the ratio cluster/plain node.
   Phases 2 and 3 also print the CPU the node processes used per request (HTTP workers and
   node processes apart) and how busy the whole machine was.
4. Failure detection: SIGKILL of one node's process group, then the time until each other
   node's GET /health reports cluster_size 2 (target <= 5 s). While it is down, a few series
   whose replicas include it are written through the others (they keep hints). Recovery: the
   node is restarted on the same DATA_DIR; time until it answers /health, until every node
   sees 3 alive, and until the hints are delivered (hints_pending 0 everywhere and
   hinted_points_delivered up; target <= 10 s after it answers). Then POST /cluster/repair on
   it checks that the hand-off left nothing to repair.
5. Peak RSS of each node's process tree (psutil) over phases 2 and 3.
6. Joining a fourth node (a fresh 3-node cluster, RF=2 unless --rf, holding --join-points
   points, 10,000,000 in a full run): node 4 starts with CLUSTER_NODES naming itself and
   node 1 and joins with no change on the others. Prints how fast it streamed its ranges
   (target >= 500,000 points/s), the write p99 of a light client (100-point batches, one
   at a time, over nodes 1-3) during the stream against at rest (target <= 2x), and, once
   cleanup has settled, each node's share of the points (target: within 15% of an even
   share, counted by the series each node's storage holds: every loaded series has the
   same number of points). ``--only join`` runs this phase alone.

Run it from the repository root with the project's virtualenv::

    /tmp/venv/bin/python scripts/bench_cluster.py            # full run, about 3 min
    /tmp/venv/bin/python scripts/bench_cluster.py --quick    # smoke run, about 1.5 min
    /tmp/venv/bin/python scripts/bench_cluster.py --json bench-cluster.json

Needs wrk (``apt-get install wrk``). Everything runs on this machine: the load generators
share the CPUs with the three nodes, so on a small VM the figures are lower bounds. Exit
status: 0 when every phase ran without errors and every node stopped cleanly (whether or not
the targets were met), 1 otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import ctypes.util
import http.client
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_node as bn  # the single-node benchmark's processes and clients

HOST = bn.HOST
# Longest wait for a node to fold what a phase wrote before the next phase starts.
COMPACTION_WAIT_S = 180.0
NODES = 3
# HTTP port p; gossip p+1000, replica traffic p+2000 (CLUSTER_PORT_OFFSET 1000); as the e2e
# harness, keep p..p+3 of each free.
CLUSTER_PORT_OFFSETS = tuple(base + i for base in (0, 1000, 2000) for i in range(4))

BATCH_POINTS_TARGET = 600_000
SINGLE_REQ_TARGET = 2_500
RF2_RATIO_TARGET = 1.5
RF3_RATIO_TARGET = 2.0
DETECTION_TARGET_S = 5.0
HINTS_TARGET_S = 10.0
JOIN_STREAM_TARGET = 500_000
JOIN_P99_RATIO_TARGET = 2.0
JOIN_SHARE_TARGET = 0.15
JOIN_SERIES = 1_000
JOIN_PROBE_POINTS = 100
JOIN_REST_S = 10.0
JOIN_WAIT_S = 600.0
SHARE_SETTLED_S = 10.0

WRK_CONNECTIONS = 64
LATENCY_SERIES = 100
LATENCY_BATCH_POINTS = 1_000
LATENCY_WARMUP_REQUESTS = 30
HINT_SERIES = 20
HINT_POINTS_PER_SERIES = 50
POLL_S = 0.05
CLUSTER_WAIT_S = 60.0
HANDOFF_WAIT_S = 60.0
NODE_LOG_LEVEL = "info"  # membership changes and hand-offs are logged at info


@dataclass(frozen=True)
class Sizes:
    join_points: int
    ingest_series: int
    ingest_points_per_series: int  # per form; one request holds 10 timestamps of all series
    ingest_budget_s: float
    wrk_duration_s: int
    wrk_warmup_s: int
    wrk_rounds: int
    latency_single: int  # per RF, in all rounds
    latency_batches: int
    latency_rounds: int


FULL_SIZES = Sizes(join_points=10_000_000, ingest_series=1_000, ingest_points_per_series=4_000, ingest_budget_s=120.0,
                   wrk_duration_s=10, wrk_warmup_s=3, wrk_rounds=2,
                   latency_single=800, latency_batches=200,
                   latency_rounds=4)
QUICK_SIZES = Sizes(join_points=1_000_000, ingest_series=1_000, ingest_points_per_series=300, ingest_budget_s=30.0,
                    wrk_duration_s=4, wrk_warmup_s=1, wrk_rounds=1,
                    latency_single=200, latency_batches=40,
                    latency_rounds=2)


# --------------------------------------------------------------------------
# Processes: every node in its own session, dying with this script
# --------------------------------------------------------------------------


_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that forked it ends (so the
    servers die with this script even on kill -9). Only a prctl call: no Python work that
    could take a lock another thread holds."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# wrk processes running now (started from helper threads), killed on the way out.
_WRK_PROCS: set[subprocess.Popen[str]] = set()
_WRK_LOCK = threading.Lock()


def kill_wrk() -> None:
    with _WRK_LOCK:
        procs = list(_WRK_PROCS)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()


class NodeProcess(bn.ManagedProcess):
    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if in_main_thread else None)


class Workspace(bn.Workspace):
    def close(self) -> None:
        kill_wrk()
        super().close()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str],
              cwd: Path | None = None) -> bn.ManagedProcess:
        proc = NodeProcess(name, argv, env, self.root / f"{name}.log")
        self._processes.append(proc)
        return proc


def get_json(port: int, path: str, timeout_s: float = 5.0) -> Any:
    status, body = bn.http_request(port, "GET", path, timeout_s=timeout_s)
    if status != 200:
        raise bn.BenchError(f"GET {path} on :{port} -> HTTP {status}: {body[:200]!r}")
    return orjson.loads(body)


def try_json(port: int, path: str, timeout_s: float = 1.0) -> Any:
    """GET path, or None if the node does not answer 200."""
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        status, body = bn.http_request(port, "GET", path, timeout_s=timeout_s)
        if status == 200:
            return orjson.loads(body)
    return None


def _role_processes(root_pids: Sequence[int]) -> dict[str, list[psutil.Process]]:
    """The processes of each node tree by role: "http" (the gunicorn master, the supervisor
    child that has children, and its workers) and "node" (the supervisor, the node process
    that owns LMDB, multiprocessing's resource tracker)."""
    found: dict[str, list[psutil.Process]] = {"http": [], "node": []}
    for root_pid in root_pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(root_pid)
            found["node"].append(root)
            for child in root.children(recursive=False):
                with contextlib.suppress(psutil.Error):
                    grandchildren = child.children(recursive=True)
                    if grandchildren:
                        found["http"] += [child, *grandchildren]
                    else:
                        found["node"].append(child)
    return found


def _cpu_s(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class CpuMeter:
    """CPU the nodes used during a block (by role), and how busy the whole machine was.
    Processes started during the block are not counted."""

    def __init__(self, root_pids: Sequence[int]) -> None:
        self.roles = _role_processes(root_pids)
        self.cpu_s: dict[str, float] = {}
        self.machine_busy_percent = 0.0
        self.wall_s = 0.0

    def __enter__(self) -> Self:
        self._before = {role: _cpu_s(procs) for role, procs in self.roles.items()}
        self._machine = psutil.cpu_times()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wall_s = time.monotonic() - self._wall
        self.cpu_s = {role: _cpu_s(procs) - self._before[role]
                      for role, procs in self.roles.items()}
        after = psutil.cpu_times()
        idle = (after.idle + after.iowait) - (self._machine.idle + self._machine.iowait)
        total = sum(after) - sum(self._machine)
        self.machine_busy_percent = 100.0 * (1 - idle / total) if total > 0 else 0.0

    @property
    def nodes_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    def as_dict(self, work: float = 0.0) -> dict[str, Any]:
        return {"nodes_cpu_s": self.nodes_cpu_s, "cpu_s_by_role": self.cpu_s,
                "wall_s": self.wall_s, "nodes_cores": self.nodes_cpu_s / max(self.wall_s, 1e-9),
                "cpu_us_per_unit": {role: cpu / work * 1e6 for role, cpu in self.cpu_s.items()}
                if work else {},
                "machine_busy_percent": self.machine_busy_percent}

    def line(self, work: float, unit: str) -> str:
        def per(cpu_s: float) -> str:
            return f"{cpu_s / work * 1e6:,.0f}" if work else "-"
        cores = self.nodes_cpu_s / max(self.wall_s, 1e-9)
        return (f"  CPU: the nodes used {self.nodes_cpu_s:.1f} s ({cores:.2f} cores), "
                f"{per(self.nodes_cpu_s)} us per {unit} (HTTP workers "
                f"{per(self.cpu_s.get('http', 0.0))}, node processes "
                f"{per(self.cpu_s.get('node', 0.0))}); machine "
                f"{self.machine_busy_percent:.0f}% busy over {os.cpu_count()} CPUs")


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------


@dataclass
class ClusterNode:
    node_id: int
    port: int
    data_dir: Path
    proc: bn.ManagedProcess | None = None
    runs: int = 0


class Cluster:
    """NODES count-server processes with one CLUSTER_NODES list, NODE_IDs 1..NODES."""

    def __init__(self, workspace: Workspace, server_argv: Sequence[str], name: str, rf: int,
                 env: dict[str, str]) -> None:
        self.workspace = workspace
        self.server_argv = list(server_argv)
        self.name = name
        self.rf = rf
        self.extra_env = dict(env)
        ports: list[int] = []
        while len(ports) < NODES:
            port = bn.free_port_block(CLUSTER_PORT_OFFSETS)
            if all(abs(port - p) > 2100 for p in ports):
                ports.append(port)
        self.nodes = [ClusterNode(i, port, workspace.root / f"{name}-n{i}")
                      for i, port in enumerate(ports, start=1)]
        self.members = ",".join(f"{HOST}:{n.port}" for n in self.nodes)
        self.stops: list[dict[str, Any]] = []

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def env(self, node: ClusterNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in bn.NODE_ENV_DEFAULTED}
        env.update(CLUSTER_ENABLED="true", NODE_ID=str(node.node_id), CLUSTER_NODES=self.members,
                   BIND_ADDRESS=f"{HOST}:{node.port}", REPLICATION_FACTOR=str(self.rf),
                   DATA_DIR=str(node.data_dir), LOG_LEVEL=NODE_LOG_LEVEL)
        env.update(self.extra_env)
        return env

    def launch(self, node: ClusterNode) -> None:
        node.runs += 1
        node.proc = self.workspace.start(f"{self.name}-n{node.node_id}-run{node.runs}",
                                         self.server_argv, self.env(node))

    def wait_healthy(self, node: ClusterNode, timeout_s: float = bn.READY_TIMEOUT_S) -> float:
        assert node.proc is not None
        return bn.wait_until_ready(node.proc, lambda: try_json(node.port, "/health") is not None,
                                   timeout_s)

    def start(self) -> None:
        started = time.monotonic()
        for node in self.nodes:
            self.launch(node)
        for node in self.nodes:
            self.wait_healthy(node)
        self.wait_alive(self.nodes, NODES)
        print(f"  cluster {self.name}: RF={self.rf}, nodes "
              + ", ".join(f"{n.node_id}=:{n.port} (pid {n.proc.pid})"  # type: ignore[union-attr]
                          for n in self.nodes)
              + f"; all see {NODES} alive after {time.monotonic() - started:.1f} s")

    def wait_alive(self, observers: Sequence[ClusterNode], size: int,
                   timeout_s: float = CLUSTER_WAIT_S) -> dict[int, float]:
        """Poll /health of the observers until each reports cluster_size == size; return the
        seconds each one took, counted from the call."""
        started = time.monotonic()
        seen: dict[int, float] = {}
        last: dict[int, Any] = {}
        while time.monotonic() - started < timeout_s:
            for node in observers:
                if node.node_id in seen:
                    continue
                health = try_json(node.port, "/health", timeout_s=1.0)
                last[node.node_id] = health
                if health is not None and health.get("cluster_size") == size:
                    seen[node.node_id] = time.monotonic() - started
            if len(seen) == len(observers):
                return seen
            time.sleep(POLL_S)
        raise bn.BenchError(f"cluster {self.name}: not every node saw {size} alive within "
                            f"{timeout_s:.0f} s; last /health {last}\n"
                            f"{self.workspace.log_tails(self.name)}")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL the node's whole process group (supervisor, node process, gunicorn)."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGKILL)

    def kill_all(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.kill()

    def root_pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None and not n.proc.exited()]

    def stop(self) -> None:
        """SIGTERM every live node at once, then wait; records exit codes and leftovers."""
        live = [n for n in self.nodes if n.proc is not None and not n.proc.exited()]
        started = time.monotonic()
        for node in live:
            node.proc.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for node in live:
            returncode, leftovers = node.proc.stop(signal.SIGTERM)  # type: ignore[union-attr]
            clean = returncode == 0 and leftovers == 0
            self.stops.append({"node": f"{self.name}-n{node.node_id}", "exit_code": returncode,
                               "leftover_processes": leftovers, "clean": clean,
                               "stop_s": time.monotonic() - started})
            if not clean:
                print(f"  {self.name}-n{node.node_id}: exit {returncode}, {leftovers} "
                      f"leftover processes\n{node.proc.log_tail()}")  # type: ignore[union-attr]
        for node in self.nodes:
            if node.proc is not None:
                node.proc.kill()

    def endpoints(self, series: str) -> list[int]:
        return get_json(self.nodes[0].port, f"/cluster/endpoints/{series}")["replicas"]


@contextlib.contextmanager
def running_cluster(workspace: Workspace, server_argv: Sequence[str], name: str, rf: int,
                    env: dict[str, str]) -> Iterator[Cluster]:
    cluster = Cluster(workspace, server_argv, name, rf, env)
    try:
        cluster.start()
        yield cluster
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: no graceful stops, kill at once
        cluster.kill_all()
        raise
    except BaseException:
        cluster.stop()
        STOPS.extend(cluster.stops)
        raise
    cluster.stop()
    STOPS.extend(cluster.stops)


STOPS: list[dict[str, Any]] = []


# --------------------------------------------------------------------------
# Phase 1: write latency per replication factor
# --------------------------------------------------------------------------


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    array = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99)),
            "mean_ms": float(array.mean()), "requests": len(samples_s)}


def timed_posts(clients: Sequence[bn.KeepAliveClient], bodies: Sequence[bytes]) -> list[float]:
    """POST each body in turn, round-robin over the clients; seconds per request."""
    latencies = []
    for index, body in enumerate(bodies):
        client = clients[index % len(clients)]
        started = time.perf_counter()
        status, reply = client.request("POST", "/insert", body)
        latencies.append(time.perf_counter() - started)
        if status != 201:
            raise bn.BenchError(f"insert -> HTTP {status}: {reply[:200]!r}")
    return latencies


def latency_bodies(sizes: Sizes, warmup: int,
                   rng: np.random.Generator) -> tuple[list[bytes], list[bytes]]:
    first = bn.FIRST_TIMESTAMP_MS
    singles = [orjson.dumps({"series": f"lat.s{int(rng.integers(LATENCY_SERIES))}",
                             "timestamp": first + i * 1000, "value": round(float(v), 2)})
               for i, v in enumerate(rng.normal(50, 10, warmup + sizes.latency_single))]
    per_series = LATENCY_BATCH_POINTS // LATENCY_SERIES
    batches = []
    for b in range(warmup + sizes.latency_batches):
        base = first + 10_000_000 + b * per_series * 1000
        batches.append(orjson.dumps({
            "series": [f"lat.b{s}" for s in range(LATENCY_SERIES) for _ in range(per_series)],
            "timestamps": [base + k * 1000 for _ in range(LATENCY_SERIES)
                           for k in range(per_series)],
            "values": np.round(rng.normal(50, 10, LATENCY_BATCH_POINTS), 2).tolist()}))
    return singles, batches


def phase_rf_latency(workspace: Workspace, server_argv: Sequence[str], sizes: Sizes,
                     env: dict[str, str]) -> dict[str, Any]:
    """Three clusters (RF 1, 2, 3) up at once, measured in turn in ABC/CBA rounds, so that
    drift in the machine's load spreads evenly over the three."""
    rfs = (1, 2, 3)
    rounds = sizes.latency_rounds
    print(f"  one client, sequential, round-robin over {NODES} nodes; "
          f"{sizes.latency_single} single-point inserts and {sizes.latency_batches} batches of "
          f"{LATENCY_BATCH_POINTS:,} points ({LATENCY_SERIES} series) per RF, in {rounds} "
          f"rounds alternating over the RFs")
    warmup = LATENCY_WARMUP_REQUESTS
    bodies = {rf: latency_bodies(sizes, warmup, np.random.default_rng(bn.RANDOM_SEED + rf))
              for rf in rfs}
    samples: dict[int, dict[str, list[float]]] = {rf: {"single": [], "batch": []} for rf in rfs}
    with contextlib.ExitStack() as stack:
        clusters = {rf: stack.enter_context(running_cluster(workspace, server_argv, f"rf{rf}",
                                                            rf, env)) for rf in rfs}
        clients = {rf: [bn.KeepAliveClient(port) for port in cluster.ports]
                   for rf, cluster in clusters.items()}
        for rf_clients in clients.values():
            stack.callback(lambda cs=rf_clients: [c.close() for c in cs])
        all_pids = [pid for cluster in clusters.values() for pid in cluster.root_pids()]
        for rf in rfs:
            singles, batches = bodies[rf]
            timed_posts(clients[rf], singles[:warmup] + batches[:warmup])
        for round_index in range(rounds):
            order = rfs if round_index % 2 == 0 else tuple(reversed(rfs))
            for rf in order:
                singles, batches = bodies[rf]
                one = slice(warmup + round_index * sizes.latency_single // rounds,
                            warmup + (round_index + 1) * sizes.latency_single // rounds)
                many = slice(warmup + round_index * sizes.latency_batches // rounds,
                             warmup + (round_index + 1) * sizes.latency_batches // rounds)
                bn.wait_for_idle(all_pids)
                samples[rf]["single"] += timed_posts(clients[rf], singles[one])
                samples[rf]["batch"] += timed_posts(clients[rf], batches[many])
    results: dict[str, Any] = {}
    for rf in rfs:
        single = percentiles_ms(samples[rf]["single"])
        batch = percentiles_ms(samples[rf]["batch"])
        results[str(rf)] = {"single": single, "batch": batch}
        print(f"  RF={rf}: single point p50 {single['p50_ms']:.2f} ms, p99 "
              f"{single['p99_ms']:.2f} ms; {LATENCY_BATCH_POINTS:,}-point batch p50 "
              f"{batch['p50_ms']:.2f} ms, p99 {batch['p99_ms']:.2f} ms")
    for kind in ("single", "batch"):
        base = results["1"][kind]["p50_ms"]
        for rf_name in ("2", "3"):
            results[f"ratio_rf{rf_name}_{kind}"] = results[rf_name][kind]["p50_ms"] / base
    print("  p50 ratios: single RF2/RF1 {:.2f}, RF3/RF1 {:.2f}; batch RF2/RF1 {:.2f}, "
          "RF3/RF1 {:.2f}".format(results["ratio_rf2_single"], results["ratio_rf3_single"],
                                  results["ratio_rf2_batch"], results["ratio_rf3_batch"]))
    return results


# --------------------------------------------------------------------------
# Phase 2: batch ingest spread over the nodes
# --------------------------------------------------------------------------


def wait_settled(cluster: Cluster) -> None:
    """Wait (bounded) until every node has compacted what earlier phases wrote and is idle,
    so that one phase's background work is not measured as the next phase's cost."""
    for port in cluster.ports:
        bn.wait_compacted(port, COMPACTION_WAIT_S)
    bn.wait_for_idle(cluster.root_pids())


def phase_batch_ingest(cluster: Cluster, sizes: Sizes, clients_per_node: int) -> dict[str, Any]:
    results: dict[str, Any] = {"clients": clients_per_node * NODES}
    for form in ("objects", "columnar"):
        workload = bn.Workload.random_walks(f"ingest_{form}", sizes.ingest_series,
                                            sizes.ingest_points_per_series, bn.RANDOM_SEED)
        generated = time.perf_counter()
        make = workload.body if form == "objects" else workload.columnar_body
        bodies = [make(index) for index in range(workload.request_count)]
        print(f"  {form}: pre-generated {len(bodies)} bodies of {bodies[0][1]:,} points "
              f"({sum(len(b) for b, _ in bodies) / bn.MIB:.0f} MiB) in "
              f"{time.perf_counter() - generated:.1f} s")
        wait_settled(cluster)
        with CpuMeter(cluster.root_pids()) as cpu:
            stats = bn.post_bodies(cluster.ports, bodies, clients_per_node * len(cluster.ports),
                                time.monotonic() + sizes.ingest_budget_s)
        bn.print_ingest(f"{form}, {clients_per_node * NODES} connections over {NODES} nodes",
                        stats)
        print(cpu.line(stats.points / 1000, "1,000 points"))
        bn.check_ingest(stats, workload.point_count)
        results[form] = {**stats.as_dict(), "cpu": cpu.as_dict(stats.points / 1000)}
        del bodies
    return results


# --------------------------------------------------------------------------
# Phase 3: single-point inserts with wrk on every node at once
# --------------------------------------------------------------------------


def run_wrk(wrk_path: str, port: int, connections: int, duration_s: int,
            tag: str) -> bn.WrkResult:
    argv = bn.wrk_argv(wrk_path, port, connections, duration_s, tag, threads=1)
    # The thread that starts wrk waits for it, so wrk dies with this script (PDEATHSIG).
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    with _WRK_LOCK:
        _WRK_PROCS.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=duration_s + 60)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise bn.BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
    finally:
        with _WRK_LOCK:
            _WRK_PROCS.discard(proc)
    return bn.wrk_result(argv, proc.returncode, stdout, stderr, connections)


def wrk_everywhere(wrk_path: str, ports: Sequence[int], duration_s: int,
                   tag: str) -> list[bn.WrkResult]:
    """One wrk per node, all at once, WRK_CONNECTIONS split over them."""
    split = [WRK_CONNECTIONS // len(ports) + (i < WRK_CONNECTIONS % len(ports))
             for i in range(len(ports))]
    results: list[bn.WrkResult | BaseException | None] = [None] * len(ports)

    def one(i: int) -> None:
        try:
            results[i] = run_wrk(wrk_path, ports[i], split[i], duration_s, f"{tag}n{i + 1}")
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(ports))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C or SIGTERM while waiting: stop the load at once
        kill_wrk()
        raise
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, bn.WrkResult)]


def wrk_cluster(cluster: Cluster, wrk_path: str, duration_s: int, tag: str) -> dict[str, Any]:
    bn.wait_for_idle(cluster.root_pids())
    with CpuMeter(cluster.root_pids()) as cpu:
        runs = wrk_everywhere(wrk_path, cluster.ports, duration_s, tag)
    requests = sum(run.requests for run in runs)
    for node_id, run in enumerate(runs, start=1):
        print(f"  {'cluster node ' + str(node_id):<14} {run.connections:>5} {run.req_per_s:>9.0f} "
              f"{run.p50_us / 1e3:>8.2f} {run.p99_us / 1e3:>8.2f} {run.non_201:>8} "
              f"{run.socket_errors:>9}")
    total = {
        "req_per_s": sum(run.req_per_s for run in runs), "requests": requests,
        "p50_ms": sum(run.p50_us * run.requests for run in runs) / max(requests, 1) / 1e3,
        "p99_ms": max(run.p99_us for run in runs) / 1e3,
        "non_201": sum(run.non_201 for run in runs),
        "socket_errors": sum(run.socket_errors for run in runs),
        "per_node": [run.as_dict() for run in runs], "cpu": cpu.as_dict(requests),
    }
    print(f"  {'cluster total':<14} {WRK_CONNECTIONS:>5} {total['req_per_s']:>9.0f} "
          f"{total['p50_ms']:>8.2f} {total['p99_ms']:>8.2f} {total['non_201']:>8} "
          f"{total['socket_errors']:>9}   (p50: mean weighted by requests; p99: worst node)")
    print(cpu.line(requests, "request"))
    return total


def wrk_single(node: bn.Node, wrk_path: str, duration_s: int, tag: str) -> dict[str, Any]:
    bn.wait_for_idle([node.proc.pid])
    with CpuMeter([node.proc.pid]) as cpu:
        run = bn.run_wrk(wrk_path, node.port, WRK_CONNECTIONS, duration_s, tag)
    print(f"  {'single node':<14} {run.connections:>5} {run.req_per_s:>9.0f} "
          f"{run.p50_us / 1e3:>8.2f} {run.p99_us / 1e3:>8.2f} {run.non_201:>8} "
          f"{run.socket_errors:>9}")
    print(cpu.line(run.requests, "request"))
    return {**run.as_dict(), "cpu": cpu.as_dict(run.requests)}


def pooled(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rounds pooled: req/s and percentiles averaged, errors summed."""
    return {"req_per_s": float(np.mean([r["req_per_s"] for r in rounds])),
            "p50_ms": float(np.mean([r["p50_ms"] for r in rounds])),
            "p99_ms": float(np.mean([r["p99_ms"] for r in rounds])),
            "non_201": sum(r["non_201"] for r in rounds),
            "socket_errors": sum(r["socket_errors"] for r in rounds), "rounds": list(rounds)}


def phase_single_inserts(workspace: Workspace, server_argv: Sequence[str], cluster: Cluster,
                         wrk_path: str, sizes: Sizes) -> dict[str, Any]:
    """wrk on every cluster node at once, and for comparison the same 64 connections on one
    plain (non-cluster) node started here, in ABBA order over the rounds."""
    single = bn.start_node(workspace, server_argv, "single-node", workspace.root / "single")
    wait_settled(cluster)
    try:
        wrk_everywhere(wrk_path, cluster.ports, sizes.wrk_warmup_s, "warmup")
        bn.run_wrk(wrk_path, single.port, WRK_CONNECTIONS, sizes.wrk_warmup_s, "warmup")
        print(f"  {'target':<14} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non-201':>8} {'sock-err':>9}")
        runs: dict[str, list[dict[str, Any]]] = {"cluster": [], "single": []}
        for round_index in range(sizes.wrk_rounds):
            order = ("cluster", "single") if round_index % 2 == 0 else ("single", "cluster")
            for target in order:
                tag = f"r{round_index}"
                runs[target].append(
                    wrk_cluster(cluster, wrk_path, sizes.wrk_duration_s, tag)
                    if target == "cluster" else wrk_single(single, wrk_path,
                                                           sizes.wrk_duration_s, tag))
    except KeyboardInterrupt:
        single.proc.kill()
        raise
    except BaseException:
        STOPS.append(bn.stop_node(single))
        raise
    STOPS.append(bn.stop_node(single))
    result = {target: pooled(target_runs) for target, target_runs in runs.items()}
    result["ratio_cluster_single"] = (result["cluster"]["req_per_s"]
                                      / max(result["single"]["req_per_s"], 1e-9))
    print(f"  cluster {result['cluster']['req_per_s']:,.0f} req/s, single node "
          f"{result['single']['req_per_s']:,.0f} req/s: ratio "
          f"{result['ratio_cluster_single']:.2f}")
    errors = sum(result[t]["non_201"] + result[t]["socket_errors"] for t in runs)
    if errors:
        raise bn.BenchError(f"wrk saw {errors} non-201 answers or socket errors")
    return result


# --------------------------------------------------------------------------
# Phase 4: failure detection, recovery, hinted hand-off
# --------------------------------------------------------------------------


def hint_counters(cluster: Cluster, nodes: Sequence[ClusterNode]) -> tuple[int, int]:
    """(hints pending, hinted points delivered) summed over these nodes."""
    pending = delivered = 0
    for node in nodes:
        stats = get_json(node.port, "/stats")
        pending += int(stats.get("hints_pending", 0))
        delivered += int(stats.get("hinted_points_delivered", 0))
    return pending, delivered


def phase_failure(cluster: Cluster) -> dict[str, Any]:
    victim = cluster.node(NODES)
    others = [n for n in cluster.nodes if n is not victim]
    targets = [f"hint.s{i}" for i in range(400)]
    on_victim = [s for s in targets if victim.node_id in cluster.endpoints(s)][:HINT_SERIES]
    _, delivered_before = hint_counters(cluster, others)
    bn.wait_for_idle(cluster.root_pids())

    killed_at = time.monotonic()
    cluster.kill(victim)
    seen = cluster.wait_alive(others, NODES - 1)
    detection_s = max(seen.values())
    print(f"  SIGKILL of node {victim.node_id}'s process group: seen down by "
          + ", ".join(f"node {i} after {s * 1e3:,.0f} ms" for i, s in sorted(seen.items())))
    assert victim.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        victim.proc.popen.wait(timeout=bn.CHILD_EXIT_GRACE_S)

    points = 0
    for index, series in enumerate(on_victim):
        port = others[index % len(others)].port
        body = orjson.dumps({"series": [series] * HINT_POINTS_PER_SERIES,
                             "timestamps": [bn.FIRST_TIMESTAMP_MS + k * 1000
                                            for k in range(HINT_POINTS_PER_SERIES)],
                             "values": [float(k) for k in range(HINT_POINTS_PER_SERIES)]})
        status, reply = bn.http_request(port, "POST", "/insert", body)
        if status != 201:
            raise bn.BenchError(f"insert with node {victim.node_id} down -> HTTP {status}: "
                                f"{reply[:200]!r}")
        points += HINT_POINTS_PER_SERIES
    pending, _ = hint_counters(cluster, others)
    print(f"  wrote {points:,} points of {len(on_victim)} series whose replicas include node "
          f"{victim.node_id}; hints pending on the others: {pending}")
    if pending == 0:
        raise bn.BenchError("no hint was kept for the down node")

    restarted_at = time.monotonic()
    cluster.launch(victim)
    up_s = cluster.wait_healthy(victim)
    back_at = restarted_at + up_s
    alive = cluster.wait_alive(cluster.nodes, NODES)
    all_alive_s = max(alive.values()) + up_s  # wait_alive counts from when it was called
    delivered_s = None
    deadline = time.monotonic() + HANDOFF_WAIT_S
    last: tuple[int, int] = (pending, delivered_before)
    while time.monotonic() < deadline:
        last = hint_counters(cluster, others)
        if last[0] == 0 and last[1] - delivered_before >= points:
            delivered_s = time.monotonic() - back_at
            break
        time.sleep(POLL_S * 2)
    if delivered_s is None:
        raise bn.BenchError(f"hints not delivered {HANDOFF_WAIT_S:.0f} s after node "
                            f"{victim.node_id} came back: pending {last[0]}, delivered "
                            f"{last[1] - delivered_before} of {points} points")
    status, body = bn.http_request(victim.port, "POST", "/cluster/repair")
    repair = orjson.loads(body) if status == 200 else {"error": body.decode(errors="replace")}
    moved = repair.get("points_received", 0) + repair.get("points_sent", 0)
    result = {
        "victim": victim.node_id, "detection_s": detection_s,
        "detection_by_node_s": {str(k): v for k, v in seen.items()},
        "killed_to_restart_s": restarted_at - killed_at,
        "restart_to_healthy_s": up_s, "restart_to_all_alive_s": all_alive_s,
        "hints_delivered_after_back_s": delivered_s,
        "hints_delivered_after_restart_s": delivered_s + up_s,
        "hinted_points": points, "hints_pending_while_down": pending,
        "hinted_points_delivered": last[1] - delivered_before, "repair_after": repair,
    }
    print(f"  restarted: /health after {up_s * 1e3:,.0f} ms, all see {NODES} alive after "
          f"{all_alive_s * 1e3:,.0f} ms, hints delivered {delivered_s * 1e3:,.0f} ms after it "
          f"answered ({result['hinted_points_delivered']:,} points)")
    print(f"  repair on node {victim.node_id} afterwards: {moved} points moved, "
          f"{len(repair.get('errors', []))} errors")
    if status != 200 or repair.get("errors"):
        raise bn.BenchError(f"repair after the hand-off failed: {repair}")
    return result


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Phase 6: a fourth node joins a loaded cluster
# --------------------------------------------------------------------------


class ProbeWriter:
    """One client posting small batches, one at a time, round-robin over some nodes, and
    remembering when each was sent and how long it took."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.clients = [bn.KeepAliveClient(port) for port in ports]
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds)
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            base = bn.FIRST_TIMESTAMP_MS + 10 ** 11 + seq * JOIN_PROBE_POINTS
            body = orjson.dumps({"series": f"probe.s{seq % 10}",
                                 "timestamps": list(range(base, base + JOIN_PROBE_POINTS)),
                                 "values": [1.0] * JOIN_PROBE_POINTS})
            client = self.clients[seq % len(self.clients)]
            started = time.perf_counter()
            status, _ = client.request("POST", "/insert", body)
            self.samples.append((time.monotonic(), time.perf_counter() - started))
            self.failures += status != 201
            seq += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for client in self.clients:
            client.close()

    def p99_ms(self, start: float, end: float) -> float:
        window = [s for at, s in self.samples if start <= at <= end]
        if len(window) < 10:
            raise bn.BenchError(f"only {len(window)} probe writes in the window")
        return float(np.percentile(np.asarray(window) * 1e3, 99))


def phase_join(workspace: Workspace, server_argv: Sequence[str], sizes: Sizes, rf: int,
               env: dict[str, str]) -> dict[str, Any]:
    with running_cluster(workspace, server_argv, "join", rf, env) as cluster:
        workload = bn.Workload.random_walks("joined", JOIN_SERIES,
                                            sizes.join_points // JOIN_SERIES, bn.RANDOM_SEED)
        bodies = [workload.columnar_body(i) for i in range(workload.request_count)]
        stats = bn.post_bodies(cluster.ports, bodies, 2 * NODES, time.monotonic() + 600)
        bn.check_ingest(stats, workload.point_count)
        del bodies
        print(f"  loaded {stats.points:,} points at {stats.points_per_s:,.0f} points/s")
        wait_settled(cluster)
        fourth = ClusterNode(NODES + 1, bn.free_port_block(CLUSTER_PORT_OFFSETS),
                             workspace.root / "join-n4")
        node_env = cluster.env(fourth)
        node_env["CLUSTER_NODES"] = f"{HOST}:{fourth.port},{HOST}:{cluster.node(1).port}"
        with ProbeWriter(cluster.ports) as probe:
            time.sleep(JOIN_REST_S)
            rest_end = time.monotonic()
            fourth.proc = workspace.start("join-n4", cluster.server_argv, node_env)
            cluster.nodes.append(fourth)  # stopped with the others
            cluster.wait_healthy(fourth)
            began: float | None = None
            points = 0
            while True:
                if time.monotonic() - rest_end > JOIN_WAIT_S:
                    raise bn.BenchError("node 4 did not finish joining in time\n"
                                        + workspace.log_tails("join-n4"))
                streaming = get_json(fourth.port, "/stats")["streaming"]
                if streaming.get("active"):
                    began = began or time.monotonic()
                    points = max(points, int(streaming.get("points", 0)))
                elif began is not None or streaming.get("streamed_epoch", 0) > 1:
                    ended = time.monotonic()
                    break
                time.sleep(0.1)
            began = began or rest_end
            p99_rest = probe.p99_ms(rest_end - JOIN_REST_S, rest_end)
            p99_join = probe.p99_ms(began, ended) if ended - began >= 2 else p99_rest
            failures = probe.failures
        log = fourth.proc.log_tail()
        fetched = [line for line in log.splitlines() if "fetched every range" in line]
        if fetched:  # the node's own count of what it streamed, and how long it took
            words = fetched[-1].split()
            points = int(words[words.index("points") - 1])
            took = float(words[words.index("in") + 1])
        else:
            took = ended - began
        rate = points / max(took, 1e-3)
        print(f"  node 4 streamed {points:,} points in {took:.1f} s: {rate:,.0f} points/s")
        print(f"  probe write p99 at rest {p99_rest:.1f} ms, during the stream {p99_join:.1f} ms"
              f" ({failures} probe writes failed)")
        # Each node's share, counted exactly: every loaded series holds the same number of
        # points, so a node's series (its storage's own count, in /stats) are its share.
        # The heartbeat's points estimate counts overwrites and dropped series until
        # compaction, and is no measure of this.
        last: dict[int, int] = {}
        stable_since = time.monotonic()
        deadline = time.monotonic() + JOIN_WAIT_S
        while time.monotonic() < deadline:
            now = {n.node_id: int(get_json(n.port, "/stats")["series"]) for n in cluster.nodes}
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= SHARE_SETTLED_S:
                break
            time.sleep(1.0)
        total = sum(last.values()) or 1
        shares = {n: p / total for n, p in sorted(last.items())}
        even = 1 / len(shares)
        worst = max(abs(share - even) / even for share in shares.values())
        print("  series shares after cleanup: " + ", ".join(f"node {n} {100 * s:.1f}%"
                                                   for n, s in shares.items()))
        return {"points_loaded": stats.points, "streamed_points": points, "stream_s": took,
                "stream_points_per_s": rate, "p99_rest_ms": p99_rest, "p99_join_ms": p99_join,
                "p99_ratio": p99_join / p99_rest, "probe_failures": failures,
                "shares": {str(n): s for n, s in shares.items()}, "share_worst": worst}


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    rf = results.get("rf")
    if "rf_latency" in results:
        lat = results["rf_latency"]
        kinds = (("single", "1 point"), ("batch", f"{LATENCY_BATCH_POINTS:,} points"))
        for r in ("1", "2", "3"):
            for kind, label in kinds:
                res = lat[r][kind]
                rows.append((f"write latency RF={r}, {label}",
                             f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms", "", ""))
        for kind, label in kinds:
            for r, target in (("2", RF2_RATIO_TARGET), ("3", RF3_RATIO_TARGET)):
                ratio = lat[f"ratio_rf{r}_{kind}"]
                rows.append((f"p50 ratio RF{r}/RF1, {label}", f"{ratio:.2f}x",
                             f"<= {target:.1f}x", met(ratio <= target)))
    if "batch_ingest" in results:
        res = results["batch_ingest"]
        for form in ("objects", "columnar"):
            value = res[form]["points_per_s"]
            rows.append((f"batch ingest, {NODES} nodes RF={rf}, {form}, {res['clients']} clients",
                         f"{value:,.0f} points/s", f">= {BATCH_POINTS_TARGET:,}",
                         met(value >= BATCH_POINTS_TARGET)))
    if "single_insert" in results:
        res = results["single_insert"]["cluster"]
        rows.append((f"single-point inserts, {WRK_CONNECTIONS} conns over {NODES} nodes",
                     (f"{res['req_per_s']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                      f"p99 {res['p99_ms']:.2f} ms"), f">= {SINGLE_REQ_TARGET:,} req/s",
                     met(res["req_per_s"] >= SINGLE_REQ_TARGET)))
        res = results["single_insert"]["single"]
        rows.append((f"  same wrk load on one plain node, {WRK_CONNECTIONS} conns",
                     (f"{res['req_per_s']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                      f"p99 {res['p99_ms']:.2f} ms"), "", ""))
        rows.append(("  ratio cluster / plain node",
                     f"{results['single_insert']['ratio_cluster_single']:.2f}", "", ""))
    if "failure" in results:
        res = results["failure"]
        rows.append(("failure detection (SIGKILL -> others see 2 alive)",
                     f"{res['detection_s'] * 1e3:,.0f} ms", f"<= {DETECTION_TARGET_S:.0f} s",
                     met(res["detection_s"] <= DETECTION_TARGET_S)))
        rows.append(("restart -> /health answers", f"{res['restart_to_healthy_s'] * 1e3:,.0f} ms",
                     "", ""))
        rows.append(("restart -> all see 3 alive", f"{res['restart_to_all_alive_s'] * 1e3:,.0f} ms",
                     "", ""))
        value = res["hints_delivered_after_back_s"]
        rows.append((f"hints delivered after return ({res['hinted_points']:,} points)",
                     f"{value * 1e3:,.0f} ms", f"<= {HINTS_TARGET_S:.0f} s",
                     met(value <= HINTS_TARGET_S)))
    if "join" in results:
        res = results["join"]
        rows.append((f"join a 4th node, {res['points_loaded']:,} points held, streaming",
                     f"{res['stream_points_per_s']:,.0f} points/s", f">= {JOIN_STREAM_TARGET:,}",
                     met(res["stream_points_per_s"] >= JOIN_STREAM_TARGET)))
        rows.append(("  write p99 during the stream / at rest",
                     f"{res['p99_join_ms']:.1f} / {res['p99_rest_ms']:.1f} ms = "
                     f"{res['p99_ratio']:.2f}x", f"<= {JOIN_P99_RATIO_TARGET:.0f}x",
                     met(res["p99_ratio"] <= JOIN_P99_RATIO_TARGET)))
        rows.append(("  worst share off an even share, after cleanup",
                     f"{100 * res['share_worst']:.1f}%", f"<= {100 * JOIN_SHARE_TARGET:.0f}%",
                     met(res["share_worst"] <= JOIN_SHARE_TARGET)))
    for node_id, rss in sorted(results.get("rss", {}).items()):
        rows.append((f"peak RSS node {node_id}, process tree (largest process)",
                     f"{rss['peak_tree_mb']:.0f} MiB ({rss['peak_process_mb']:.0f} MiB)", "", ""))
    unclean = [stop["node"] for stop in results.get("clean_stops", []) if not stop["clean"]]
    rows.append(("SIGTERM stops, exit 0", f"{len(results.get('clean_stops', [])) - len(unclean)} "
                 f"of {len(results.get('clean_stops', []))}" + (f" ({', '.join(unclean)} not)"
                                                               if unclean else ""),
                 "all", "met" if not unclean else "MISSED"))
    for phase, error in results.get("errors", {}).items():
        rows.append((phase, f"ERROR: {error.splitlines()[0][:70]}", "", "MISSED"))
    return rows


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def run_phase(results: dict[str, Any], workspace: Workspace, key: str, title: str,
              phase: Callable[[], Any]) -> None:
    print(f"\n[{title}]", flush=True)
    started = time.monotonic()
    try:
        results[key] = phase()
    except (bn.BenchError, OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        message = str(exc) if isinstance(exc, bn.BenchError) else f"{type(exc).__name__}: {exc}"
        results.setdefault("errors", {})[key] = message
        print(f"  ERROR: {message}")
    print(f"  ({time.monotonic() - started:.1f} s)", flush=True)


@contextlib.contextmanager
def workspace_cleanup() -> Iterator[Workspace]:
    workspace = Workspace()
    atexit.register(workspace.close)  # also if something escapes the finally below
    previous = {sig: signal.signal(sig, bn.raise_keyboard_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield workspace
    finally:
        workspace.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def node_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--node-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def run(args: argparse.Namespace, wrk_path: str) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    server_argv = shlex.split(args.server_cmd) if args.server_cmd else bn.default_server_argv()
    env = node_env(args.node_env)
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "rf": args.rf,
                               "sizes": asdict(sizes), "server_cmd": server_argv,
                               "node_env": env, "cpu_count": os.cpu_count()}
    print(f"Count cluster benchmark ({results['mode']}), {NODES} nodes on {HOST}, "
          f"server: {' '.join(server_argv)}")
    results["cpu_busy_percent_at_start"] = psutil.cpu_percent(interval=bn.BUSY_SAMPLE_S)
    if results["cpu_busy_percent_at_start"] > bn.BUSY_CPU_PERCENT:
        print(f"  warning: the CPUs are {results['cpu_busy_percent_at_start']:.0f}% busy before "
              f"starting; other work on this {os.cpu_count()}-core machine skews the figures")
    with workspace_cleanup() as workspace:
        print(f"  workspace {workspace.root}")
        if args.only == "join":
            run_phase(results, workspace, "join", "6. a fourth node joins a loaded cluster",
                      lambda: phase_join(workspace, server_argv, sizes, args.rf, env))
            results["clean_stops"] = list(STOPS)
            return results
        run_phase(results, workspace, "rf_latency",
                  "1. write latency at RF 1, 2, 3 (fresh cluster each, light load)",
                  lambda: phase_rf_latency(workspace, server_argv, sizes, env))
        try:
            with running_cluster(workspace, server_argv, "main", args.rf, env) as cluster:
                samplers = {n.node_id: bn.RssSampler(n.proc.pid)  # type: ignore[union-attr]
                            for n in cluster.nodes}
                with contextlib.ExitStack() as stack:
                    for sampler in samplers.values():
                        stack.enter_context(sampler)
                    run_phase(results, workspace, "batch_ingest",
                              f"2. batch ingest, 10,000-point bodies, spread over {NODES} nodes",
                              lambda: phase_batch_ingest(cluster, sizes, args.clients_per_node))
                    run_phase(results, workspace, "single_insert",
                              f"3. single-point inserts, wrk on every node, "
                              f"{WRK_CONNECTIONS} connections in all",
                              lambda: phase_single_inserts(workspace, server_argv, cluster,
                                                           wrk_path, sizes))
                print("\n[5. peak RSS per node process tree, phases 2-3]")
                results["rss"] = {}
                for node_id, sampler in samplers.items():
                    print(f"  node {node_id}:", end="")
                    results["rss"][str(node_id)] = sampler.report()
                run_phase(results, workspace, "failure",
                          "4. failure detection, restart, hinted hand-off",
                          lambda: phase_failure(cluster))
        except bn.BenchError as exc:
            results.setdefault("errors", {})["main_cluster"] = str(exc)
            print(f"  ERROR: {exc}")
        run_phase(results, workspace, "join", "6. a fourth node joins a loaded cluster",
                  lambda: phase_join(workspace, server_argv, sizes, args.rf, env))
    results["clean_stops"] = list(STOPS)
    return results


def run_failed(results: dict[str, Any]) -> bool:
    return bool(results.get("errors")) or not all(s["clean"] for s in results["clean_stops"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 1.5 min)")
    parser.add_argument("--rf", type=int, default=2, choices=(1, 2, 3),
                        help="replication factor of the cluster of phases 2-4 (default 2)")
    parser.add_argument("--clients-per-node", type=int, default=2, metavar="N",
                        help="batch ingest connections per node (default 2)")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every node (repeatable), "
                             "e.g. HTTP_WORKERS=1")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", choices=("join",), help="run one phase alone")
    parser.add_argument("--server-cmd", metavar="CMD",
                        help="command that starts a node (default: count-server next to "
                             "this Python)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return bn.bench_main(parse_args(argv), run, summary_rows, run_failed, "cluster")


if __name__ == "__main__":
    sys.exit(main())
