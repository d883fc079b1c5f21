"""Write versions: the order that last-write-wins uses to pick between two writes of a point.

A version is a 64-bit hybrid logical clock reading: wall-clock milliseconds (42 bits, until
the year 2109), a logical counter (6 bits) that orders the writes of one millisecond, and a
16-bit tag from the coordinator's node id so that two coordinators never mint the same
version. The coordinator assigns one version per write request; replicas store it unchanged,
so every replica resolves a conflict the same way, and every coordinator observes the
versions it stores, as a hybrid clock does.

Why milliseconds: a client that overwrites a point through another node after its first
write was acknowledged expects the second write to win. Two coordinators only share wall
time, so the physical part must be finer than the time between two such writes; with
seconds, a rewrite within the same second through another node lost to the tag tie-break.
Writes of one coordinator keep their exact order. The counter allows 64 requests per
millisecond per coordinator before the clock runs ahead of wall time (it catches up when
the load drops). The block codec stores a batch's single version in a run, so batches cost
nothing extra; single-point writes pay a few bits per point for the millisecond deltas.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

TAG_BITS = 16
LOGICAL_BITS = 6
_TICK = 1 << TAG_BITS  # one logical step
_MS_SHIFT = TAG_BITS + LOGICAL_BITS
_TAG_MASK = (1 << TAG_BITS) - 1


def node_tag(node_id: int | str) -> int:
    """A stable 16-bit tag for a node id."""
    digest = hashlib.sha256(str(node_id).encode()).digest()
    return int.from_bytes(digest[:2], "big")


def version_ms(version: int) -> int:
    """The wall-clock millisecond a version was minted in (or logically after)."""
    return version >> _MS_SHIFT


class VersionClock:
    """Mints strictly increasing versions for one coordinator."""

    def __init__(self, tag: int, now_ms: Callable[[], int] | None = None) -> None:
        assert 0 <= tag <= _TAG_MASK
        self._tag = tag
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = 0

    def next(self) -> int:
        """A version greater than every version minted or observed so far."""
        physical = self._now_ms() << _MS_SHIFT
        base = max(physical, (self._last & ~_TAG_MASK) + _TICK)
        self._last = base | self._tag
        return self._last

    def observe(self, version: int) -> None:
        """Move past a version seen elsewhere (a WAL replay, a peer), as a hybrid clock does."""
        if version > self._last:
            self._last = version
