"""The log filter syntax of the original Count (RUST_LOG style), and installing it.

``info`` sets the default level; ``count.storage=debug,info`` sets one logger's level and the
default. Rust module paths (``count::cluster``) are accepted and mean the same logger.
"""

from __future__ import annotations

import logging
import sys
import time

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


class LogFilterError(ValueError):
    """The filter text is not in the ``target=level,level`` syntax."""


def parse_log_filter(text: str) -> tuple[int, dict[str, int]]:
    """Return (default level, {logger name: level}) for a filter such as ``a.b=debug,info``."""
    default = logging.INFO
    targets: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        target, sep, level_text = part.rpartition("=")
        level = _LEVELS.get(level_text.strip().lower())
        if level is None:
            raise LogFilterError(
                f"unknown level {level_text.strip()!r} (use one of {', '.join(_LEVELS)})"
            )
        if not sep:
            default = level
            continue
        name = target.strip().replace("::", ".")
        if not name:
            raise LogFilterError(f"missing target before '=' in {part!r}")
        targets[name] = level
    return default, targets


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def install_log_filter(text: str, process: str) -> None:
    """Send this process's logs to stderr, filtered by ``text``, tagged with ``process``."""
    default, targets = parse_log_filter(text)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _UtcFormatter(f"%(asctime)s %(levelname)s [{process}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(default)
    for name, level in targets.items():
        logging.getLogger(name).setLevel(level)
