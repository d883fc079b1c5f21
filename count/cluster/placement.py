"""Where data goes and where it is looked for: the ring plus who is alive.

A write's series are mapped to their ring ranges in one vectorised lookup; each range's
targets (its live replicas, and a stand-in for each down one) are cached until liveness
changes, so placing a write costs the same however many series it holds. A read asks the
live replicas, the stand-ins of down ones, and every node that advertises hints for a
replica of the series.
"""

from __future__ import annotations

import numpy as np

from count.cluster.context import NodeContext
from count.cluster.ring import sloppy_targets
from count.storage.writes import WriteRequest

Targets = tuple[tuple[str, str | None], ...]  # (node to send to, replica it stands in for)
# One part of a placed write: (node, hint target, points, indices of the groups it serves).
Part = tuple[str, str | None, WriteRequest, list[int]]


# Target tables kept, one per set of live members seen (liveness flaps between a few).
GROUP_TABLES_MAX = 64


class Placement:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._tables: dict[tuple[str, ...], tuple[np.ndarray, list[Targets]]] = {}

    def _range_groups(self) -> tuple[np.ndarray, list[Targets]]:
        """For every ring range, the index of its target set in a list of distinct sets."""
        ctx = self.ctx
        alive = tuple(ctx.membership.alive_members())
        table = self._tables.get(alive)
        if table is None:
            live = set(alive)
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

    def place(self, write: WriteRequest) -> tuple[list[Part], list[int]]:
        """Where each part of a write goes, and the size of each replica group (a distinct
        set of targets that has to reach the write's consistency level)."""
        ctx = self.ctx
        if ctx.single:
            return [(ctx.self_address, None, write, [0])], [1]
        per_range, target_sets = self._range_groups()
        name_set = per_range[ctx.ring.range_indices(write.names)]
        used, name_group = np.unique(name_set, return_inverse=True)
        groups = [target_sets[int(g)] for g in used]
        sizes = [len(targets) for targets in groups]
        if len(groups) == 1:  # one replica set (e.g. one series): every target gets it all
            return [(node, hint, write, [0]) for node, hint in groups[0]], sizes
        by_dest: dict[tuple[str, str | None], list[int]] = {}
        for g, targets in enumerate(groups):
            for dest in targets:
                by_dest.setdefault(dest, []).append(g)
        parts = []
        for (node, hint), member_of in by_dest.items():
            chosen = np.zeros(len(groups), bool)
            chosen[member_of] = True
            parts.append((node, hint, write.subset(chosen[name_group]), member_of))
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
