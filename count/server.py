"""count-server: the supervisor of one node.

It validates the environment (a bad value exits 2 naming the variable), starts the node
process, waits until its storage is open, then starts gunicorn with the HTTP workers. Its
signal handlers only record the signal; the main loop does the work, as gunicorn's arbiter
does. SIGTERM and SIGINT stop HTTP first (in-flight requests finish), then the node process
(queued requests answered, buffer flushed, storage compacted) and exit 0. The children
ignore SIGINT (``count/lifecycle.py``), so a Ctrl-C sent to the whole process group stops
the node exactly as a SIGTERM to this process does. A child that dies
on its own takes the node down with exit 1, so that a process supervisor restarts it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from count import metrics_dir
from count.cluster.changes import EXIT_LEFT_BEFORE
from count.cluster.self_address import find_self
from count.config import Config, ConfigError, load_config
from count.http.gunicorn_app import GRACEFUL_TIMEOUT_S, run_http_server
from count.lifecycle import children_ignore_sigint
from count.logfilter import install_log_filter
from count.node_process import run_node_process
from count.server_args import build_parser

log = logging.getLogger("count.server")

NODE_START_TIMEOUT_S = 600
NODE_STOP_TIMEOUT_S = 600
HTTP_STOP_TIMEOUT_S = GRACEFUL_TIMEOUT_S + 10
KILL_WAIT_S = 5  # after SIGKILL of a child that outlived its stop timeout
# The longest count-server takes to exit after SIGTERM: HTTP, then the node process, each
# waited for up to its timeout and then killed. A process supervisor's stop timeout
# (supervisord's stopwaitsecs, systemd's TimeoutStopSec, Docker's stop_grace_period,
# Kubernetes' terminationGracePeriodSeconds) must be longer, or it may cut a clean stop
# short; tests/deploy checks the files in compose/ against it.
STOP_BOUND_S = HTTP_STOP_TIMEOUT_S + KILL_WAIT_S + NODE_STOP_TIMEOUT_S + KILL_WAIT_S
SUPERVISE_TICK_S = 1.0


def broker_endpoint(config: Config) -> str:
    """The node process's ROUTER address: an abstract Unix socket private to this node."""
    return f"ipc://@count-{config.bind_address.port}-{os.getpid()}"


class Supervisor:
    def __init__(self, config: Config, self_address: str) -> None:
        self.config = config
        self.self_address = self_address
        self.ctx = multiprocessing.get_context("spawn")
        self.signals: list[int] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.node: BaseProcess | None = None
        self.http: BaseProcess | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass

    def run(self) -> int:
        """Run the node until a signal or a child's death; its exit code."""
        try:
            path = metrics_dir.create()
        except OSError as exc:
            log.error("Cannot create the HTTP workers' metrics directory: %s (TMPDIR must be a "
                      "writable directory)", exc)
            return 2
        os.environ[metrics_dir.ENV_NAME] = str(path)  # inherited by the HTTP server
        try:
            return self._run()
        finally:
            metrics_dir.remove(path)

    def _run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        endpoint = broker_endpoint(self.config)
        ready = self.ctx.Event()
        self.node = self.ctx.Process(target=run_node_process, name="count-node",
                                     args=(self.config, self.self_address, endpoint, ready))
        with children_ignore_sigint():
            self.node.start()
        while not ready.wait(0.2):
            if self.signals:
                return self._stop(0)
            if not self.node.is_alive():
                log.error("Node process exited with code %s while starting", self.node.exitcode)
                return 1
        self.http = self.ctx.Process(target=run_http_server, name="count-http",
                                     args=(self.config, endpoint))
        with children_ignore_sigint():
            self.http.start()
        log.info("Node %s serving HTTP on %s (%d workers x %d threads)", self.config.node_id,
                 self.config.bind_address, self.config.http_workers, self.config.http_threads)
        while True:
            wait([self.node.sentinel, self.http.sentinel, self.wake_r], SUPERVISE_TICK_S)
            if self.signals:
                return self._stop(0)
            if not self.node.is_alive() and self.node.exitcode in (0, EXIT_LEFT_BEFORE):
                # It left the cluster: decommissioned (0), or started on a left member's data.
                return self._stop(self.node.exitcode)
            for child in (self.node, self.http):
                if not child.is_alive():
                    log.error("%s exited with code %s; stopping the node", child.name,
                              child.exitcode)
                    self._stop(1)
                    return 1

    def _terminate(self, child: BaseProcess | None, timeout_s: float) -> None:
        if child is None or child.pid is None or not child.is_alive():
            return
        os.kill(child.pid, signal.SIGTERM)
        child.join(timeout_s)
        if child.is_alive():
            log.error("%s did not stop within %.0f s; killing it", child.name, timeout_s)
            child.kill()
            child.join(KILL_WAIT_S)

    def _stop(self, code: int) -> int:
        log.info("Node %s shutting down", self.config.node_id)
        self._terminate(self.http, HTTP_STOP_TIMEOUT_S)
        self._terminate(self.node, NODE_STOP_TIMEOUT_S)
        if (self.node is not None and self.node.exitcode not in (0, None, EXIT_LEFT_BEFORE)
                and code == 0):
            code = 1
        log.info("Node %s stopped (exit %d; node process %s, http %s)", self.config.node_id,
                 code, getattr(self.node, "exitcode", None), getattr(self.http, "exitcode", None))
        return code


# glibc returns freed blocks over 128 KiB to the kernel at once, so every large numpy
# temporary of a range read page-faults afresh (about 3x slower reads on a VM). Keeping up
# to 128 MiB of freed memory in the process avoids that; an operator's own values win.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def main(argv: list[str] | None = None) -> None:
    """count-server: --help, --version and --check answer and exit; otherwise run a node."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"count-server: configuration error: {exc}\n")
        sys.exit(2)
    try:
        self_address = find_self(config)
    except ConfigError as exc:
        sys.stderr.write(f"count-server: configuration error: {exc}\n")
        sys.exit(2)
    if args.check:
        sys.stdout.write(f"count-server: configuration valid: node {config.node_id} on "
                         f"{config.bind_address} ({self_address} in a cluster of "
                         f"{len(config.members())}), data in {config.data_dir}\n")
        sys.exit(0)
    install_log_filter(config.log_level, "server")
    try:
        os.makedirs(config.data_dir, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"count-server: configuration error: DATA_DIR: {exc}\n")
        sys.exit(2)
    for name, value in MALLOC_TUNING.items():
        os.environ.setdefault(name, value)  # read by the children, which start afresh
    sys.exit(Supervisor(config, self_address).run())


if __name__ == "__main__":
    main()
