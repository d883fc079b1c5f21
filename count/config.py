"""Node configuration from the environment.

Every setting is declared once in ``SETTINGS``: its environment name, parser, default, allowed
range and one line of documentation. The README's settings table is generated from the same
list (``python -m count.config``), so the two cannot drift apart. Parsing is pure: it takes a
mapping and returns a frozen ``Config`` or raises ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from count.logfilter import LogFilterError, parse_log_filter


class ConfigError(ValueError):
    """A setting has a value Count cannot run with; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


_HOST_RE = re.compile(r"^[A-Za-z0-9.\-_]+$|^\[[0-9A-Fa-f:]+\]$")


def parse_host_port(text: str) -> HostPort:
    """Parse ``host:port``; the host is a name, IPv4 address or bracketed IPv6 address."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not _HOST_RE.match(host):
        raise ValueError(f"expected host:port, got {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1..65535 in {text!r}")
    return HostPort(host, int(port_text))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_int(text: str) -> int:
    stripped = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?\d+", stripped):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(stripped)


def _parse_node_id(text: str) -> int | str:
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,62}", stripped):
        raise ValueError(
            f"expected a number or a name of letters, digits, '.', '-', '_' (max 63), got {text!r}"
        )
    return stripped


def _parse_nodes(text: str) -> tuple[HostPort, ...]:
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    return tuple(parse_host_port(p) for p in parts)


def _parse_text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _parse_log(text: str) -> str:
    try:
        parse_log_filter(text)
    except LogFilterError as exc:
        raise ValueError(str(exc)) from None
    return text.strip()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One environment setting: how to read it and what values are allowed."""

    name: str
    field: str
    parse: Callable[[str], Any]
    default: str
    doc: str
    low: int | None = None
    high: int | None = None

    def read(self, env: Mapping[str, str]) -> Any:
        raw = env.get(self.name, self.default)
        try:
            value = self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        if self.low is not None and value < self.low:
            raise ConfigError(f"{self.name}: {value} is below the minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"{self.name}: {value} is above the maximum {self.high}")
        return value

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        return f"{self.low}..{self.high}"


MIB = 1024 * 1024

SETTINGS: tuple[Setting, ...] = (
    Setting("NODE_ID", "node_id", _parse_node_id, "1",
            "This node's id: a number, or a name such as a pod name `count-cluster-2`."),
    Setting("CLUSTER_ENABLED", "cluster_enabled", _parse_bool, "false",
            "Join the nodes in CLUSTER_NODES into one cluster."),
    Setting("CLUSTER_NODES", "cluster_nodes", _parse_nodes, "",
            "Comma-separated `host:port` HTTP addresses: for a new cluster every first member, "
            "this node included; for a node joining a running cluster itself and one or more "
            "live members (seeds). The ring is cluster state from then on: later changes to "
            "this list add or remove nothing (use `count decommission` / `count removenode`)."),
    Setting("REPLICATION_FACTOR", "replication_factor", _parse_int, "2",
            "Copies of each series kept in a cluster.", 1, 9),
    Setting("BIND_ADDRESS", "bind_address", parse_host_port, "127.0.0.1:8080",
            "HTTP listen address; inter-node ports are derived from its port."),
    Setting("DATA_DIR", "data_dir", _parse_text, "./count_data",
            "Directory holding the LMDB environment."),
    Setting("MEMORY_BUFFER_SIZE", "memory_buffer_size", _parse_int, "10000",
            "Points held in memory before a flush to on-disk segments.", 100, 10_000_000),
    Setting("FLUSH_INTERVAL_SECONDS", "flush_interval_seconds", _parse_int, "300",
            "Longest time a point stays in the memory buffer (it is durable in the WAL).",
            1, 86_400),
    Setting("LOG_LEVEL", "log_level", _parse_log, "info",
            "Log filter, e.g. `info` or `count.storage=debug,info` (RUST_LOG is read too)."),
    Setting("HTTP_WORKERS", "http_workers", _parse_int, "2",
            "gunicorn worker processes.", 1, 64),
    Setting("HTTP_THREADS", "http_threads", _parse_int, "8",
            "Threads per worker; also each worker's bound on requests in flight.", 1, 64),
    Setting("REQUEST_TIMEOUT_MS", "request_timeout_ms", _parse_int, "5000",
            "Deadline of a request inside the node; past it the client gets 503.",
            50, 600_000),
    Setting("MAX_BODY_BYTES", "max_body_bytes", _parse_int, str(16 * MIB),
            "Largest accepted request body (413 above, checked before reading).",
            1024, 1024 * MIB),
    Setting("MAX_BATCH_POINTS", "max_batch_points", _parse_int, "100000",
            "Most points in one POST /insert.", 1, 1_000_000),
    Setting("MAX_SERIES_NAME_LENGTH", "max_series_name_length", _parse_int, "256",
            "Longest series name in bytes.", 1, 4096),
    Setting("MAX_QUERY_POINTS", "max_query_points", _parse_int, "1000000",
            "Most points one range query may return (400 above: narrow the range).",
            1000, 100_000_000),
    Setting("LMDB_MAP_SIZE_MB", "lmdb_map_size_mb", _parse_int, "1024",
            "Initial LMDB map size; it doubles whenever it fills.", 1, 1 << 24),
    Setting("CLUSTER_PORT_OFFSET", "cluster_port_offset", _parse_int, "1000",
            "Inter-node ports: gossip on the HTTP port plus this, replica traffic on the HTTP "
            "port plus twice this.", 1, 28_000),
    Setting("HEARTBEAT_INTERVAL_MS", "heartbeat_interval_ms", _parse_int, "1000",
            "How often a node publishes its gossip heartbeat.", 50, 60_000),
    Setting("FAILURE_TIMEOUT_MS", "failure_timeout_ms", _parse_int, "4000",
            "Longest silence before a member is marked down (the phi detector may mark it "
            "sooner); taken as at least twice HEARTBEAT_INTERVAL_MS.", 200, 600_000),
    Setting("REPLICA_TIMEOUT_MS", "replica_timeout_ms", _parse_int, "2000",
            "Deadline of one attempt of a message to a peer; then the socket is reopened "
            "(Lazy Pirate).", 50, 600_000),
    Setting("REPLICA_RETRIES", "replica_retries", _parse_int, "1",
            "Attempts after the first before a peer message fails.", 0, 10),
    Setting("MAX_HINT_WINDOW_SECONDS", "max_hint_window_seconds", _parse_int, "10800",
            "Hints are taken for a down replica only while it has been down less than this; "
            "past it, anti-entropy and read repair bring it up to date.", 0, 30 * 86_400),
    Setting("ANTI_ENTROPY_INTERVAL_SECONDS", "anti_entropy_interval_seconds", _parse_int, "60",
            "How often a node compares Merkle digests with each peer it shares ranges with "
            "(0 turns the background job off; POST /cluster/repair still works).",
            0, 30 * 86_400),
    Setting("CLEANUP_INTERVAL_SECONDS", "cleanup_interval_seconds", _parse_int, "10",
            "How often a node deletes series it holds but does not replicate (a stand-in's "
            "leftovers, ranges moved to other nodes), each once its replicas acknowledge "
            "the points; only while every member is up and lists the same members (0: never).",
            0, 30 * 86_400),
    Setting("STREAM_THROUGHPUT_POINTS", "stream_throughput_points", _parse_int, "2000000",
            "Most points per second a node fetches when it gains ranges (joining, or taking "
            "over a leaving member's share); 0: no limit.", 0, 1 << 40),
)

# The original Count read its log filter from RUST_LOG; LOG_LEVEL wins when both are set.
_LOG_ALIASES = ("LOG_LEVEL", "RUST_LOG")


@dataclasses.dataclass(frozen=True)
class Config:
    node_id: int | str
    cluster_enabled: bool
    cluster_nodes: tuple[HostPort, ...]
    replication_factor: int
    bind_address: HostPort
    data_dir: str
    memory_buffer_size: int
    flush_interval_seconds: int
    log_level: str
    http_workers: int
    http_threads: int
    request_timeout_ms: int
    max_body_bytes: int
    max_batch_points: int
    max_series_name_length: int
    max_query_points: int
    lmdb_map_size_mb: int
    cluster_port_offset: int
    heartbeat_interval_ms: int
    failure_timeout_ms: int
    replica_timeout_ms: int
    replica_retries: int
    max_hint_window_seconds: int
    anti_entropy_interval_seconds: int
    cleanup_interval_seconds: int
    stream_throughput_points: int

    def members(self) -> list[str]:
        """The cluster's members as written in CLUSTER_NODES (a single node is its own member)."""
        if not self.cluster_enabled:
            return [str(self.bind_address)]
        return [str(node) for node in self.cluster_nodes]

    def peer_ports(self, http_port: int) -> tuple[int, int]:
        """The (gossip, replica) ports of a node whose HTTP port is ``http_port``."""
        return http_port + self.cluster_port_offset, http_port + 2 * self.cluster_port_offset


def load_config(env: Mapping[str, str]) -> Config:
    """Read every setting from ``env``; raise ConfigError naming the first bad variable."""
    values = {s.field: s.read(env) for s in SETTINGS if s.name != "LOG_LEVEL"}
    log_name = next((name for name in _LOG_ALIASES if name in env), "LOG_LEVEL")
    log_setting = next(s for s in SETTINGS if s.name == "LOG_LEVEL")
    values["log_level"] = dataclasses.replace(log_setting, name=log_name).read(env)
    config = Config(**values)
    if config.cluster_enabled and not config.cluster_nodes:
        raise ConfigError("CLUSTER_NODES: must list the members when CLUSTER_ENABLED=true")
    listed = [str(node) for node in config.cluster_nodes]
    if len(set(listed)) != len(listed):
        raise ConfigError("CLUSTER_NODES: lists a member more than once")
    ports = [config.bind_address.port, *(node.port for node in config.cluster_nodes)]
    if max(ports) + 2 * config.cluster_port_offset > 65535:
        raise ConfigError("CLUSTER_PORT_OFFSET: the inter-node ports would be above 65535")
    return config


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    lines = ["| Variable | Default | Range | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | {default} | {s.range_text()} | {s.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
