"""Single-node benchmark for Count: throughput, latency, disk footprint, memory.

Starts everything it measures on 127.0.0.1 (Count nodes on fresh temporary
DATA_DIRs, the baseline app and its echo process), prints the figures and a
final summary table, and stops every process and removes every temporary
directory it made, also on Ctrl-C, SIGTERM or errors.

What it measures:

1. Single-point ``POST /insert``: req/s and latency p50/p99 under wrk with 16
   and 64 keep-alive connections (``scripts/insert.lua`` varies series and
   timestamps and counts every response that is not 201).
2. The same wrk load against a baseline (``scripts/bench_baseline_app.py``):
   Falcon under gunicorn (2 sync workers) doing one ZeroMQ DEALER->ROUTER
   round trip per request to an echo process. Prints the ratio Count/baseline
   (target >= 0.80 at 64 connections). The full run does two rounds in ABBA
   order and pools them. Note that gunicorn's sync worker closes every
   connection after one response ("conn-close" column), Count's may not.
3. Batch ingest on ONE keep-alive connection: 1,000 series x 1,000 points in
   10,000-point requests (10 timestamps x 1,000 series each), bodies
   pre-generated before timing.
4. Range query p50/p99 over the full range of a 100,000-point series.
5. Bytes per point on disk: a fresh node ingests 10,000,000 points (1,000
   random-walk series x 10,000 points, 10 s apart), is stopped with SIGTERM,
   and the whole DATA_DIR is measured (apparent size and allocated blocks;
   target <= 1.2 bytes/point). Then the node is restarted on the same
   DATA_DIR and one series is read back and compared value by value.
6. Peak RSS during phases 3 and 5, of the largest single process of the
   count-server process tree and of the whole tree (target node < 300 MB).

Run it from the repository root with the project's virtualenv::

    /tmp/venv/bin/python scripts/bench_node.py            # full run, ~5 min
    /tmp/venv/bin/python scripts/bench_node.py --quick    # smoke run, < 1 min
    /tmp/venv/bin/python scripts/bench_node.py --json bench.json

Needs ``wrk`` (``apt-get install wrk``). Exit status: 0 when every phase ran
without errors, every answer was as expected and every node stopped cleanly
(whether or not the performance targets were met), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import orjson
import psutil

HOST = "127.0.0.1"
SCRIPTS_DIR = Path(__file__).resolve().parent
WRK_LUA_PATH = SCRIPTS_DIR / "insert.lua"
BASELINE_MODULE = "bench_baseline_app"

NODE_PORT_OFFSETS = (0, 1000, 1001, 1002, 1003)
PORT_RANGE = (20_000, 29_000)
PORT_PICK_ATTEMPTS = 500

WRK_THREADS = 2
WRK_CONNECTIONS = (16, 64)
WRK_WARMUP_CONNECTIONS = 64
WRK_REQUEST_TIMEOUT_S = 10
RATIO_TARGET = 0.80
RATIO_TARGET_CONNECTIONS = 64

BATCH_TIMESTAMPS_PER_REQUEST = 10
# Polling /stats no faster than the node's one-second idle threshold lets it compact.
STATS_POLL_S = 1.5
COMPACTION_WAIT_S = 60.0
FIRST_TIMESTAMP_MS = 1_600_000_000_000
TIMESTAMP_STEP_MS = 10_000
QUERY_INSERT_BATCH_POINTS = 10_000
DISK_CLIENT_CONNECTIONS = 2
DISK_CHUNK_REQUESTS = 50
BYTES_PER_POINT_TARGET = 1.2
NODE_RSS_TARGET_BYTES = 300 * 1024 * 1024  # the "< 300 MB" target, read as MiB
RANDOM_SEED = 20_240_101

HTTP_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
READY_POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 120.0
CHILD_EXIT_GRACE_S = 5.0
RSS_SAMPLE_INTERVAL_S = 0.1
IDLE_CPU_THRESHOLD_CORES = 0.15
IDLE_SAMPLE_INTERVAL_S = 0.5
IDLE_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 15
BUSY_CPU_PERCENT = 20.0
BUSY_SAMPLE_S = 1.0
NODE_LOG_LEVEL = "warning"
NODE_ENV_DEFAULTED = ("MEMORY_BUFFER_SIZE", "FLUSH_INTERVAL_SECONDS", "HTTP_WORKERS")
MIB = 1024 * 1024


class BenchError(Exception):
    """A phase could not be measured (server down, bad responses, timeout)."""


@dataclass(frozen=True)
class Sizes:
    wrk_duration_s: int
    wrk_warmup_s: int
    wrk_rounds: int
    ingest_series: int
    ingest_points_per_series: int
    query_series_points: int
    query_count: int
    ingest_budget_s: float
    query_budget_s: float
    disk_series: int
    disk_points_per_series: int
    disk_ingest_budget_s: float


FULL_SIZES = Sizes(
    wrk_duration_s=10, wrk_warmup_s=3, wrk_rounds=2,
    ingest_series=1_000, ingest_points_per_series=1_000, ingest_budget_s=120.0,
    query_series_points=100_000, query_count=200, query_budget_s=60.0,
    disk_series=1_000, disk_points_per_series=10_000, disk_ingest_budget_s=240.0,
)
QUICK_SIZES = Sizes(
    wrk_duration_s=3, wrk_warmup_s=1, wrk_rounds=1,
    ingest_series=1_000, ingest_points_per_series=100, ingest_budget_s=30.0,
    query_series_points=20_000, query_count=20, query_budget_s=10.0,
    disk_series=1_000, disk_points_per_series=300, disk_ingest_budget_s=30.0,
)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def tree_processes(root_pid: int) -> list[psutil.Process]:
    """The process root_pid and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class ManagedProcess:
    """A child started in its own session, output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str],
                 log_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    | {line}" for line in lines[-LOG_TAIL_LINES:])

    def stop(self, sig: int = signal.SIGTERM,
             timeout_s: float = STOP_TIMEOUT_S) -> tuple[int | None, int]:
        """Signal the process, wait, then kill whatever of its tree is left.

        Returns (exit code or None if it had to be killed, descendants killed).
        """
        descendants = tree_processes(self.pid)[1:]
        if not self.exited():
            self.popen.send_signal(sig)
        try:
            returncode: int | None = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        _, alive = psutil.wait_procs(descendants, timeout=CHILD_EXIT_GRACE_S)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.kill()
        return returncode, len(alive)

    def kill(self) -> None:
        """SIGKILL the process group this process leads, if anything is left."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=CHILD_EXIT_GRACE_S)


class Workspace:
    """Temporary directory plus every process started; cleans up on close."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="count-bench-"))
        self._processes: list[ManagedProcess] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str],
              cwd: Path | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, env, self.root / f"{name}.log", cwd)
        self._processes.append(proc)
        return proc

    def log_tails(self, name_prefix: str) -> str:
        """Tails of the non-empty logs of the processes whose name has this prefix."""
        return "\n".join(f"  {proc.name} log ({proc.log_path.name}):\n{tail}"
                         for proc in self._processes
                         if proc.name.startswith(name_prefix) and (tail := proc.log_tail()))

    def close(self) -> None:
        for proc in reversed(self._processes):
            proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(offsets: Sequence[int]) -> int:
    """A base port such that base + every offset is free on HOST."""
    rng = random.Random()
    for _ in range(PORT_PICK_ATTEMPTS):
        base = rng.randrange(*PORT_RANGE)
        if all(port_is_free(base + offset) for offset in offsets):
            return base
    raise BenchError(f"no free port block with offsets {offsets} in {PORT_RANGE}")


def wait_until_ready(proc: ManagedProcess, probe: Callable[[], bool],
                     timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll probe until it succeeds; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.exited():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode} "
                             f"before it was ready:\n{proc.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if probe():
                return time.monotonic() - started
        time.sleep(READY_POLL_INTERVAL_S)
    raise BenchError(f"{proc.name} not ready after {timeout_s:.0f} s:\n{proc.log_tail()}")


def wait_for_idle(root_pids: Sequence[int]) -> None:
    """Wait (bounded) until the given process trees use little CPU."""
    def cpu_seconds() -> float:
        total = 0.0
        for root_pid in root_pids:
            for proc in tree_processes(root_pid):
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    deadline = time.monotonic() + IDLE_TIMEOUT_S
    before = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(IDLE_SAMPLE_INTERVAL_S)
        after = cpu_seconds()
        if (after - before) / IDLE_SAMPLE_INTERVAL_S < IDLE_CPU_THRESHOLD_CORES:
            return
        before = after


class RssSampler:
    """Samples RSS of every process in a tree every RSS_SAMPLE_INTERVAL_S."""

    def __init__(self, root_pid: int) -> None:
        self._root_pid = root_pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_process_bytes = 0
        self.peak_process_pid = 0
        self.peak_tree_bytes = 0
        self.peak_tree_processes = 0
        self.samples = 0

    def _sample(self) -> None:
        total = 0
        processes = tree_processes(self._root_pid)
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                total += rss
                if rss > self.peak_process_bytes:
                    self.peak_process_bytes = rss
                    self.peak_process_pid = proc.pid
        self.peak_tree_bytes = max(self.peak_tree_bytes, total)
        self.peak_tree_processes = max(self.peak_tree_processes, len(processes))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, Any]:
        print(f"  peak RSS: largest process {self.peak_process_bytes / MIB:.0f} MiB "
              f"(pid {self.peak_process_pid}), tree {self.peak_tree_bytes / MIB:.0f} MiB "
              f"({self.peak_tree_processes} processes, {self.samples} samples)")
        return {"peak_process_mb": self.peak_process_bytes / MIB,
                "peak_process_pid": self.peak_process_pid,
                "peak_tree_mb": self.peak_tree_bytes / MIB,
                "max_tree_processes": self.peak_tree_processes,
                "samples": self.samples}


# --------------------------------------------------------------------------
# Servers under test
# --------------------------------------------------------------------------


def python_bin_dir() -> Path:
    return Path(sys.executable).parent


def default_server_argv() -> list[str]:
    console_script = python_bin_dir() / "count-server"
    if console_script.exists():
        return [str(console_script)]
    return [sys.executable, "-m", "count.server"]


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Node:
    proc: ManagedProcess
    port: int
    data_dir: Path


def start_node(workspace: Workspace, server_argv: Sequence[str], name: str,
               data_dir: Path) -> Node:
    port = free_port_block(NODE_PORT_OFFSETS)
    env = {key: value for key, value in os.environ.items() if key not in NODE_ENV_DEFAULTED}
    env.update(BIND_ADDRESS=f"{HOST}:{port}", DATA_DIR=str(data_dir), LOG_LEVEL=NODE_LOG_LEVEL)
    proc = workspace.start(name, server_argv, env)

    def healthy() -> bool:
        status, body = http_request(port, "GET", "/health", timeout_s=2.0)
        return status == 200 and orjson.loads(body).get("status") == "healthy"

    waited_s = wait_until_ready(proc, healthy)
    print(f"  {name}: pid {proc.pid}, http {HOST}:{port}, healthy after {waited_s:.1f} s")
    return Node(proc, port, data_dir)


def stop_node(node: Node) -> dict[str, Any]:
    """SIGTERM (clean stop) and report exit code, stop time and leftovers."""
    started = time.monotonic()
    returncode, leftovers = node.proc.stop(signal.SIGTERM)
    stop_s = time.monotonic() - started
    clean = returncode == 0 and leftovers == 0
    print(f"  {node.proc.name}: SIGTERM -> exit {returncode} in {stop_s:.1f} s"
          f"{f', killed {leftovers} leftover descendants' if leftovers else ''}"
          f"{'' if clean else '  <-- NOT CLEAN'}")
    if not clean:
        print(node.proc.log_tail())
    return {"node": node.proc.name, "exit_code": returncode, "stop_s": stop_s,
            "leftover_processes_killed": leftovers, "clean": clean}


def start_baseline(workspace: Workspace) -> tuple[ManagedProcess, ManagedProcess, int]:
    """Echo ROUTER process plus gunicorn (2 sync workers) serving the baseline app."""
    http_port = free_port_block((0, 1))
    echo_endpoint = f"tcp://{HOST}:{http_port + 1}"
    env = dict(os.environ, BENCH_ECHO_ENDPOINT=echo_endpoint)
    echo = workspace.start("baseline-echo", [
        sys.executable, str(SCRIPTS_DIR / f"{BASELINE_MODULE}.py"), echo_endpoint], env)
    gunicorn = workspace.start("baseline-gunicorn", [
        str(python_bin_dir() / "gunicorn"), "-w", "2", "-k", "sync", "-b", f"{HOST}:{http_port}",
        "--no-control-socket", "--chdir", str(SCRIPTS_DIR), f"{BASELINE_MODULE}:app"], env)
    point = orjson.dumps({"series": "baseline.probe", "timestamp": FIRST_TIMESTAMP_MS,
                          "value": 1.0})

    def accepts_insert() -> bool:
        if echo.exited():
            raise BenchError(f"baseline echo exited:\n{echo.log_tail()}")
        return http_request(http_port, "POST", "/insert", point, timeout_s=2.0)[0] == 201

    waited_s = wait_until_ready(gunicorn, accepts_insert)
    print(f"  baseline: gunicorn pid {gunicorn.pid} on {HOST}:{http_port}, echo pid {echo.pid} "
          f"on {echo_endpoint}, ready after {waited_s:.1f} s")
    return gunicorn, echo, http_port


# --------------------------------------------------------------------------
# Phases 1-2: wrk single-point inserts
# --------------------------------------------------------------------------


@dataclass
class WrkResult:
    connections: int
    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    max_us: int
    non_201: int
    connection_close: int
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_timeout: int

    @property
    def req_per_s(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def socket_errors(self) -> int:
        return self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "req_per_s": self.req_per_s, "p50_ms": self.p50_us / 1e3,
                "p99_ms": self.p99_us / 1e3, "socket_errors": self.socket_errors}


def wrk_argv(wrk_path: str, port: int, connections: int, duration_s: int, tag: str,
             threads: int) -> list[str]:
    """The wrk command line of one single-point insert run (scripts/insert.lua)."""
    return [wrk_path, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
            f"--timeout={WRK_REQUEST_TIMEOUT_S}s", "-s", str(WRK_LUA_PATH),
            f"http://{HOST}:{port}/insert", "--", tag]


def wrk_result(argv: Sequence[str], returncode: int, stdout: str, stderr: str,
               connections: int) -> WrkResult:
    """The BENCH_RESULT line insert.lua prints, or BenchError with wrk's output."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            fields = json.loads(line.removeprefix("BENCH_RESULT "))
            return WrkResult(connections=connections, **fields)
    raise BenchError(f"wrk exited {returncode} without a result ({' '.join(argv)}):\n"
                     f"{stdout}{stderr}")


def run_wrk(wrk_path: str, port: int, connections: int, duration_s: int, tag: str) -> WrkResult:
    argv = wrk_argv(wrk_path, port, connections, duration_s, tag, min(WRK_THREADS, connections))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
    return wrk_result(argv, done.returncode, done.stdout, done.stderr, connections)


def print_wrk_row(target: str, result: WrkResult) -> None:
    print(f"  {result.connections:>5}  {target:<9} {result.req_per_s:>9.0f} "
          f"{result.p50_us / 1e3:>8.2f} {result.p99_us / 1e3:>8.2f} {result.non_201:>8} "
          f"{result.socket_errors:>9} {result.connection_close:>10}")


def combine_wrk(runs: Sequence[WrkResult]) -> dict[str, Any]:
    """Pooled req/s over all rounds, mean of the rounds' percentiles, summed errors."""
    requests = sum(run.requests for run in runs)
    duration_s = sum(run.duration_us for run in runs) / 1e6
    return {"req_per_s": requests / duration_s if duration_s else 0.0, "requests": requests,
            "p50_ms": float(np.mean([run.p50_us for run in runs])) / 1e3,
            "p99_ms": float(np.mean([run.p99_us for run in runs])) / 1e3,
            "max_ms": max(run.max_us for run in runs) / 1e3,
            "non_201": sum(run.non_201 for run in runs),
            "socket_errors": sum(run.socket_errors for run in runs),
            "connection_close": sum(run.connection_close for run in runs),
            "rounds": [run.as_dict() for run in runs]}


def phase_single_inserts(wrk_path: str, sizes: Sizes, targets: dict[str, int],
                         idle_pids: Sequence[int]) -> dict[str, Any]:
    """wrk against every target at each connection count, in ABBA order over the rounds."""
    for name, port in targets.items():
        run_wrk(wrk_path, port, WRK_WARMUP_CONNECTIONS, sizes.wrk_warmup_s, f"warmup{name}")
    print(f"  {'conns':>5}  {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-201':>8} {'sock-err':>9} {'conn-close':>10}")
    results: dict[str, Any] = {}
    for connections in WRK_CONNECTIONS:
        runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
        for round_index in range(sizes.wrk_rounds):
            order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
            for name in order:
                wait_for_idle(idle_pids)
                result = run_wrk(wrk_path, targets[name], connections, sizes.wrk_duration_s,
                                 f"c{connections}r{round_index}")
                print_wrk_row(name, result)
                runs[name].append(result)
        row: dict[str, Any] = {name: combine_wrk(name_runs) for name, name_runs in runs.items()}
        row["ratio"] = row["count"]["req_per_s"] / max(row["baseline"]["req_per_s"], 1e-9)
        results[str(connections)] = row
    print("  ratio count/baseline: " + ", ".join(
        f"{row['ratio']:.2f} @ {conns} conns" for conns, row in results.items()))
    return results


# --------------------------------------------------------------------------
# Phases 3-5: batch ingest, range query, disk footprint
# --------------------------------------------------------------------------


class KeepAliveClient:
    """http.client on one persistent connection; reconnects if the server closes it."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_S)
        self.server_closes = 0
        self.retries = 0

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        reused = self._conn.sock is not None
        try:
            return self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self.retries += 1  # the server dropped an idle keep-alive connection
            self._conn.close()
            return self._send(method, path, body, headers)

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, bytes]:
        self._conn.request(method, path, body=body, headers=headers)
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.server_closes += 1
        return resp.status, data

    def close(self) -> None:
        self._conn.close()


@dataclass
class Workload:
    """Series x timestamps grid of random-walk values, sent series-interleaved."""

    names: list[str]
    values: np.ndarray  # shape (series, points)
    first_timestamp_ms: int = FIRST_TIMESTAMP_MS
    step_ms: int = TIMESTAMP_STEP_MS

    @classmethod
    def random_walks(cls, prefix: str, series: int, points: int, seed: int) -> Workload:
        rng = np.random.default_rng(seed)
        values = np.round(np.cumsum(rng.normal(0.0, 1.0, (series, points)), axis=1) + 100, 2)
        return cls([f"{prefix}.s{index:04d}" for index in range(series)], values)

    @property
    def point_count(self) -> int:
        return int(self.values.size)

    @property
    def request_count(self) -> int:
        return -(-self.values.shape[1] // BATCH_TIMESTAMPS_PER_REQUEST)

    def timestamp_ms(self, index: int) -> int:
        return self.first_timestamp_ms + index * self.step_ms

    def body(self, request_index: int) -> tuple[bytes, int]:
        """JSON array for one request (10 timestamps x all series) and its point count."""
        first = request_index * BATCH_TIMESTAMPS_PER_REQUEST
        columns = self.values[:, first:first + BATCH_TIMESTAMPS_PER_REQUEST].T.tolist()
        points = [{"series": name, "timestamp": self.timestamp_ms(first + offset), "value": value}
                  for offset, row in enumerate(columns)
                  for name, value in zip(self.names, row, strict=True)]
        return orjson.dumps(points), len(points)

    def columnar_body(self, request_index: int) -> tuple[bytes, int]:
        """The same request in the columnar form ``{"series", "timestamps", "values"}``."""
        first = request_index * BATCH_TIMESTAMPS_PER_REQUEST
        block = self.values[:, first:first + BATCH_TIMESTAMPS_PER_REQUEST]
        offsets = range(block.shape[1])
        body = {
            "series": [name for _ in offsets for name in self.names],
            "timestamps": [self.timestamp_ms(first + o) for o in offsets for _ in self.names],
            "values": block.T.reshape(-1).tolist(),
        }
        return orjson.dumps(body), block.size


@dataclass
class IngestStats:
    requests: int = 0
    points: int = 0
    send_s: float = 0.0
    non_201: int = 0
    first_error: str = ""
    server_closes: int = 0
    retries: int = 0
    timed_out: bool = False

    def merge(self, other: IngestStats) -> None:
        self.requests += other.requests
        self.points += other.points
        self.send_s += other.send_s
        self.non_201 += other.non_201
        self.first_error = self.first_error or other.first_error
        self.server_closes += other.server_closes
        self.retries += other.retries
        self.timed_out = self.timed_out or other.timed_out

    @property
    def points_per_s(self) -> float:
        return self.points / self.send_s if self.send_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points_per_s": self.points_per_s}


def post_bodies(port: int | Sequence[int], bodies: Sequence[tuple[bytes, int]],
                connections: int, deadline: float) -> IngestStats:
    """POST every body to /insert over `connections` keep-alive connections; with several
    ports (a cluster), connection i goes to ports[i % len(ports)]."""
    ports = [port] if isinstance(port, int) else list(port)
    stats = IngestStats()
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))

    def worker(port: int) -> None:
        client = KeepAliveClient(port)
        try:
            while time.monotonic() < deadline:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                body, point_count = bodies[index]
                status, reply = client.request("POST", "/insert", body)
                with lock:
                    stats.requests += 1
                    if status == 201:
                        stats.points += point_count
                    else:
                        stats.non_201 += 1
                        stats.first_error = stats.first_error or f"HTTP {status}: {reply[:200]!r}"
            stats.timed_out = True
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                stats.first_error = stats.first_error or f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
            with lock:
                stats.server_closes += client.server_closes
                stats.retries += client.retries

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(ports[i % len(ports)],), daemon=True)
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.send_s = time.perf_counter() - started
    return stats


def print_ingest(label: str, stats: IngestStats) -> None:
    print(f"  {label}: {stats.points:,} points in {stats.requests} requests, "
          f"{stats.send_s:.2f} s -> {stats.points_per_s:,.0f} points/s; non-201: {stats.non_201}, "
          f"server closes: {stats.server_closes}, retries: {stats.retries}"
          f"{', TIMED OUT' if stats.timed_out else ''}")
    if stats.first_error:
        print(f"  first error: {stats.first_error}")


def check_ingest(stats: IngestStats, expected_points: int) -> None:
    if stats.points != expected_points or stats.first_error:
        raise BenchError(f"{stats.points:,} of {expected_points:,} points accepted "
                         f"({stats.first_error or 'timed out'})")


def wait_compacted(port: int, timeout_s: float) -> float:
    """Wait (bounded) until the node has folded every segment, polling /stats slowly enough
    that the node still counts as idle; return the seconds waited."""
    started = time.monotonic()
    client = KeepAliveClient(port)
    try:
        while time.monotonic() - started < timeout_s:
            time.sleep(STATS_POLL_S)
            status, body = client.request("GET", "/stats")
            stats = orjson.loads(body) if status == 200 else {}
            if stats.get("segments") == 0 and not stats.get("compacting"):
                break
    finally:
        client.close()
    return time.monotonic() - started


def phase_batch_ingest(node: Node, sizes: Sizes) -> dict[str, Any]:
    workload = Workload.random_walks("ingest", sizes.ingest_series,
                                     sizes.ingest_points_per_series, RANDOM_SEED)
    generated = time.perf_counter()
    bodies = [workload.body(index) for index in range(workload.request_count)]
    print(f"  pre-generated {len(bodies)} bodies of {bodies[0][1]:,} points "
          f"({sum(len(body) for body, _ in bodies) / MIB:.0f} MiB) "
          f"in {time.perf_counter() - generated:.1f} s")
    waited_s = wait_compacted(node.port, COMPACTION_WAIT_S)
    print(f"  waited {waited_s:.1f} s for the node to fold the earlier phases' segments")
    with RssSampler(node.proc.pid) as rss:
        stats = post_bodies(node.port, bodies, connections=1,
                            deadline=time.monotonic() + sizes.ingest_budget_s)
    print_ingest("1 connection", stats)
    check_ingest(stats, workload.point_count)
    # Let the node fold what the first form left, so that the second form does not pay for
    # its compaction: both forms start from a node with nothing waiting.
    waited_s = wait_compacted(node.port, COMPACTION_WAIT_S)
    print(f"  waited {waited_s:.1f} s for compaction before the columnar run")
    columnar = Workload.random_walks("ingest_col", sizes.ingest_series,
                                     sizes.ingest_points_per_series, RANDOM_SEED)
    columnar_bodies = [columnar.columnar_body(index) for index in range(columnar.request_count)]
    columnar_stats = post_bodies(node.port, columnar_bodies, connections=1,
                                 deadline=time.monotonic() + sizes.ingest_budget_s)
    print_ingest("1 connection, columnar bodies", columnar_stats)
    check_ingest(columnar_stats, columnar.point_count)
    return {**stats.as_dict(), "points_per_request": bodies[0][1], "rss": rss.report(),
            "columnar": columnar_stats.as_dict()}


def percentile_ms(samples_s: Sequence[float], percent: float) -> float:
    return float(np.percentile(np.asarray(samples_s), percent)) * 1e3


def phase_range_query(node: Node, sizes: Sizes) -> dict[str, Any]:
    series = "query.single"
    timestamps_ms = [FIRST_TIMESTAMP_MS + index * TIMESTAMP_STEP_MS
                     for index in range(sizes.query_series_points)]
    bodies = []
    for first in range(0, sizes.query_series_points, QUERY_INSERT_BATCH_POINTS):
        chunk = timestamps_ms[first:first + QUERY_INSERT_BATCH_POINTS]
        points = [{"series": series, "timestamp": ts, "value": (first + i) * 0.5}
                  for i, ts in enumerate(chunk)]
        bodies.append((orjson.dumps(points), len(points)))
    check_ingest(post_bodies(node.port, bodies, 1, time.monotonic() + sizes.ingest_budget_s),
                 sizes.query_series_points)

    path = f"/query/range/{series}?start={timestamps_ms[0]}&end={timestamps_ms[-1]}"
    client = KeepAliveClient(node.port)
    latencies_s: list[float] = []
    response_mib = 0.0
    deadline = time.monotonic() + sizes.query_budget_s
    try:
        while len(latencies_s) < sizes.query_count and time.monotonic() < deadline:
            started = time.perf_counter()
            status, body = client.request("GET", path)
            latencies_s.append(time.perf_counter() - started)
            if status != 200:
                raise BenchError(f"range query -> HTTP {status}: {body[:200]!r}")
            if len(latencies_s) == 1:
                returned = len(orjson.loads(body))
                if returned != sizes.query_series_points:
                    raise BenchError(f"range query returned {returned:,} points, "
                                     f"expected {sizes.query_series_points:,}")
                response_mib = len(body) / MIB
    finally:
        client.close()
    result = {"series_points": sizes.query_series_points, "queries": len(latencies_s),
              "p50_ms": percentile_ms(latencies_s, 50), "p99_ms": percentile_ms(latencies_s, 99),
              "max_ms": max(latencies_s) * 1e3, "response_mib": response_mib,
              "server_closes": client.server_closes}
    print(f"  {len(latencies_s)} queries of {sizes.query_series_points:,} points "
          f"({response_mib:.1f} MiB each): p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
          f"{'  (stopped at time budget)' if len(latencies_s) < sizes.query_count else ''}")
    return result


def disk_usage(directory: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, file count) of regular files under directory."""
    apparent = allocated = files = 0
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            info = os.lstat(os.path.join(parent, name))
            if stat.S_ISREG(info.st_mode):
                apparent += info.st_size
                allocated += info.st_blocks * 512
                files += 1
    return apparent, allocated, files


def ingest_disk_workload(node: Node, workload: Workload,
                         sizes: Sizes) -> tuple[IngestStats, dict[str, Any]]:
    """Generate bodies chunk by chunk (untimed) and send each chunk over 2 connections."""
    total = IngestStats()
    deadline = time.monotonic() + sizes.disk_ingest_budget_s
    generate_s = 0.0
    with RssSampler(node.proc.pid) as rss:
        for first in range(0, workload.request_count, DISK_CHUNK_REQUESTS):
            started = time.perf_counter()
            last = min(first + DISK_CHUNK_REQUESTS, workload.request_count)
            bodies = [workload.body(index) for index in range(first, last)]
            generate_s += time.perf_counter() - started
            total.merge(post_bodies(node.port, bodies, DISK_CLIENT_CONNECTIONS, deadline))
            if total.first_error or total.timed_out:
                break
    print(f"  (body generation, not timed: {generate_s:.1f} s)")
    print_ingest(f"{DISK_CLIENT_CONNECTIONS} connections", total)
    return total, rss.report()


def read_back(node: Node, workload: Workload, series_index: int) -> dict[str, Any]:
    """Read one series fully and compare it with what was sent."""
    series = workload.names[series_index]
    points = workload.values.shape[1]
    end_ms = workload.timestamp_ms(points - 1)
    status, body = http_request(node.port, "GET",
                                f"/query/range/{series}?start={FIRST_TIMESTAMP_MS}&end={end_ms}")
    returned = orjson.loads(body) if status == 200 else []
    expected_ts = [workload.timestamp_ms(index) for index in range(points)]
    got_ts = [point["timestamp"] for point in returned]
    got_values = np.array([point["value"] for point in returned], dtype=np.float64)
    ok = (status == 200 and got_ts == expected_ts
          and np.array_equal(got_values, workload.values[series_index]))
    if status != 200:
        detail = f"HTTP {status}: {body[:120].decode(errors='replace')}"
    else:
        detail = (f"{len(returned):,} of {points:,} points"
                  f"{'' if ok else ', timestamps or values differ'}")
    print(f"  restart read of {series}: {'OK' if ok else 'FAIL'} ({detail})")
    if not ok:
        print(node.proc.log_tail())
    return {"series": series, "ok": ok, "detail": detail}


def phase_disk(workspace: Workspace, server_argv: Sequence[str], sizes: Sizes,
               stops: list[dict[str, Any]]) -> dict[str, Any]:
    workload = Workload.random_walks("disk", sizes.disk_series, sizes.disk_points_per_series,
                                     RANDOM_SEED + 1)
    data_dir = workspace.root / "data-disk"
    node = start_node(workspace, server_argv, "node-disk", data_dir)
    try:
        stats, rss = ingest_disk_workload(node, workload, sizes)
    finally:
        stops.append(stop_node(node))
    apparent, allocated, files = disk_usage(data_dir)
    points = max(stats.points, 1)
    result: dict[str, Any] = {
        **stats.as_dict(), "rss": rss,
        "points_sent": workload.point_count, "files": files,
        "apparent_bytes": apparent, "allocated_bytes": allocated,
        "apparent_bytes_per_point": apparent / points,
        "allocated_bytes_per_point": allocated / points}
    print(f"  DATA_DIR after clean stop: {files} files, apparent {apparent / MIB:.1f} MiB "
          f"({result['apparent_bytes_per_point']:.3f} B/point), allocated "
          f"{allocated / MIB:.1f} MiB ({result['allocated_bytes_per_point']:.3f} B/point) "
          f"for {stats.points:,} points")
    check_ingest(stats, workload.point_count)

    restarted = start_node(workspace, server_argv, "node-disk-restart", data_dir)
    try:
        result["restart_read"] = read_back(restarted, workload, sizes.disk_series // 2)
    finally:
        stops.append(stop_node(restarted))
    return result


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, verdict) rows for every figure that was measured."""
    rows: list[tuple[str, str, str, str]] = []
    for conns, row in results.get("single_insert", {}).items():
        for target in ("count", "baseline"):
            res = row[target]
            errors = res["non_201"] + res["socket_errors"]
            rows.append((f"insert 1 point, {conns} conns, {target}",
                         f"{res['req_per_s']:,.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                         f"p99 {res['p99_ms']:.2f} ms, errors {errors}", "", ""))
        is_target = int(conns) == RATIO_TARGET_CONNECTIONS
        rows.append((f"insert ratio count/baseline, {conns} conns", f"{row['ratio']:.2f}",
                     f">= {RATIO_TARGET:.2f}" if is_target else "",
                     verdict(row["ratio"] >= RATIO_TARGET) if is_target else ""))
    if "batch_ingest" in results:
        res = results["batch_ingest"]
        rows.append(("batch ingest, 1 connection", f"{res['points_per_s']:,.0f} points/s "
                     f"({res['points_per_request']:,} points/request)", "", ""))
        rows.append(("batch ingest, columnar bodies",
                     f"{res['columnar']['points_per_s']:,.0f} points/s", "", ""))
    if "range_query" in results:
        res = results["range_query"]
        rows.append((f"range query, {res['series_points']:,} points",
                     f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms "
                     f"({res['queries']} queries)", "", ""))
    if "disk" in results:
        res = results["disk"]
        rows.append((f"disk ingest, {DISK_CLIENT_CONNECTIONS} connections",
                     f"{res['points_per_s']:,.0f} points/s ({res['points']:,} points)", "", ""))
        for kind in ("apparent", "allocated"):
            value = res[f"{kind}_bytes_per_point"]
            rows.append((f"bytes/point on disk ({kind})", f"{value:.3f}",
                         f"<= {BYTES_PER_POINT_TARGET}", verdict(value <= BYTES_PER_POINT_TARGET)))
        if "restart_read" in res:
            read = res["restart_read"]
            rows.append(("read back after restart", read["detail"], "OK", verdict(read["ok"])))
    rss_phases = [results[key]["rss"] for key in ("batch_ingest", "disk") if key in results]
    if rss_phases:
        peak_process_mb = max(rss["peak_process_mb"] for rss in rss_phases)
        peak_tree_mb = max(rss["peak_tree_mb"] for rss in rss_phases)
        rows.append(("peak RSS, largest process", f"{peak_process_mb:.0f} MiB",
                     f"< {NODE_RSS_TARGET_BYTES // MIB} MiB",
                     verdict(peak_process_mb * MIB < NODE_RSS_TARGET_BYTES)))
        rows.append(("peak RSS, process tree total", f"{peak_tree_mb:.0f} MiB", "", ""))
    for stop in results.get("clean_stops", []):
        rows.append((f"SIGTERM stop of {stop['node']}", f"exit {stop['exit_code']}, "
                     f"{stop['stop_s']:.1f} s", "exit 0", verdict(stop["clean"])))
    for phase, error in results.get("errors", {}).items():
        rows.append((f"{phase}", f"ERROR: {error.splitlines()[0][:70]}", "", "FAIL"))
    return rows


def print_summary(rows: list[tuple[str, str, str, str]], title: str) -> None:
    headers = ("measure", "value", "target", "")
    widths = [max(len(str(row[col])) for row in [headers, *rows]) for col in range(4)]
    rule = "-" * (sum(widths) + 6)
    print(f"\n== {title} ==")
    print(rule)
    for row in [headers, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
        if row is headers:
            print(rule)
    print(rule)


def bench_main(args: argparse.Namespace, run: Callable[[argparse.Namespace, str], dict[str, Any]],
               summary_rows: Callable[[dict[str, Any]], list[tuple[str, str, str, str]]],
               run_failed: Callable[[dict[str, Any]], bool], what: str) -> int:
    """Run a benchmark with wrk, print its summary table, optionally write JSON; the exit
    status: 0 ran cleanly, 1 a phase failed, 2 no wrk, 130 interrupted."""
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("error: wrk not found on PATH; install it with: apt-get install wrk", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        results = run(args, wrk_path)
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped and temporary files removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    results["total_s"] = time.monotonic() - started
    rows = summary_rows(results)
    print_summary(rows, f"Count {what} benchmark summary ({results['mode']})")
    print(f"total time {results['total_s']:.0f} s")
    if args.json:
        columns = ("measure", "value", "target", "verdict")
        results["summary"] = [dict(zip(columns, row, strict=True)) for row in rows]
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 1 if run_failed(results) else 0


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def run_phase(results: dict[str, Any], workspace: Workspace, key: str, title: str,
              phase: Callable[[], Any]) -> None:
    """Run one phase, storing its result or its error (the run goes on)."""
    print(f"\n[{title}]", flush=True)
    started = time.monotonic()
    try:
        results[key] = phase()
    except (BenchError, OSError, http.client.HTTPException) as exc:
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
        results.setdefault("errors", {})[key] = message
        print(f"  ERROR: {message}")
        print(workspace.log_tails("node"))
    print(f"  ({time.monotonic() - started:.1f} s)", flush=True)


def raise_keyboard_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workspace_cleanup() -> Iterator[Workspace]:
    workspace = Workspace()
    previous = {sig: signal.signal(sig, raise_keyboard_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield workspace
    finally:
        workspace.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace, wrk_path: str) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    server_argv = shlex.split(args.server_cmd) if args.server_cmd else default_server_argv()
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                               "sizes": asdict(sizes), "server_cmd": server_argv,
                               "cpu_count": os.cpu_count(), "clean_stops": []}
    print(f"Count node benchmark ({results['mode']}), server: {' '.join(server_argv)}")
    results["cpu_busy_percent_at_start"] = psutil.cpu_percent(interval=BUSY_SAMPLE_S)
    if results["cpu_busy_percent_at_start"] > BUSY_CPU_PERCENT:
        print(f"  warning: the CPUs are {results['cpu_busy_percent_at_start']:.0f}% busy before "
              f"starting; other work on this {os.cpu_count()}-core machine skews the figures")
    with workspace_cleanup() as workspace:
        print(f"  workspace {workspace.root}")
        node = start_node(workspace, server_argv, "node", workspace.root / "data")
        gunicorn, echo, baseline_port = start_baseline(workspace)
        try:
            run_phase(results, workspace, "single_insert",
                      "1-2. single-point POST /insert, wrk, Count vs baseline",
                      lambda: phase_single_inserts(
                          wrk_path, sizes, {"count": node.port, "baseline": baseline_port},
                          [node.proc.pid, gunicorn.pid, echo.pid]))
        finally:
            gunicorn.stop()
            echo.stop()
        try:
            run_phase(results, workspace, "batch_ingest",
                      "3. batch ingest, one keep-alive connection",
                      lambda: phase_batch_ingest(node, sizes))
            run_phase(results, workspace, "range_query", "4. range query latency",
                      lambda: phase_range_query(node, sizes))
        finally:
            results["clean_stops"].append(stop_node(node))
        run_phase(results, workspace, "disk",
                  "5. bytes per point on disk (fresh node), restart read",
                  lambda: phase_disk(workspace, server_argv, sizes, results["clean_stops"]))
    return results


def run_failed(results: dict[str, Any]) -> bool:
    """Errors, non-201 answers from Count, an unclean stop or a wrong read-back."""
    non_201 = sum(row["count"]["non_201"] for row in results.get("single_insert", {}).values())
    read_ok = results.get("disk", {}).get("restart_read", {}).get("ok", True)
    clean = all(stop["clean"] for stop in results["clean_stops"])
    return bool(results.get("errors")) or non_201 > 0 or not read_ok or not clean


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (< 1 min)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--server-cmd", metavar="CMD",
                        help="command that starts a node "
                             "(default: count-server next to this Python)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(parse_args(argv), run, summary_rows, run_failed, "node")


if __name__ == "__main__":
    sys.exit(main())
