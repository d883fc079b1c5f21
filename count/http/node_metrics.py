"""The node process's figures as Prometheus metric families: pure translation of the JSON
answers of the Stats and ClusterStatus operations (the bodies of ``/stats`` and
``/cluster/status``), made at scrape time by the worker serving ``/metrics``.

A field missing from an answer leaves its metric out rather than failing the scrape, so an
HTTP worker and a node process of different versions still give what they share. Member
labels are the member's NODE_ID (its address until its first heartbeat names it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Stats fields that only grow while the node process runs: (field, metric, help).
STATS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("points_written", "count_points_written",
     "Points this node stored, as coordinator or replica (hints and repairs included)."),
    ("inserts", "count_inserts", "Insert requests this node coordinated."),
    ("reads", "count_reads", "Read requests (range and aggregate) this node coordinated."),
    ("commits_served", "count_replica_commits",
     "Group commits of writes to this node's storage (one fsync'd WAL append each)."),
    ("wal_appends", "count_wal_appends", "Records appended and fsync'd to the write-ahead log."),
    ("commits", "count_lmdb_commits", "LMDB write transactions committed."),
    ("flushes", "count_buffer_flushes", "Flushes of the memory buffer to on-disk segments."),
    ("block_cache_hits", "count_block_cache_hits", "Reads of a block found in the block cache."),
    ("block_cache_misses", "count_block_cache_misses", "Reads of a block that went to LMDB."),
    ("replica_writes_failed", "count_replica_writes_failed",
     "Writes to a peer replica that failed or timed out."),
    ("hints_stored", "count_hints_stored",
     "Writes kept as a hint for a down replica (one per write request and replica)."),
    ("hinted_points_delivered", "count_hinted_points_delivered",
     "Points of hints handed off to their replica once it was back."),
    ("read_repairs", "count_read_repairs", "Replicas repaired by a read that found them short."),
    ("read_repair_points", "count_read_repair_points", "Points written by read repair."),
    ("writes_refused", "count_writes_refused",
     "Writes refused because this node saw less than a majority of the members alive."),
    ("cleanup_series_dropped", "count_cleanup_series_dropped",
     "Series deleted by cleanup: held here but replicated elsewhere."),
    ("cleanup_points_dropped", "count_cleanup_points_dropped", "Points deleted by cleanup."),
)
# Stats fields that say how things are now: (field, metric, help). Booleans are 1 or 0.
STATS_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("series", "count_series", "Series in this node's storage."),
    ("buffer_points", "count_buffer_points", "Points in the memory buffer (durable in the WAL)."),
    ("segments", "count_segments", "On-disk segments awaiting compaction into blocks."),
    ("blocks", "count_blocks", "Compressed per-series blocks in LMDB."),
    ("tails", "count_tails", "Per-series open tail blocks in LMDB."),
    ("compacting", "count_compacting", "1 while a compaction runs, else 0."),
    ("map_size_bytes", "count_lmdb_map_size_bytes", "LMDB map size (it doubles when it fills)."),
    ("file_bytes", "count_lmdb_file_bytes", "Size of the LMDB data file on disk."),
    ("hints_pending", "count_hints_pending_points",
     "Points this node holds as hints for down replicas, not yet handed off."),
)
# Fields of the last anti-entropy round's report: (field, metric suffix, help).
ROUND_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("ranges_compared", "ranges_compared", "Ring ranges compared with peers."),
    ("ranges_differing", "ranges_differing", "Ranges whose digests differed."),
    ("series_differing", "series_differing", "Series whose points differed."),
    ("points_received", "points_received", "Points received from peers."),
    ("points_sent", "points_sent", "Points sent to peers."),
)
# Fields of a running stream: (field, help).
STREAMING_FIELDS: tuple[tuple[str, str], ...] = (
    ("ranges_done", "Ranges fetched so far in the change in flight."),
    ("ranges_total", "Ranges this node fetches in the change in flight."),
    ("points", "Points fetched so far in the change in flight."),
    ("points_per_s", "Points per second fetched in the change in flight."),
    ("streamed_epoch", "The last topology epoch whose ranges this node fetched in full."),
)
# Ring states of the topology, always exported per member state.
RING_STATES = ("joining", "normal", "leaving", "removing")
# Member states always exported (0 when no member is in it), so that alerts can compare them.
MEMBER_STATES = ("normal", "syncing", "leaving", "unknown")
CLUSTER_STATUSES = ("healthy", "degraded", "unhealthy")


def _number(value: Any) -> float | None:
    """A JSON number or boolean as a float; None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def stats_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """Metric families of a Stats answer."""
    for field, name, help_text in STATS_COUNTERS:
        value = _number(stats.get(field))
        if value is not None:
            yield CounterMetricFamily(name, help_text, value=value)
    for field, name, help_text in STATS_GAUGES:
        value = _number(stats.get(field))
        if value is not None:
            yield _gauge(name, help_text, value)
    anti_entropy = stats.get("anti_entropy")
    if isinstance(anti_entropy, Mapping):
        yield from _anti_entropy_families(anti_entropy)
    streaming = stats.get("streaming")
    if isinstance(streaming, Mapping):
        yield from _streaming_families(streaming)


def _streaming_families(progress: Mapping[str, Any]) -> Iterator[Metric]:
    """A membership change's streaming on this node (``streaming.Streaming.progress``)."""
    yield _gauge("count_streaming_active", "1 while this node fetches ranges it gains in a "
                 "membership change.", float(bool(progress.get("active"))))
    for field, help_text in STREAMING_FIELDS:
        value = _number(progress.get(field))
        if value is not None:
            yield _gauge(f"count_streaming_{field}", help_text, value)


def _anti_entropy_families(progress: Mapping[str, Any]) -> Iterator[Metric]:
    rounds = _number(progress.get("rounds"))
    if rounds is not None:
        yield CounterMetricFamily("count_anti_entropy_rounds", "Anti-entropy rounds finished.",
                                  value=rounds)
    running = _number(progress.get("running"))
    if running is not None:
        yield _gauge("count_anti_entropy_running", "1 while an anti-entropy round runs.", running)
    cached = _number(progress.get("cached_series"))
    if cached is not None:
        yield _gauge("count_anti_entropy_cached_series",
                     "Series whose digests anti-entropy holds cached.", cached)
    for field in ("ranges_done", "ranges_total"):  # only while a round runs
        value = _number(progress.get(field))
        if value is not None:
            yield _gauge(f"count_anti_entropy_running_{field}",
                         f"The running round's {field.replace('_', ' ')}.", value)
    last = progress.get("last")
    if not isinstance(last, Mapping) or not last:
        return
    prefix = "count_anti_entropy_last_round_"
    for field, suffix, help_text in ROUND_FIELDS:
        value = _number(last.get(field))
        if value is not None:
            yield _gauge(prefix + suffix, "The last anti-entropy round: " + help_text, value)
    if isinstance(last.get("errors"), list):
        yield _gauge(prefix + "errors", "The last anti-entropy round: errors.",
                     float(len(last["errors"])))
    if isinstance(last.get("peers"), list):
        yield _gauge(prefix + "peers", "The last anti-entropy round: peers compared.",
                     float(len(last["peers"])))
    duration_ms = _number(last.get("duration_ms"))
    if duration_ms is not None:
        yield _gauge(prefix + "duration_seconds", "The last anti-entropy round: duration.",
                     duration_ms / 1000)


def member_label(member: Mapping[str, Any]) -> str:
    """A member's label value: its NODE_ID, else its address."""
    node_id = member.get("node_id")
    return str(member.get("address")) if node_id is None else str(node_id)


# Per-member fields of ClusterStatus: (field, metric, help).
MEMBER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("alive", "count_member_up", "1 if this node sees the member alive, else 0."),
    ("heartbeat_age_s", "count_member_heartbeat_age_seconds",
     "Seconds since this node last heard the member's heartbeat."),
    ("ownership", "count_member_ownership_ratio",
     "Fraction of the ring the member replicates (they sum to the replication factor)."),
    ("points", "count_member_points", "Points the member holds, as its heartbeat says."),
    ("bytes", "count_member_bytes", "Bytes of the member's LMDB file, as its heartbeat says."),
    ("hints_pending", "count_member_hints_pending_points",
     "Points the member holds as hints, as its heartbeat says."),
)


def cluster_families(status: Mapping[str, Any]) -> Iterator[Metric]:
    """Metric families of a ClusterStatus answer: the cluster as this node sees it."""
    members = [m for m in status.get("members") or () if isinstance(m, Mapping)]
    info = GaugeMetricFamily("count_node_info", "This node's NODE_ID and cluster address.",
                             labels=["node_id", "address"])
    info.add_metric([str(status.get("node_id")), str(status.get("address"))], 1)
    yield info
    yield _gauge("count_cluster_members", "Members in CLUSTER_NODES, this node included.",
                 float(len(members)))
    alive = _number(status.get("cluster_size"))
    if alive is not None:
        yield _gauge("count_cluster_members_alive",
                     "Members this node sees alive, itself included.", alive)
    rf = _number(status.get("replication_factor"))
    if rf is not None:
        yield _gauge("count_cluster_replication_factor",
                     "Copies kept of each series (REPLICATION_FACTOR, at most the members).", rf)
    verdict = status.get("status")
    health = GaugeMetricFamily("count_cluster_status", "1 for this node's verdict on the cluster "
                               "(healthy, degraded or unhealthy), 0 for the others.",
                               labels=["status"])
    known = (verdict,) if isinstance(verdict, str) else ()
    for name in dict.fromkeys((*CLUSTER_STATUSES, *known)):
        health.add_metric([name], float(name == verdict))
    yield health
    if isinstance(status.get("ring"), str):
        ring = GaugeMetricFamily("count_cluster_ring_info", "The digest of the ring this node "
                                 "computes; nodes that agree show the same.", labels=["digest"])
        ring.add_metric([status["ring"]], 1)
        yield ring
    by_state = GaugeMetricFamily("count_cluster_members_by_state",
                                 "Members in each state, as this node sees them.", labels=["state"])
    states = [str(m.get("state")) for m in members]
    for state in dict.fromkeys((*MEMBER_STATES, *states)):
        by_state.add_metric([state], float(states.count(state)))
    yield by_state
    epoch = _number(status.get("epoch"))
    if epoch is not None:
        yield _gauge("count_cluster_epoch", "The topology epoch this node holds (one more per "
                     "membership change).", epoch)
    by_ring = GaugeMetricFamily("count_cluster_members_by_ring_state",
                                "Members in each ring state (joining, normal, leaving, "
                                "removing) in this node's topology.", labels=["state"])
    ring_states = [str(m.get("ring_state")) for m in members if m.get("ring_state")]
    for state in dict.fromkeys((*RING_STATES, *ring_states)):
        by_ring.add_metric([state], float(ring_states.count(state)))
    yield by_ring
    yield from _member_families(members)


def _member_families(members: list[Mapping[str, Any]]) -> Iterator[Metric]:
    member_info = GaugeMetricFamily("count_member_info", "Each member's address; self is 1 for "
                                    "this node.", labels=["member", "address", "self"])
    for member in members:
        member_info.add_metric([member_label(member), str(member.get("address")),
                                "1" if member.get("self") else "0"], 1)
    yield member_info
    for field, name, help_text in MEMBER_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=["member"])
        for member in members:
            value = _number(member.get(field))
            if value is not None:
                family.add_metric([member_label(member)], value)
        yield family
