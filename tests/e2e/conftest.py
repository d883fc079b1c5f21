"""End-to-end test harness: real ``count-server`` processes on free local ports.

``CountNode`` wraps one server process (the supervisor, its node process and its gunicorn
master and workers). It is deliberately general so that cluster tests can run several of
them: every setting is an environment override, the data directory can be shared between
runs (restart on the same DATA_DIR), and each run's stderr goes to its own log file.

Every process started here runs in its own session (``start_new_session=True``), so
``kill()`` can SIGKILL the whole tree at once, and the fixtures kill every group they
started at teardown, whatever the test did.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from count.config import SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[2]

# Bounds of every wait in the harness.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0
HTTP_TIMEOUT_S = 10.0

# Small defaults: fast to start, and enough to exercise every code path.
DEFAULT_ENV: dict[str, str] = {
    "HTTP_WORKERS": "2",
    "HTTP_THREADS": "4",
    "LOG_LEVEL": "info",
    "REQUEST_TIMEOUT_MS": "5000",
}

# Settings of the parent environment that would leak into the node and change its behaviour.
_COUNT_ENV_NAMES = (*(s.name for s in SETTINGS), "RUST_LOG")


# Every process group started in this test session, killed at exit whatever happened.
_ALL_PGIDS: set[int] = set()


def _kill_all_groups() -> None:
    for pgid in list(_ALL_PGIDS):
        _killpg(pgid)


atexit.register(_kill_all_groups)


def _die_with_test_runner() -> None:
    """In the child before exec: SIGKILL the server if the process that started it dies.

    Linux ties PR_SET_PDEATHSIG to the *thread* that forked, so it is only requested when a
    node is started from the main thread (see CountNode.start).
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name).prctl(1, signal.SIGKILL, 0, 0, 0)


# -- ports ---------------------------------------------------------------------------------

_PORT_LOCK = threading.Lock()
_PORTS_GIVEN: set[int] = set()
# Below the Linux ephemeral range (32768..60999), so client sockets never take our ports.
_PORT_LOW, _PORT_HIGH = 12000, 30000
# Under pytest-xdist each worker takes its own slice of the range, so that two workers can
# never hand out the same block between checking it and binding it.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if _WORKER.startswith("gw") and _WORKERS > 1:
    _SLICE = (_PORT_HIGH - _PORT_LOW) // _WORKERS
    _PORT_LOW += int(_WORKER[2:]) * _SLICE
    _PORT_HIGH = _PORT_LOW + _SLICE


def port_free(port: int, reuse: bool = False) -> bool:
    """Nothing listens on (or holds) this port of 127.0.0.1; with ``reuse``, a port whose
    connections are only in TIME_WAIT counts as free (a server could bind it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(tries: int = 500) -> int:
    """A port p such that p..p+3, p+1000..p+1003 and p+2000..p+2003 are free on 127.0.0.1.

    The HTTP port is p; inter-node ports are derived from it (p+1000 gossip, p+2000 replica
    traffic, with the default CLUSTER_PORT_OFFSET), so a node started on p can also run its
    cluster listeners. Ports handed out once in this session
    are never handed out again, even after they are released.
    """
    with _PORT_LOCK:
        for _ in range(tries):
            base = random.randrange(_PORT_LOW, _PORT_HIGH - 2004)  # the whole block inside
            wanted = [p + offset for offset in (0, 1000, 2000) for p in range(base, base + 4)]
            if any(p in _PORTS_GIVEN for p in wanted):
                continue
            if all(port_free(p) for p in wanted):
                _PORTS_GIVEN.update(wanted)
                return base
    raise RuntimeError("no free port block found on 127.0.0.1")


# -- the node ------------------------------------------------------------------------------


class NodeError(AssertionError):
    """The node did not do what the harness waited for; the message carries its log tail."""


class CountNode:
    """One ``count-server`` process tree on 127.0.0.1, configured only by environment."""

    _names = itertools.count(1)

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str | None] | None = None,
        data_dir: Path | str | None = None,
        port: int | None = None,
        name: str | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.name = name or f"node{next(self._names)}"
        self._command = command
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.data_dir = Path(data_dir) if data_dir is not None else self.workdir / f"{self.name}-data"
        # None in env means "remove this variable" (e.g. to test a default).
        self.env_overrides: dict[str, str | None] = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgids: set[int] = set()
        self.runs = 0
        self.log_paths: list[Path] = []
        self._log_file: Any = None
        self._session = threading.local()

    # -- configuration ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _COUNT_ENV_NAMES}
        env.update(DEFAULT_ENV)
        env["BIND_ADDRESS"] = self.address
        env["DATA_DIR"] = str(self.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def command(self) -> list[str]:
        """``python -m count.server`` (same as the ``count-server`` console script)."""
        return list(self._command) if self._command else [sys.executable, "-m", "count.server"]

    # -- process control -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> CountNode:
        """Start the server (not waiting for it); a new log file per run."""
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.runs += 1
        log_path = self.workdir / f"{self.name}-run{self.runs}.log"
        self.log_paths.append(log_path)
        self._close_log()
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop/cleanup
        in_main_thread = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            self.command(), env=self.environment(), cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_test_runner if in_main_thread else None,
        )
        self.pgids.add(self.proc.pid)  # session leader: pgid == pid
        _ALL_PGIDS.add(self.proc.pid)
        self._session = threading.local()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> CountNode:
        """Wait until GET /live answers 200 (HTTP serves and the node process answers); fail
        early if the server exits. Not /health: a cluster node that sees fewer than a
        majority of its members (its peers still starting) is unhealthy, a 503."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise NodeError(f"{self.name} exited with {self.proc.returncode} while starting"
                                f"\n{self.log_tail()}")
            try:
                resp = requests.get(self.url("/live"), timeout=1.0)
                if resp.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise NodeError(f"{self.name} not ready within {timeout} s\n{self.log_tail()}")

    def start_ready(self, timeout: float = START_TIMEOUT_S) -> CountNode:
        return self.start().wait_ready(timeout)

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the server to exit on its own; return its exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise NodeError(f"{self.name} still running after {timeout} s\n{self.log_tail()}") from None
        self._close_log()
        self._forget_dead_groups()
        return code

    def signal_group(self, sig: int) -> None:
        """Send a signal to every process of the node (SIGSTOP/SIGCONT pause it whole)."""
        for pgid in list(self.pgids):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass

    def send_signal(self, sig: int) -> None:
        """Send a signal to the supervisor only."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the supervisor and wait for it; return its exit code.

        If it does not exit in time, the whole process group is killed and NodeError raised.
        Its children must be gone too once it exits (they are waited for, bounded).
        """
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.log_tail()
            self.kill()
            raise NodeError(f"{self.name} did not stop within {timeout} s on signal {sig}\n{tail}") from None
        self._close_log()
        self._forget_dead_groups()
        return code

    def kill(self) -> int | None:
        """SIGKILL the whole process group (supervisor and every child) and reap it."""
        for pgid in list(self.pgids):
            _killpg(pgid)
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._wait_group_gone(10)
        self._close_log()
        return code

    def restart(self, timeout: float = START_TIMEOUT_S, sig: int | None = signal.SIGTERM) -> CountNode:
        """Stop (with ``sig``; None = SIGKILL the group) and start again on the same DATA_DIR."""
        if self.running():
            if sig is None:
                self.kill()
            else:
                code = self.stop(sig)
                if sig == signal.SIGTERM and code != 0:
                    raise NodeError(f"{self.name} exited {code} on SIGTERM\n{self.log_tail()}")
        else:
            self._wait_group_gone(10)
        return self.start_ready(timeout)

    def cleanup(self) -> None:
        """Kill everything this node ever started; used at teardown."""
        self.kill()

    def _wait_group_gone(self, timeout: float) -> None:
        """SIGKILL this node's live process groups until they are gone (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._forget_dead_groups()
            if not self.pgids:
                return
            for g in self.pgids:
                _killpg(g)
            time.sleep(0.05)

    def _forget_dead_groups(self) -> None:
        """Stop tracking groups with no live member: their id may be reused by a stranger."""
        for pgid in list(self.pgids):
            if not _group_alive(pgid):
                self.pgids.discard(pgid)
                _ALL_PGIDS.discard(pgid)

    # -- processes -------------------------------------------------------------------------

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def children(self, recursive: bool = True) -> list[psutil.Process]:
        try:
            return self.process().children(recursive=recursive)
        except psutil.NoSuchProcess:
            return []

    def group_pids(self) -> list[int]:
        """Every live process in this node's process groups (not zombies)."""
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) in self.pgids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def node_process(self, timeout: float = 10.0) -> psutil.Process:
        """The child that owns LMDB: the one with DATA_DIR/data.mdb open.

        Falls back to the multiprocessing spawn child that has no children of its own (the
        gunicorn master has its workers; the resource tracker is not a spawn child).
        """
        mdb = os.path.realpath(self.data_dir / "data.mdb")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spawn_children = []
            for child in self.children(recursive=False):
                try:
                    if any(os.path.realpath(f.path) == mdb for f in child.open_files()):
                        return child
                    cmdline = " ".join(child.cmdline())
                    if "multiprocessing.spawn" in cmdline and not child.children():
                        spawn_children.append(child)
                except psutil.Error:
                    continue
            if len(spawn_children) == 1:
                return spawn_children[0]
            time.sleep(0.05)
        raise NodeError(f"no node process found among the children of {self.name}")

    def http_master(self, timeout: float = 10.0) -> psutil.Process:
        """The gunicorn master: the spawn child that has the HTTP workers as children."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children(recursive=False):
                try:
                    if "multiprocessing.spawn" in " ".join(child.cmdline()) and child.children():
                        return child
                except psutil.Error:
                    continue
            time.sleep(0.05)
        raise NodeError(f"no gunicorn master found among the children of {self.name}")

    # -- logs ------------------------------------------------------------------------------

    @property
    def log(self) -> str:
        """The current (or last) run's combined stdout/stderr."""
        if not self.log_paths:
            return ""
        return self.log_paths[-1].read_text(errors="replace")

    @property
    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- HTTP ------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    @property
    def http(self) -> requests.Session:
        """A requests session for the calling thread (sessions are not thread-safe)."""
        session = getattr(self._session, "session", None)
        if session is None:
            session = requests.Session()
            self._session.session = session
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.http.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def insert(self, points: Any, expect: int | None = 201) -> requests.Response:
        """POST /insert with a JSON body (a point, a list, or raw bytes/str)."""
        if isinstance(points, (bytes, str)):
            data = points.encode() if isinstance(points, str) else points
        else:
            data = json.dumps(points).encode()
        resp = self.post("/insert", data=data, headers={"Content-Type": "application/json"})
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, resp.text[:500])
        return resp

    def range(self, series: str, start: int | None = None, end: int | None = None) -> list[dict]:
        params = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        resp = self.get(f"/query/range/{series}", params=params)
        assert resp.status_code == 200, (resp.status_code, resp.text[:500])
        return resp.json()

    def aggregate(self, series: str, aggregation: str, **params: Any) -> Any:
        params["aggregation"] = aggregation
        resp = self.get(f"/query/aggregated/{series}", params=params)
        assert resp.status_code == 200, (resp.status_code, resp.text[:500])
        return resp.json()

    def stats(self) -> dict[str, Any]:
        resp = self.get("/stats")
        assert resp.status_code == 200, (resp.status_code, resp.text[:500])
        return resp.json()

    def wait_for_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
                       what: str = "stats condition", interval: float = 0.1) -> dict[str, Any]:
        """Poll /stats until ``predicate`` holds. Every request resets the node's idle timer,
        so waits for idle work (compaction) must poll with an interval over 1 s."""
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = self.stats()
            if predicate(stats):
                return stats
            time.sleep(interval)
        raise NodeError(f"{what} not reached within {timeout} s; last stats {stats}")

    def __repr__(self) -> str:
        return f"CountNode({self.name}, {self.address}, data_dir={self.data_dir})"


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; treat a group of zombies as gone.
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


# -- fixtures ------------------------------------------------------------------------------


class NodeFactory:
    """Creates CountNodes and guarantees they are all killed at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[CountNode] = []

    def __call__(self, env: Mapping[str, str | None] | None = None, *, start: bool = True,
                 data_dir: Path | str | None = None, port: int | None = None,
                 name: str | None = None, command: list[str] | None = None,
                 timeout: float = START_TIMEOUT_S) -> CountNode:
        node = CountNode(self.workdir, env=env, data_dir=data_dir, port=port, name=name,
                         command=command)
        self.nodes.append(node)
        if start:
            node.start_ready(timeout)
        return node

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """``make_node(env={...}, start=True, data_dir=None)`` -> a started CountNode."""
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def node(make_node: NodeFactory) -> CountNode:
    """A fresh node with small defaults."""
    return make_node()


@pytest.fixture(scope="module")
def module_node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """A factory whose nodes live for the whole module (shared by read-only-ish tests)."""
    factory = NodeFactory(tmp_path_factory.mktemp("module-nodes"))
    try:
        yield factory
    finally:
        factory.cleanup()


_series_ids = itertools.count(1)


@pytest.fixture
def series(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique series names per test, so tests can share a node: ``series("cpu")``."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    run = next(_series_ids)

    def make(suffix: str = "s") -> str:
        return f"t{run}.{base}.{suffix}"

    return make


def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture
def tmpfs_dir(tmp_path: Path, make_node: NodeFactory) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for the test; every node is killed before it is unmounted."""
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        make_node.cleanup()
        result = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


# The fields of /health the clustering guide shows ("Expected healthy output"); the body
# has more (members, storage, syncing, reasons).
GUIDE_HEALTH_FIELDS = ("status", "node_id", "cluster_size")


def guide_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The guide's fields of a /health body (KeyError if one is missing)."""
    return {name: body[name] for name in GUIDE_HEALTH_FIELDS}
