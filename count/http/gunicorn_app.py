"""gunicorn embedded in count-server (BaseApplication): the HTTP workers' master process."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from count.broker.client import NodeClient
from count.config import Config
from count.http.app import create_app
from count.lifecycle import die_with_parent
from count.logfilter import install_log_filter, parse_log_filter

# Seconds gunicorn gives workers to finish in-flight requests on SIGTERM.
GRACEFUL_TIMEOUT_S = 20
_GUNICORN_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                    logging.ERROR: "error"}


class HttpServer(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, config: Config, endpoint: str) -> None:
        self.config = config
        self.endpoint = endpoint
        super().__init__()

    def load_config(self) -> None:
        default_level, _ = parse_log_filter(self.config.log_level)
        settings: dict[str, Any] = {
            "bind": [str(self.config.bind_address)],
            "workers": self.config.http_workers,
            "threads": self.config.http_threads,
            "worker_class": "gthread",
            "keepalive": 5,
            "timeout": 60,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": _GUNICORN_LEVELS.get(default_level, "critical"),
            "proc_name": "count-http",
            "limit_request_line": 8190,
            "post_worker_init": self._post_worker_init,
        }
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one per machine
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _post_worker_init(self, worker: Any) -> None:
        install_log_filter(self.config.log_level, f"http-{worker.pid}")

    def load(self) -> Any:
        client = NodeClient(self.endpoint, self.config.request_timeout_ms)
        return create_app(self.config, client)


def run_http_server(config: Config, endpoint: str) -> None:
    """Serve HTTP until SIGTERM (gunicorn's arbiter handles the signals)."""
    die_with_parent()
    install_log_filter(config.log_level, "http")
    HttpServer(config, endpoint).run()
