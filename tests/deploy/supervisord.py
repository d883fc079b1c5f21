"""supervisord running ``compose/supervisord.conf`` for real, for the deployment tests.

The shipped file takes its paths and addresses from the environment (``COUNT_BIN``,
``COUNT_STATE``, ``COUNT_NODE_1..3``), so the test gives it free loopback ports and a
temporary directory and runs the file unchanged. supervisord starts each program in a
process group of its own (``setpgrp``), so killing supervisord's group would leave the
nodes running: every group seen (supervisord's, each count-server's) is recorded and
SIGKILLed at cleanup, whatever the test did, as the e2e harness does for its nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil
import requests
from supervisor.xmlrpc import SupervisorTransport

from tests.e2e.conftest import (
    _ALL_PGIDS,
    _COUNT_ENV_NAMES,
    DEFAULT_ENV,
    _die_with_test_runner,
    _group_alive,
    _killpg,
    free_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = REPO_ROOT / "compose" / "supervisord.conf"
BIN = Path(sys.executable).parent  # the venv's bin: count-server, supervisord, supervisorctl
NODES = (1, 2, 3)
CTL_TIMEOUT_S = 60.0  # supervisorctl stop waits for the program; a clean stop takes seconds


class SupervisordError(AssertionError):
    """supervisord or a node did not do what the test waited for; carries the logs' tails."""


def program(i: int) -> str:
    return f"count-node-{i}"


class Supervisord:
    def __init__(self, state: Path) -> None:
        for tool in ("supervisord", "supervisorctl", "count-server"):
            if not (BIN / tool).exists():
                raise SupervisordError(f"{BIN / tool} is missing: install the test extra "
                                       "(pip install -e '.[test]'), which brings supervisor")
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.addresses = {i: f"127.0.0.1:{free_port()}" for i in NODES}
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgids: set[int] = set()
        self._out: Any = None

    # -- environment and commands ----------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The caller's environment without Count settings (they would leak into every
        node), the e2e harness's small defaults, and the variables the file expands."""
        env = {k: v for k, v in os.environ.items() if k not in _COUNT_ENV_NAMES}
        env.update(DEFAULT_ENV)
        env["PYTHONUNBUFFERED"] = "1"
        env["COUNT_BIN"] = str(BIN)
        env["COUNT_STATE"] = str(self.state)
        for i, address in self.addresses.items():
            env[f"COUNT_NODE_{i}"] = address
        return env

    def start(self) -> None:
        self._out = open(self.state / "supervisord.out", "wb")  # noqa: SIM115 - closed in cleanup
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "--nodaemon", "-c", str(CONF)], env=self.environment(),
            cwd=self.state, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_test_runner)
        self._track(self.proc.pid)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``supervisorctl -c compose/supervisord.conf ARGS``, as an operator types it."""
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(CONF), *args],
                              env=self.environment(), capture_output=True, text=True,
                              timeout=CTL_TIMEOUT_S)

    def rpc(self) -> Any:
        """supervisord's XML-RPC interface over its control socket (exit status, pid)."""
        transport = SupervisorTransport(None, None, f"unix://{self.state / 'supervisor.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def info(self, i: int) -> dict[str, Any]:
        info: dict[str, Any] = self.rpc().supervisor.getProcessInfo(program(i))
        if info.get("pid"):
            self._track(int(info["pid"]))
        return info

    # -- waits -----------------------------------------------------------------------------

    def wait_until(self, predicate: Any, what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SupervisordError(f"supervisord exited {self.proc.returncode} while waiting "
                                       f"for {what}\n{self.tails()}")
            try:
                value = predicate()
            except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
                value = None  # the control socket is not up yet
            if value:
                return value
            time.sleep(0.2)
        raise SupervisordError(f"{what} not reached within {timeout} s\n{self.tails()}")

    def wait_running(self, i: int, timeout: float, not_pid: int | None = None) -> int:
        """Wait until supervisord reports the program RUNNING (past startsecs); its pid."""
        def running() -> int | None:
            info = self.info(i)
            ok = info["statename"] == "RUNNING" and info["pid"] and info["pid"] != not_pid
            return int(info["pid"]) if ok else None
        return int(self.wait_until(running, f"{program(i)} RUNNING", timeout))

    def health(self, i: int) -> dict[str, Any] | None:
        """GET /health's body whatever its status (an unhealthy node may answer 503)."""
        try:
            resp = requests.get(f"http://{self.addresses[i]}/health", timeout=2.0)
            body: dict[str, Any] = resp.json()
            return body
        except (requests.RequestException, ValueError):
            return None

    def wait_health(self, nodes: tuple[int, ...], status: str, size: int, timeout: float) -> None:
        """Wait until each of ``nodes`` answers ``status`` seeing ``size`` members alive."""
        def reached() -> bool:
            bodies = [self.health(i) for i in nodes]
            return all(b is not None and b.get("status") == status
                       and b.get("cluster_size") == size for b in bodies)
        self.wait_until(reached, f"nodes {nodes} {status} with cluster_size {size}", timeout)

    def wait_healthy(self, nodes: tuple[int, ...], size: int, timeout: float) -> None:
        self.wait_health(nodes, "healthy", size, timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SupervisordError(f"supervisord still running after {timeout} s\n"
                                   f"{self.tails()}") from None

    # -- processes -------------------------------------------------------------------------

    def _track(self, pgid: int) -> None:
        self.pgids.add(pgid)
        _ALL_PGIDS.add(pgid)  # killed at the test session's exit too

    def kill_group(self, pid: int) -> None:
        """SIGKILL a program's whole process group, as the OOM killer of a cgroup would."""
        os.killpg(pid, signal.SIGKILL)

    def live_processes(self) -> list[psutil.Process]:
        """Every live (not zombie) process in a group this test has seen."""
        return self.group_members(*self.pgids)

    @staticmethod
    def group_members(*pgids: int) -> list[psutil.Process]:
        """The live (not zombie) processes of these process groups."""
        found = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) in pgids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def cleanup(self) -> None:
        """SIGKILL every group seen, and those of supervisord's descendants now."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    self._track(os.getpgid(child.pid))
            except (psutil.Error, ProcessLookupError):
                pass
        for pgid in self.pgids:
            _killpg(pgid)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(g) for g in self.pgids):
            time.sleep(0.05)
        for pgid in list(self.pgids):
            if not _group_alive(pgid):
                _ALL_PGIDS.discard(pgid)
        if self._out is not None:
            self._out.close()
            self._out = None

    # -- logs ------------------------------------------------------------------------------

    def log(self, name: str = "supervisord") -> str:
        path = self.state / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, lines: int = 25) -> str:
        parts = []
        for name in ("supervisord", *(program(i) for i in NODES)):
            tail = "\n".join(self.log(name).splitlines()[-lines:])
            parts.append(f"--- {name}.log\n{tail}")
        return "\n".join(parts)
