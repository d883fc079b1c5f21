"""gunicorn embedded in count-server (BaseApplication): the HTTP workers' master process.

Signals: the supervisor stops HTTP with SIGTERM (graceful: in-flight requests finish).
SIGINT is ignored by the master and every worker (``count/lifecycle.py`` says why), and the
master blocks its workers' stop signals across each fork, so that a worker still booting
when the stop comes receives its SIGTERM once its own handlers are installed, instead of
losing it to the master's handler it inherited (then the master would wait
GRACEFUL_TIMEOUT_S for it and SIGKILL it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import multiprocess

from count.broker.client import NodeClient
from count.config import Config
from count.http.app import create_app
from count.lifecycle import child_ignores_sigint, die_with_parent
from count.logfilter import install_log_filter, parse_log_filter
from count.metrics_dir import ENV_NAME

# Seconds gunicorn gives workers to finish in-flight requests on SIGTERM.
GRACEFUL_TIMEOUT_S = 20
# The signals a worker acts on to stop; blocked from before its fork until its handlers exist.
_WORKER_STOP_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT}
_GUNICORN_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                    logging.ERROR: "error"}


class CountArbiter(Arbiter):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's master, ignoring SIGINT and handing each worker its stop signals intact."""

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def spawn_worker(self) -> Any:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_STOP_SIGNALS)
        try:
            return super().spawn_worker()
        finally:  # in the master; in the worker only as it exits
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class CountWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's gthread worker, ignoring SIGINT; a stop signal sent while it booted is
    delivered here, once its handlers are installed."""

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_STOP_SIGNALS)


class HttpServer(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, config: Config, endpoint: str, server_pid: int) -> None:
        self.config = config
        self.endpoint = endpoint
        self.server_pid = server_pid
        super().__init__()

    def load_config(self) -> None:
        default_level, _ = parse_log_filter(self.config.log_level)
        settings: dict[str, Any] = {
            "bind": [str(self.config.bind_address)],
            "workers": self.config.http_workers,
            "threads": self.config.http_threads,
            "worker_class": f"{__name__}.CountWorker",
            "keepalive": 5,
            "timeout": 60,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": _GUNICORN_LEVELS.get(default_level, "critical"),
            "proc_name": "count-http",
            "limit_request_line": 8190,
            "post_worker_init": self._post_worker_init,
            "child_exit": self._child_exit,
        }
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one per machine
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _post_worker_init(self, worker: Any) -> None:
        install_log_filter(self.config.log_level, f"http-{worker.pid}")

    def _child_exit(self, server: Any, worker: Any) -> None:
        """In the master: a dead worker's live gauges (requests in flight) leave the sums;
        its counters and histograms stay, as counts of what it served."""
        if ENV_NAME in os.environ:
            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]  # untyped in prometheus_client

    def load(self) -> Any:
        client = NodeClient(self.endpoint, self.config.request_timeout_ms)
        return create_app(self.config, client, self.server_pid)

    def run(self) -> None:
        """BaseApplication.run with Count's arbiter."""
        try:
            CountArbiter(self).run()
        except RuntimeError as exc:
            sys.stderr.write(f"\nError: {exc}\n")
            sys.exit(1)


def run_http_server(config: Config, endpoint: str) -> None:
    """Serve HTTP until SIGTERM (gunicorn's arbiter handles the signals; SIGINT is ignored)."""
    die_with_parent()
    child_ignores_sigint()
    install_log_filter(config.log_level, "http")
    HttpServer(config, endpoint, os.getppid()).run()
