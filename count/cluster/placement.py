"""Where data goes and where it is looked for: the ring plus who is alive.

A write's series are mapped to their ring ranges in one vectorised lookup; each range's
targets (its live replicas, and a stand-in for each down one) are cached until liveness
or the topology changes, so placing a write costs the same however many series it holds.
While a member joins or leaves, each series also goes to its pending replicas (those the
future ring adds), as Cassandra's pending ranges do: they do not count towards the
consistency level, and one that cannot take it gets a hint. A read asks the live replicas
of the current ring, the stand-ins of down ones, and every node that advertises hints for
a replica of the series.
"""

from __future__ import annotations

import numpy as np

from count.cluster.context import NodeContext
from count.cluster.ring import sloppy_targets
from count.storage.writes import WriteRequest

Targets = tuple[tuple[str, str | None], ...]  # (node to send to, replica it stands in for)
# One part of a placed write: (node, hint target, points, indices of the groups it serves).
Part = tuple[str, str | None, WriteRequest, list[int]]
# Pending sets kept per topology, one per (current range, future range) pair seen.
PENDING_PAIRS_MAX = 1 << 16


# Target tables kept, one per set of live members seen (liveness flaps between a few).
GROUP_TABLES_MAX = 64


class Placement:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._tables: dict[tuple[int, tuple[str, ...]], tuple[np.ndarray, list[Targets]]] = {}
        self._pending_version = -1
        self._pending_pairs: dict[tuple[int, int], int] = {}
        self._pending_sets: dict[tuple[str, ...], int] = {}

    def _range_groups(self) -> tuple[np.ndarray, list[Targets]]:
        """For every ring range, the index of its target set in a list of distinct sets."""
        ctx = self.ctx
        alive = (ctx.version, tuple(ctx.membership.alive_members()))
        table = self._tables.get(alive)
        if table is None:
            live = set(alive[1])
            distinct: dict[Targets, int] = {}
            per_range = np.empty(ctx.ring.ranges(), np.int64)
            for r in range(ctx.ring.ranges()):
                targets = tuple(sloppy_targets(ctx.ring.range_preference(r), ctx.rf,
                                               live.__contains__))
                per_range[r] = distinct.setdefault(targets, len(distinct))
            if len(self._tables) >= GROUP_TABLES_MAX:
                self._tables.clear()
            table = self._tables[alive] = (per_range, list(distinct))
        return table

    def _pending(self, names: list[str]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """Per series, the index of its pending replicas (the future ring's replicas that
        the current ring's lack) in a list of distinct sets; all empty with no change."""
        ctx = self.ctx
        future = ctx.future_ring
        if future is None:
            return np.zeros(len(names), np.int64), [()]
        if self._pending_version != ctx.version or len(self._pending_pairs) >= PENDING_PAIRS_MAX:
            self._pending_version = ctx.version
            self._pending_pairs, self._pending_sets = {}, {(): 0}
        current = ctx.ring.range_indices(names)
        futures = future.range_indices(names)
        pairs, name_pair = np.unique(current * future.ranges() + futures, return_inverse=True)
        codes = np.empty(len(pairs), np.int64)
        for i, pair in enumerate(pairs.tolist()):
            key = divmod(pair, future.ranges())
            code = self._pending_pairs.get(key)
            if code is None:
                now = ctx.ring.range_preference(key[0])[:ctx.rf]
                later = future.range_preference(key[1])[:ctx.future_rf]
                pending = tuple(m for m in later if m not in now)
                code = self._pending_pairs[key] = self._pending_sets.setdefault(
                    pending, len(self._pending_sets))
            codes[i] = code
        return codes[name_pair], list(self._pending_sets)

    def place(self, write: WriteRequest) -> tuple[list[Part], list[int]]:
        """Where each part of a write goes, and the size of each replica group (a distinct
        set of targets that has to reach the write's consistency level). A part lists the
        groups it counts for: none for a pending replica."""
        ctx = self.ctx
        if ctx.single:
            return [(ctx.self_address, None, write, [0])], [1]
        per_range, target_sets = self._range_groups()
        pending, pending_sets = self._pending(write.names)
        width = len(pending_sets)
        codes = per_range[ctx.ring.range_indices(write.names)] * width + pending
        used, name_group = np.unique(codes, return_inverse=True)
        groups = [(target_sets[int(u) // width], pending_sets[int(u) % width]) for u in used]
        sizes = [len(targets) for targets, _ in groups]
        if len(groups) == 1:  # one replica set (e.g. one series): every target gets it all
            targets, later = groups[0]
            return ([(node, hint, write, [0]) for node, hint in targets]
                    + [(node, None, write, []) for node in later]), sizes
        by_dest: dict[tuple[str, str | None], tuple[list[int], list[int]]] = {}
        for g, (targets, later) in enumerate(groups):
            for dest in targets:
                by_dest.setdefault(dest, ([], []))[0].append(g)
            for node in later:
                by_dest.setdefault((node, None), ([], []))[1].append(g)
        parts = []
        for (node, hint), (counted, extra) in by_dest.items():
            chosen = np.zeros(len(groups), bool)
            chosen[counted + extra] = True
            parts.append((node, hint, write.subset(chosen[name_group]), counted))
        return parts, sizes

    def replicas(self, series: str) -> list[str]:
        ctx = self.ctx
        if ctx.single:
            return [ctx.self_address]
        return ctx.ring.range_preference(ctx.ring.range_index(series))[:ctx.rf]

    def read_targets(self, series: str) -> tuple[list[str], list[str]]:
        """(nodes to ask, the series' replicas): live replicas, stand-ins of down ones, and
        any node holding hints for one of its replicas."""
        ctx = self.ctx
        if ctx.single:
            return [ctx.self_address], [ctx.self_address]
        preference = ctx.ring.range_preference(ctx.ring.range_index(series))
        replicas = preference[:ctx.rf]
        asked = [node for node, _ in sloppy_targets(preference, ctx.rf, ctx.alive)]
        holders = ctx.membership.hints_held()
        holders[ctx.self_address] = ctx.hints.pending()
        for holder, targets in holders.items():
            if holder not in asked and ctx.alive(holder) and any(t in replicas for t in targets):
                asked.append(holder)
        return asked, replicas
