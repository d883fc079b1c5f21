"""The directory where prometheus_client's multiprocess mode keeps the HTTP workers' samples.

gunicorn runs several workers and a scrape of ``/metrics`` reaches one of them, so each
worker writes its counters and histograms to memory-mapped files in PROMETHEUS_MULTIPROC_DIR
and the worker serving the scrape merges every file: no worker's samples are lost, a dead
worker's counts included. count-server makes a fresh, empty directory per run (files of an
earlier run would be added to this run's counts) and sets the variable before it starts the
HTTP server, since prometheus_client picks its value class when it is imported.

The directory is in the system's temporary directory, never DATA_DIR: the files grow through
mmap, and touching a mapped page that a full file system cannot back kills the process with
SIGBUS, while Count is built to keep serving with a full data disk. A directory left by a
killed run (its count-server's pid no longer running) is removed by the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil

ENV_NAME = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "count-metrics-"


def _owner_pid(path: Path) -> int | None:
    """The count-server pid a directory of ours is named after; None if it is not ours."""
    suffix = path.name[len(_PREFIX):]
    return int(suffix) if path.name.startswith(_PREFIX) and suffix.isdigit() else None


def remove_stale(parent: Path) -> None:
    """Remove the directories of count-servers that are no longer running."""
    for path in parent.glob(_PREFIX + "*"):
        pid = _owner_pid(path)
        if pid is not None and pid != os.getpid() and not psutil.pid_exists(pid):
            shutil.rmtree(path, ignore_errors=True)


def create(parent: Path | None = None) -> Path:
    """A fresh, empty directory for this run, named after this process (count-server)."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    remove_stale(parent)
    path = parent / f"{_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)  # left by an earlier process with this pid
    path.mkdir(mode=0o700)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
