"""Hinted hand-off: the points this node holds for a replica that was down go to it once it
is back, re-read from storage so they keep their write versions.

At most one hand-off message per target is in flight; a hint larger than one message goes in
slices, each acknowledged slice moving the hint's start. A hint is deleted only if no point
was added to it since it was sent.
"""

from __future__ import annotations

import logging
from typing import Any

from count.cluster.context import NodeContext
from count.cluster.hints import Hint
from count.errors import CountError
from count.messages import ReplicaWrite
from count.storage.merge import Columns
from count.storage.writes import WriteRequest, join, single_series

log = logging.getLogger("count.cluster")

# Hand-off sends at most this many series or points per message to a returned replica.
HANDOFF_SERIES_MAX = 256
HANDOFF_POINTS_MAX = 200_000
HANDOFF_RETRY_S = 1.0
# Hints for a member that has left are dropped, this many series at a time.
HINTS_DROP_MAX = 1 << 30
# A hinted range is read whole (then sent in slices); this bounds that read.
HINT_RANGE_POINTS_MAX = 1 << 31


class HandOff:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._busy: set[str] = set()
        self._next_s = 0.0

    def step(self, now_s: float) -> None:
        """Hand hints to the replicas that are back (every HANDOFF_RETRY_S)."""
        if now_s < self._next_s:
            return
        self._next_s = now_s + HANDOFF_RETRY_S
        for target in self.ctx.hints.targets():
            if self.ctx.topology.state(target) == "left":
                # It left the ring: its ranges went to their new owners, which got these
                # points as pending replicas or stream; this node's copies go by cleanup.
                self.ctx.hints.delivered(target, self.ctx.hints.take(target, HINTS_DROP_MAX))
            elif target not in self._busy and target in self.ctx.links and self.ctx.alive(target):
                self._hand_off(target)

    def next_wake_s(self) -> float | None:
        return self._next_s if self.ctx.hints.targets() else None

    def _hand_off(self, target: str) -> None:
        """Send a returned replica the next HANDOFF_POINTS_MAX points of its hints."""
        ctx = self.ctx
        sent: list[tuple[str, Hint]] = []
        sliced: tuple[str, Hint, int, int] | None = None  # series, hint, next start, points
        parts: list[WriteRequest] = []
        points = 0
        for series, hint in ctx.hints.take(target, HANDOFF_SERIES_MAX):
            cols = ctx.replica.storage.read(series, hint.min_ts, hint.max_ts,
                                            HINT_RANGE_POINTS_MAX)
            budget = HANDOFF_POINTS_MAX - points
            if len(cols) > budget:
                sliced = (series, hint, int(cols.ts[budget]), budget)
                cols = Columns(cols.ts[:budget], cols.val[:budget], cols.ver[:budget])
            else:
                sent.append((series, hint))
            if len(cols):
                parts.append(single_series(series, cols.ts, cols.val, cols.ver))
                points += len(cols)
            if sliced is not None:
                break
        if not sent and sliced is None:
            return
        self._busy.add(target)

        def on_result(status: int, body: Any) -> None:
            self._busy.discard(target)
            if status >= 300:
                ctx.warn(target, f"Hinted handoff to node {ctx.name_of(target)} failed: {body}")
                return
            try:
                ctx.hints.delivered(target, sent)
                if sliced is not None:
                    ctx.hints.advance(target, *sliced)
            except CountError as exc:  # a full disk: they are sent again (harmless)
                ctx.warn(target, f"Hinted handoff to node {ctx.name_of(target)}: could not "
                                 f"record the delivery ({exc}); the hints will be sent again")
                return
            ctx.counters["hinted_points_delivered"] += points
            log.info("Hinted handoff to node %s: %d points of %d series delivered",
                     ctx.name_of(target), points, len(sent) + (sliced is not None))

        if not parts:
            on_result(201, None)
            return
        ctx.ask(target, ReplicaWrite(join(parts), None), on_result)
