"""What the node's processes use of the machine (psutil) and the room left on DATA_DIR's file
system, as Prometheus metric families, read at scrape time by the worker serving ``/metrics``.

A node is a tree of processes (``count/server.py``): count-server (``server``), its node
process (``node``) and the gunicorn master with its workers (``http``). Each role's figures
are summed over its processes, so the ``process`` label has three values however many
workers run. A process that exits while it is read is left out of that scrape.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

ROLES = ("server", "node", "http")


class Usage(NamedTuple):
    """One process's figures; counters since the process started."""

    rss_bytes: int
    cpu_seconds: float
    open_fds: int
    read_bytes: int
    written_bytes: int


def process_tree(server_pid: int, http_pid: int) -> dict[str, list[psutil.Process]]:
    """The node's processes by role: count-server, the HTTP server (``http_pid``) and its
    workers, and every other descendant of count-server (the node process)."""
    server = psutil.Process(server_pid)
    roles: dict[str, list[psutil.Process]] = {"server": [server], "node": [], "http": []}
    for child in server.children():
        role = "http" if child.pid == http_pid else "node"
        try:
            roles[role] += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return roles


def usage(process: psutil.Process) -> Usage | None:
    """The process's figures; None if it is gone or not ours to read."""
    try:
        with process.oneshot():
            cpu = process.cpu_times()
            io = process.io_counters()
            return Usage(process.memory_info().rss, cpu.user + cpu.system, process.num_fds(),
                         io.read_bytes, io.write_bytes)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def process_families(usages: Mapping[str, Sequence[Usage]]) -> Iterator[Metric]:
    """Per-role sums of the processes' figures."""
    rows: tuple[tuple[bool, str, str, Callable[[Usage], float]], ...] = (
        (False, "count_process_resident_memory_bytes", "Resident memory of the node's processes.",
         lambda u: u.rss_bytes),
        (True, "count_process_cpu_seconds",
         "CPU time (user and system) of the node's live processes.", lambda u: u.cpu_seconds),
        (False, "count_process_open_fds", "File descriptors open in the node's processes.",
         lambda u: u.open_fds),
        (True, "count_process_disk_read_bytes",
         "Bytes the node's live processes read from storage devices.", lambda u: u.read_bytes),
        (True, "count_process_disk_written_bytes",
         "Bytes the node's live processes wrote to storage devices.", lambda u: u.written_bytes),
    )
    for counter, name, help_text, field in rows:
        help_text += " By role: server, node or http."
        family: GaugeMetricFamily | CounterMetricFamily = (
            CounterMetricFamily(name, help_text, labels=["process"]) if counter
            else GaugeMetricFamily(name, help_text, labels=["process"]))
        for role in ROLES:
            if role in usages:
                family.add_metric([role], float(sum(map(field, usages[role]))))
        yield family
    count = GaugeMetricFamily("count_processes", "Live processes of the node, by role.",
                              labels=["process"])
    for role in ROLES:
        if role in usages:
            count.add_metric([role], float(len(usages[role])))
    yield count


def tree_families(server_pid: int, http_pid: int) -> Iterator[Metric]:
    """process_families of the node's process tree as it is now."""
    try:
        tree = process_tree(server_pid, http_pid)
    except psutil.Error:
        return
    usages = {role: [u for u in map(usage, procs) if u is not None]
              for role, procs in tree.items()}
    yield from process_families(usages)


def disk_families(data_dir: str | os.PathLike[str]) -> Iterator[Metric]:
    """The size of DATA_DIR's file system and the room left on it (for non-root users)."""
    try:
        total, _, free = shutil.disk_usage(data_dir)
    except OSError:
        return
    yield GaugeMetricFamily("count_data_dir_filesystem_size_bytes",
                            "Size of the file system holding DATA_DIR.", value=float(total))
    yield GaugeMetricFamily("count_data_dir_filesystem_free_bytes",
                            "Bytes free on the file system holding DATA_DIR.", value=float(free))
