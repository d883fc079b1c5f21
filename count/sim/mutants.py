"""Deliberately broken variants of the node, to show what the simulation's checker catches.

``python -m count.sim --mutant NAME`` runs the seeds with one of these applied (by replacing
one method of the node's core in this process only); a checker that finds nothing wrong
with a mutant is a checker that would miss that bug.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from count.cluster.catchup import CatchUp
from count.cluster.cleanup import CLEANUP_SERIES_MAX, Cleanup
from count.cluster.handoff import HandOff
from count.cluster.node import NodeCore
from count.cluster.reads import Reads
from count.cluster.writes import Writes
from count.errors import CountError
from count.messages import ReplicaWrite, Reply
from count.storage.merge import Columns


def _ack_before_commit() -> None:
    """A replica acknowledges a replica write at once and makes it durable only with its
    next heartbeat (as if it acknowledged before its fsync and synced once a second): a
    crash in between loses points the coordinator counted as stored."""
    def serve(self: Writes, msg: ReplicaWrite, reply: Reply) -> None:
        reply(201, None)
        self.__dict__.setdefault("deferred", []).append(msg)

    original_tick = NodeCore.tick

    def tick(self: NodeCore) -> None:
        original_tick(self)
        if self._publish:  # a heartbeat went out this turn
            for msg in self.writes.__dict__.pop("deferred", []):
                self.ctx.write_here(msg.write, msg.hint, lambda status, body: None)

    Writes.serve = serve  # type: ignore[method-assign]
    NodeCore.tick = tick  # type: ignore[method-assign]


def _hint_dropped() -> None:
    """Hand-off forgets a returned replica's hints instead of sending them."""
    def hand_off(self: HandOff, target: str) -> None:
        with contextlib.suppress(CountError):  # a full disk: forgotten at the next try
            self.ctx.hints.delivered(target, self.ctx.hints.take(target, 1 << 30))

    HandOff._hand_off = hand_off  # type: ignore[method-assign]


def _no_read_repair() -> None:
    """Reads answer the merged points without bringing stale replicas up to date."""
    def repair_then(self: Reads, series: str, merged: Columns, answers: dict[str, Columns],
                    counted: set[str], needed: int, answer: Callable[[Columns], None],
                    reply: Reply) -> None:
        answer(merged)

    Reads._repair_then = repair_then  # type: ignore[method-assign]


def _any_answer_counts() -> None:
    """Every node that answered a read counts towards its consistency level, stand-ins and
    nodes catching up included (how reads were counted before this was fixed)."""
    def counts_for_reads(self: CatchUp, address: str) -> bool:
        return True

    original_read = Reads._read

    def read(self: Reads, *args: Any) -> None:
        series = args[0]
        asked, _ = self.placement.read_targets(series)
        original_placement = self.placement.read_targets
        self.placement.read_targets = lambda s: (asked, asked)  # type: ignore[method-assign, assignment]
        try:
            original_read(self, *args)
        finally:
            self.placement.read_targets = original_placement  # type: ignore[method-assign]

    CatchUp.counts_for_reads = counts_for_reads  # type: ignore[method-assign]
    Reads._read = read  # type: ignore[method-assign, assignment]


def _no_catch_up() -> None:
    """A node on a new or wiped store counts for reads at once."""
    original_init = CatchUp.__init__

    def init(self: CatchUp, ctx: Any) -> None:
        original_init(self, ctx)
        self.syncing = False

    CatchUp.__init__ = init  # type: ignore[method-assign]


def _cleanup_without_ack() -> None:
    """Cleanup drops what this node does not replicate without first handing it to the
    replicas (as if it trusted hand-off and anti-entropy to have done it)."""
    def round_(self: Cleanup) -> None:
        storage = self.ctx.replica.storage
        for series in self.candidates()[:CLEANUP_SERIES_MAX]:
            with contextlib.suppress(CountError):
                storage.drop_series(series, storage.series_stamp(series))

    Cleanup._round = round_  # type: ignore[method-assign]


MUTANTS: dict[str, Callable[[], None]] = {
    "ack_before_commit": _ack_before_commit,
    "hint_dropped": _hint_dropped,
    "no_read_repair": _no_read_repair,
    "any_answer_counts": _any_answer_counts,
    "no_catch_up": _no_catch_up,
    "cleanup_without_ack": _cleanup_without_ack,
}


def apply(name: str) -> None:
    """Break this process's node code the named way (KeyError naming the known ones)."""
    if name not in MUTANTS:
        raise KeyError(f"unknown mutant {name!r}; known: {', '.join(MUTANTS)}")
    MUTANTS[name]()
