"""Any node coordinates: it places writes on the ring, fans them out, counts quorums, and
answers reads from every replica with blocking read repair.

The coordinator never waits: each client request becomes a small pending object whose
callbacks the peer channels run as replies arrive, and the node process's loop calls
``finish_turn`` once per turn so that every write that has to land on this node in that
turn (the local replica of client inserts, peers' replica writes, hints, repairs) shares
one commit. A single node is a cluster of one: every series maps to it and no message
leaves the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lmdb
import msgpack
import numpy as np

from count.cluster.antientropy import AntiEntropy
from count.cluster.channel import PeerChannel
from count.cluster.hints import Hint, HintLog
from count.cluster.membership import Membership
from count.cluster.merkle import newer_points
from count.cluster.replication import (
    CONSISTENCY_LEVELS, Gather, Quorum, Reply, columns_of, merge_writes, points_body, required,
    subset, write_args,
)
from count.cluster.ring import Ring, sloppy_targets
from count.cluster.wire import Op, Result
from count.config import Config
from count.errors import BadRequest, CountError, Unavailable
from count.replica import LocalReplica, decode_insert
from count.storage.aggregate import AGGREGATIONS, aggregate, aggregate_buckets
from count.storage.engine import WriteRequest
from count.storage.merge import Columns, merge_sorted

log = logging.getLogger("count.cluster")

SERIES_LIMIT_MAX = 100_000
# Hand-off sends at most this many series or points per message to a returned replica.
HANDOFF_SERIES_MAX = 256
HANDOFF_POINTS_MAX = 200_000
HANDOFF_RETRY_S = 1.0
# A hinted range is read whole (then sent in slices); this bounds that read.
HINT_RANGE_POINTS_MAX = 1 << 31
# Replication failures of one peer are logged at most once per this many seconds.
WARN_EVERY_S = 5.0
# Rounds of commit -> callbacks in one turn (a read's repair of this node is the second).
TURN_ROUNDS_MAX = 4
MEMBER_IDS_KEY = b"member_ids"


def _level(args: dict[str, Any], default: str) -> str:
    level = args.get("consistency") or default
    if level not in CONSISTENCY_LEVELS:
        raise BadRequest(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
    return level


def _int_arg(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int):
        raise BadRequest(f"malformed request: {key} must be an integer")
    return value


class Coordinator:
    def __init__(self, config: Config, replica: LocalReplica, ring: Ring, membership: Membership,
                 channels: dict[str, PeerChannel], hints: HintLog, self_address: str) -> None:
        self.config = config
        self.replica = replica
        self.ring = ring
        self.membership = membership
        self.channels = channels
        self.hints = hints
        self.self_address = self_address
        self.rf = min(config.replication_factor, len(ring.members))
        self.single = len(ring.members) == 1
        self._writes: list[tuple[WriteRequest, str | None, Reply]] = []
        self._after_commit: list[Callable[[], None]] = []
        self._handoff_busy: set[str] = set()
        self._handoff_next_s = 0.0
        self._warned_s: dict[str, float] = {}
        self._groups_alive: tuple[str, ...] | None = None
        self._groups: tuple[np.ndarray, list[tuple[tuple[str, str | None], ...]]] = (
            np.empty(0, np.int64), [])
        with replica.storage.env.begin() as txn:
            known = txn.get(MEMBER_IDS_KEY, db=replica.storage.db["meta"])
        self.member_ids: dict[str, int | str] = msgpack.unpackb(known) if known else {}
        self.anti_entropy = AntiEntropy(self)
        self.counters = {"inserts": 0, "reads": 0, "replica_writes_failed": 0,
                         "hints_stored": 0, "hinted_points_delivered": 0,
                         "read_repairs": 0, "read_repair_points": 0, "writes_refused": 0}
        self._local_ops: dict[str, Callable[[dict[str, Any], Reply], None]] = {
            "insert": self._insert,
            "range": self._range,
            "aggregate": self._range,
            "series": self._series,
            "health": self._health,
            "stats": self._stats,
            "endpoints": self._endpoints,
            "cluster_status": self._cluster_status,
            "repair": self.anti_entropy.start_now,
        }
        self._peer_ops: dict[str, Callable[[dict[str, Any], Reply], None]] = {
            "write": self._peer_write,
            "read": self._peer_read,
            "series": self._peer_series,
            **self.anti_entropy.peer_ops(),
        }

    # -- the turn --------------------------------------------------------------------------

    def accept_local(self, op: str, args: dict[str, Any], reply: Reply) -> None:
        """A request from an HTTP worker; ``reply`` runs exactly once, now or later."""
        handler = self._local_ops.get(op)
        if handler is None:
            reply(400, f"unknown operation {op!r}")
            return
        self._guard(handler, args, reply, op)

    def accept_peer(self, ops: list[Op], answer: Callable[[list[Result]], None]) -> None:
        """A peer's message; ``answer`` runs with one result per operation once all are done."""
        results: list[Result | None] = [None] * len(ops)
        remaining = [len(ops)]

        def slot(i: int) -> Reply:
            def put(status: int, body: Any) -> None:
                results[i] = (status, body)
                remaining[0] -= 1
                if remaining[0] == 0:
                    answer(results)  # type: ignore[arg-type]
            return put

        if not ops:
            answer([])
        for i, (op, args) in enumerate(ops):
            handler = self._peer_ops.get(op)
            if handler is None:
                slot(i)(400, f"unknown peer operation {op!r}")
            else:
                self._guard(handler, args, slot(i), op)

    def _guard(self, handler: Callable[[dict[str, Any], Reply], None], args: dict[str, Any],
               reply: Reply, op: str) -> None:
        try:
            handler(args, reply)
        except CountError as exc:
            reply(exc.status, str(exc))
        except Exception:
            log.exception("Query failed: %s", op)
            reply(500, "internal error; see the node's log")

    def after_commit(self, thunk: Callable[[], None]) -> None:
        """Run ``thunk`` once this turn's writes are committed (reads see this turn's writes)."""
        self._after_commit.append(thunk)

    def finish_turn(self) -> None:
        """Commit every write queued this turn at once, then run what waited for it."""
        for _ in range(TURN_ROUNDS_MAX):
            if not self._writes and not self._after_commit:
                return
            writes, self._writes = self._writes, []
            if writes:
                self._commit(writes)
            thunks, self._after_commit = self._after_commit, []
            for thunk in thunks:
                try:
                    thunk()
                except Exception:
                    log.exception("Query failed after commit")

    def _commit(self, writes: list[tuple[WriteRequest, str | None, Reply]]) -> None:
        status, body = self.replica.commit([w for w, _, _ in writes])
        hinted = [(hint, w) for w, hint, _ in writes if hint is not None]
        if status < 300 and hinted:
            try:
                self.hints.add(hinted, time.time())
                self.counters["hints_stored"] += len(hinted)
            except CountError as exc:
                status, body = exc.status, str(exc)
        for _, _, reply in writes:
            reply(status, body)

    def write_here(self, write: WriteRequest, hint: str | None, reply: Reply) -> None:
        """Queue a write to this node's replica for this turn's commit."""
        self._writes.append((write, hint, reply))

    # -- placement -------------------------------------------------------------------------

    def alive(self, address: str) -> bool:
        return self.membership.alive(address)

    def _range_groups(self) -> tuple[np.ndarray, list[tuple[tuple[str, str | None], ...]]]:
        """For every ring range, the index of its targets (replicas, or stand-ins for down
        ones) in a list of distinct target sets; recomputed only when liveness changes, so
        placing a write is one vectorised lookup however many series it holds."""
        alive = tuple(self.membership.alive_members())
        if alive != self._groups_alive:
            distinct: dict[tuple[tuple[str, str | None], ...], int] = {}
            per_range = np.empty(self.ring.ranges(), np.int64)
            for r in range(self.ring.ranges()):
                targets = tuple(sloppy_targets(self.ring.range_preference(r), self.rf,
                                               self.alive))
                per_range[r] = distinct.setdefault(targets, len(distinct))
            self._groups = (per_range, list(distinct))
            self._groups_alive = alive
        return self._groups

    def _placement(self, write: WriteRequest) -> tuple[list[tuple[str, str | None, WriteRequest, list[int]]], list[int]]:
        """Where each part of a write goes: (node, hint target, points, replica groups) and
        the size of each group (a distinct set of targets that has to reach W)."""
        if self.single:
            return [(self.self_address, None, write, [0])], [1]
        per_range, target_sets = self._range_groups()
        name_set = per_range[self.ring.range_indices(write.names)]
        used, name_group = np.unique(name_set, return_inverse=True)
        groups = [target_sets[int(g)] for g in used]
        sizes = [len(targets) for targets in groups]
        if len(groups) == 1:  # one replica set (e.g. one series): every target gets it all
            return [(node, hint, write, [0]) for node, hint in groups[0]], sizes
        by_dest: dict[tuple[str, str | None], list[int]] = {}
        for g, targets in enumerate(groups):
            for dest in targets:
                by_dest.setdefault(dest, []).append(g)
        parts = [(node, hint, subset(write, np.isin(name_group, member_of)), member_of)
                 for (node, hint), member_of in by_dest.items()]
        return parts, sizes

    def send_write(self, node: str, write: WriteRequest, hint: str | None, reply: Reply) -> None:
        """Write to one node (this one or a peer); a failed replica write leaves a hint here.

        ``hint`` names the replica a stand-in writes for. Past that replica's hint window the
        stand-in still takes the points (they count for the write) but keeps no hint: the
        live replicas and anti-entropy repair the replica when it is back."""
        stands_for = hint
        if hint is not None and not self.hint_allowed(hint):
            hint = None
        if node == self.self_address:
            self.write_here(write, hint, reply)
            return

        def on_result(status: int, body: Any) -> None:
            if status >= 300:
                self.counters["replica_writes_failed"] += 1
                target = stands_for or node
                self._warn(node, f"Replication to node {self.name_of(node)} failed: {body}")
                if status in (503, 507) and self.hint_allowed(target):
                    self.write_here(write, target, lambda s, b: None)
            reply(status, body)

        self.channels[node].submit("write", write_args(write, hint), on_result)

    def hint_allowed(self, target: str) -> bool:
        window_s = self.config.max_hint_window_seconds
        down = self.membership.down_since_s(target)
        return window_s > 0 and (down is None or time.monotonic() - down < window_s)

    # -- client operations -----------------------------------------------------------------

    def _insert(self, args: dict[str, Any], reply: Reply) -> None:
        level = _level(args, "quorum")
        write = decode_insert(args, self.replica.clock.next())
        if not self.membership.has_majority():
            self.counters["writes_refused"] += 1
            raise Unavailable(
                f"network partition: this node sees {self.membership.alive_count()} of "
                f"{self.membership.size} members alive, fewer than a majority, so it refuses "
                "writes; send them to a node on the majority side")
        parts, sizes = self._placement(write)
        if level == "all":
            # ALL means every real replica, as in Cassandra: a stand-in still takes the
            # points and a hint, but does not count.
            sizes = [0] * len(sizes)
            for _, hint, _, groups in parts:
                for g in groups if hint is None else ():
                    sizes[g] += 1
            parts = [(node, hint, part, groups if hint is None else [])
                     for node, hint, part, groups in parts]
        needed = required(level, self.rf)
        if min(sizes) < needed:
            raise Unavailable(f"only {min(sizes)} of {self.rf} replicas are reachable but "
                              f"consistency={level} needs {needed}")
        self.counters["inserts"] += 1
        quorum = Quorum(reply, sizes, needed, level, self.rf, len(write.ts))
        for node, hint, part, groups in parts:
            self.send_write(node, part, hint, self._ack(quorum, groups, node))

    def _ack(self, quorum: Quorum, groups: list[int], node: str) -> Reply:
        def on_result(status: int, body: Any) -> None:
            detail = str(body) if node == self.self_address else f"node {self.name_of(node)}: {body}"
            quorum.result(groups, status, detail)
        return on_result

    def read_targets(self, series: str) -> tuple[list[str], list[str]]:
        """(nodes to ask, the series' replicas): live replicas, substitutes of down ones, and
        any node holding hints for one of its replicas."""
        if self.single:
            return [self.self_address], [self.self_address]
        preference = self.ring.range_preference(self.ring.range_index(series))
        replicas = preference[:self.rf]
        asked = [node for node, _ in sloppy_targets(preference, self.rf, self.alive)]
        holders = dict(self.membership.hints_held())
        holders[self.self_address] = self.hints.pending()
        for holder, targets in holders.items():
            if holder not in asked and self.alive(holder) and any(t in replicas for t in targets):
                asked.append(holder)
        return asked, replicas

    def _range(self, args: dict[str, Any], reply: Reply) -> None:
        series = args.get("series")
        if not isinstance(series, str):
            raise BadRequest("malformed request: series")
        start, end = _int_arg(args, "start"), _int_arg(args, "end")
        how = args.get("aggregation")
        interval = args.get("interval")
        if how is not None and how not in AGGREGATIONS:
            raise BadRequest(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise BadRequest("interval must be a positive integer (milliseconds)")
        level = _level(args, "one")
        self.counters["reads"] += 1

        def answer(cols: Columns) -> None:
            if how is None:
                reply(200, points_body(cols, versions=False))
            elif interval is None:
                reply(200, {"value": aggregate(cols.val, how)})
            else:
                starts, values, counts = aggregate_buckets(cols.ts, cols.val, how, interval)
                reply(200, {"ts": starts.tobytes(), "val": values.tobytes(),
                            "count": counts.tobytes()})

        self.read(series, start, end, level, answer, reply)

    def read(self, series: str, start: int, end: int, level: str,
             answer: Callable[[Columns], None], reply: Reply) -> None:
        """Read a series from every node that may hold it, merge, repair stale replicas, answer."""
        asked, replicas = self.read_targets(series)
        needed = required(level, self.rf)

        def done(answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            bad = [e for e in errors.values() if e[0] == 400]
            if bad:
                reply(*bad[0])
                return
            got = [node for node in asked if node in answers]
            counted = [n for n in got if n in replicas] if level == "all" else got
            if len(counted) < needed:
                detail = "; ".join(f"node {self.name_of(n)}: {m}" for n, (_, m) in errors.items())
                log.warning("Query failed: %s read reached %d of %d nodes (%s)", series,
                            len(got), len(asked), detail)
                reply(503, f"read reached {len(got)} of {len(asked)} nodes but "
                           f"consistency={level} needs {needed} ({detail})")
                return
            try:
                parts = [columns_of(answers[node]) for node in got]
            except CountError as exc:
                reply(exc.status, str(exc))
                return
            merged = merge_sorted(parts)
            if len(merged) > self.config.max_query_points:
                reply(400, f"the range holds more than {self.config.max_query_points} points: "
                           "narrow it (MAX_QUERY_POINTS)")
                return
            self._repair_then(series, merged, {n: p for n, p in zip(got, parts, strict=True)
                                               if n in replicas}, answer)

        gather = Gather(asked, done)
        for node in asked:
            self.ask(node, "read", {"series": series, "start": start, "end": end},
                     gather.callback(node))

    def _repair_then(self, series: str, merged: Columns, answers: dict[str, Columns],
                     answer: Callable[[Columns], None]) -> None:
        """Bring every replica that answered short or stale up to ``merged``, then answer."""
        repairs = [(node, newer_points(merged, cols)) for node, cols in answers.items()]
        repairs = [(node, diff) for node, diff in repairs if len(diff)]
        if not repairs:
            answer(merged)
            return
        self.counters["read_repairs"] += len(repairs)

        def repaired(_answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            for node, (_, message) in errors.items():
                log.warning("Read repair of %s on node %s failed: %s", series, self.name_of(node),
                            message)
            answer(merged)

        gather = Gather([node for node, _ in repairs], repaired)
        for node, diff in repairs:
            self.counters["read_repair_points"] += len(diff)
            log.debug("Read repair of %s: %d points to node %s", series, len(diff),
                      self.name_of(node))
            write = WriteRequest([series], np.zeros(len(diff), np.uint32), diff.ts, diff.val,
                                 diff.ver)
            self.send_write(node, write, None, gather.callback(node))

    def ask(self, node: str, op: str, args: dict[str, Any], reply: Reply) -> None:
        """Run a peer operation on ``node``: this node after the commit, or over its channel."""
        if node == self.self_address:
            self.after_commit(lambda: self._guard(self._peer_ops[op], args, reply, op))
        elif not self.alive(node):
            reply(503, f"node {self.name_of(node)} is down")
        else:
            self.channels[node].submit(op, args, reply)

    def _series(self, args: dict[str, Any], reply: Reply) -> None:
        prefix = args.get("prefix", "")
        limit = args.get("limit", 1000)
        if not isinstance(prefix, str) or not isinstance(limit, int) or not 1 <= limit <= SERIES_LIMIT_MAX:
            raise BadRequest(f"prefix must be text and limit 1..{SERIES_LIMIT_MAX}")
        nodes = [m for m in self.ring.members if self.alive(m)]

        def done(answers: dict[str, Any], errors: dict[str, tuple[int, str]]) -> None:
            names: set[str] = set()
            for listed in answers.values():
                if isinstance(listed, list):
                    names.update(n for n in listed if isinstance(n, str))
            if errors:
                log.warning("Query failed: series list missed %d nodes (%s)", len(errors),
                            "; ".join(m for _, m in errors.values()))
            reply(200, sorted(names)[:limit])

        gather = Gather(nodes, done)
        for node in nodes:
            self.ask(node, "series", {"prefix": prefix, "limit": limit}, gather.callback(node))

    def _health(self, args: dict[str, Any], reply: Reply) -> None:
        reply(200, {"status": self.membership.health(), "node_id": self.config.node_id,
                    "cluster_size": self.membership.alive_count()})

    def _stats(self, args: dict[str, Any], reply: Reply) -> None:
        stats = self.replica.stats()
        stats.update(self.counters, hints_pending=sum(self.hints.pending().values()),
                     anti_entropy=self.anti_entropy.progress())
        reply(200, stats)

    def name_of(self, address: str) -> int | str:
        """A member as operators know it: its NODE_ID, else its address."""
        node_id = self.membership.node_id(address)
        if node_id is None:
            node_id = self.member_ids.get(address)
        return address if node_id is None else node_id

    def learn_id(self, address: str, node_id: int | str | None) -> None:
        """Remember a member's NODE_ID (from its heartbeat) across restarts, so that
        endpoints and status name a member by id even before it is heard from again."""
        if node_id is None or self.member_ids.get(address) == node_id:
            return
        self.member_ids[address] = node_id
        packed = msgpack.packb(self.member_ids)

        def body(txn: lmdb.Transaction) -> None:
            txn.put(MEMBER_IDS_KEY, packed, db=self.replica.storage.db["meta"])

        try:
            self.replica.storage.transact(body)
        except CountError as exc:
            log.warning("Could not record the id of node %s: %s", node_id, exc)

    def _endpoints(self, args: dict[str, Any], reply: Reply) -> None:
        series = args.get("series")
        if not isinstance(series, str):
            raise BadRequest("malformed request: series")
        reply(200, {"series": series,
                    "replicas": [self.name_of(a) for a in self.ring.replicas(series, self.rf)]})

    def load(self) -> dict[str, Any]:
        """What this node's heartbeat says about it."""
        return {"points": self.replica.storage.points_estimate(),
                "bytes": self.replica.storage.file_bytes(), "hints": self.hints.pending()}

    def _cluster_status(self, args: dict[str, Any], reply: Reply) -> None:
        now = time.monotonic()
        members = []
        own = self.load()
        for view in self.membership.view(now):
            load = own if view.is_self else view.load
            members.append({
                "node_id": view.node_id, "address": view.address, "state": view.state,
                "alive": view.alive, "self": view.is_self,
                "heartbeat_age_s": None if view.heartbeat_age_s is None
                else round(view.heartbeat_age_s, 3),
                "points": load.get("points"), "bytes": load.get("bytes"),
                "hints_pending": sum(load.get("hints", {}).values()),
            })
        reply(200, {"node_id": self.config.node_id, "address": self.self_address,
                    "status": self.membership.health(),
                    "cluster_size": self.membership.alive_count(),
                    "replication_factor": self.rf,
                    "ring": self.ring.digest(), "members": members})

    # -- operations peers ask of this node ------------------------------------------------

    def _peer_write(self, args: dict[str, Any], reply: Reply) -> None:
        hint = args.get("hint")
        if hint is not None and hint not in self.ring.members:
            raise BadRequest(f"hint for unknown member {hint!r}")
        self.write_here(decode_insert(args, None), hint, reply)

    def _peer_read(self, args: dict[str, Any], reply: Reply) -> None:
        series = args.get("series")
        if not isinstance(series, str):
            raise BadRequest("malformed request: series")
        cols = self.replica.read(series, _int_arg(args, "start"), _int_arg(args, "end"))
        reply(200, points_body(cols, versions=True))

    def _peer_series(self, args: dict[str, Any], reply: Reply) -> None:
        prefix, limit = args.get("prefix"), args.get("limit")
        if not isinstance(prefix, str) or not isinstance(limit, int) or not 1 <= limit <= SERIES_LIMIT_MAX:
            raise BadRequest("malformed series request")
        reply(200, self.replica.list_series(prefix, limit))

    # -- background work -------------------------------------------------------------------

    def on_member_down(self, address: str) -> None:
        channel = self.channels.get(address)
        if channel is not None:
            channel.fail_all(f"node {self.name_of(address)} is down")

    def background(self, now_s: float) -> None:
        """Hand hints to replicas that are back, and run anti-entropy when due."""
        if now_s >= self._handoff_next_s:
            self._handoff_next_s = now_s + HANDOFF_RETRY_S
            for target in self.hints.targets():
                if target not in self._handoff_busy and self.alive(target):
                    self._hand_off(target)
        self.anti_entropy.step(now_s)

    def _hand_off(self, target: str) -> None:
        """Send a returned replica the next HANDOFF_POINTS_MAX points of its hints; a hint
        larger than that goes in slices, each acknowledged slice moving the hint's start."""
        sent: list[tuple[str, Hint]] = []
        sliced: tuple[str, Hint, int, int] | None = None  # series, hint, next start, points
        parts: list[WriteRequest] = []
        points = 0
        for series, hint in self.hints.take(target, HANDOFF_SERIES_MAX):
            cols = self.replica.storage.read(series, hint.min_ts, hint.max_ts,
                                             HINT_RANGE_POINTS_MAX)
            budget = HANDOFF_POINTS_MAX - points
            if len(cols) > budget:
                sliced = (series, hint, int(cols.ts[budget]), budget)
                cols = Columns(cols.ts[:budget], cols.val[:budget], cols.ver[:budget])
            else:
                sent.append((series, hint))
            if len(cols):
                parts.append(WriteRequest([series], np.zeros(len(cols), np.uint32), cols.ts,
                                          cols.val, cols.ver))
                points += len(cols)
            if sliced is not None:
                break
        if not sent and sliced is None:
            return
        self._handoff_busy.add(target)

        def on_result(status: int, body: Any) -> None:
            self._handoff_busy.discard(target)
            if status >= 300:
                self._warn(target, f"Hinted handoff to node {self.name_of(target)} failed: {body}")
                return
            self.hints.delivered(target, sent)
            if sliced is not None:
                self.hints.advance(target, *sliced)
            self.counters["hinted_points_delivered"] += points
            log.info("Hinted handoff to node %s: %d points of %d series delivered",
                     self.name_of(target), points, len(sent) + (sliced is not None))

        if not parts:
            on_result(201, None)
            return
        self.channels[target].submit("write", write_args(merge_writes(parts), None), on_result)

    def _warn(self, node: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_s.get(node, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned_s[node] = now
            log.warning("%s", message)
