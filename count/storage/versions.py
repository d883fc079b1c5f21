"""Write versions: the order that last-write-wins uses to pick between two writes of a point.

A version is a 64-bit hybrid logical clock reading: wall-clock seconds (34 bits), a logical
counter (14 bits) that orders the writes of one second, and a 16-bit tag from the
coordinator's node id so that two coordinators never mint the same version. The coordinator
assigns one version per write request; replicas store it unchanged, so every replica resolves
a conflict the same way.

Why seconds and a counter rather than milliseconds: consecutive requests of a coordinator
then get consecutive versions (+1 logical step), which the block codec stores in almost no
bits, where millisecond jitter would cost several bits per request in every series. Writes of
one coordinator keep their exact order; two writes of the same point through different
coordinators within one second are ordered by their counters, deterministically, which is
as good as wall clocks of different machines can tell them apart anyway. The counter allows
16,384 requests per second per coordinator before the clock runs ahead of wall time (it
catches up when the load drops).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

TAG_BITS = 16
LOGICAL_BITS = 14
_TICK = 1 << TAG_BITS  # one logical step
_SECONDS_SHIFT = TAG_BITS + LOGICAL_BITS
_TAG_MASK = (1 << TAG_BITS) - 1


def node_tag(node_id: int | str) -> int:
    """A stable 16-bit tag for a node id."""
    digest = hashlib.sha256(str(node_id).encode()).digest()
    return int.from_bytes(digest[:2], "big")


def version_s(version: int) -> int:
    """The wall-clock second a version was minted in (or logically after)."""
    return version >> _SECONDS_SHIFT


class VersionClock:
    """Mints strictly increasing versions for one coordinator."""

    def __init__(self, tag: int, now_ms: Callable[[], int] | None = None) -> None:
        assert 0 <= tag <= _TAG_MASK
        self._tag = tag
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = 0

    def next(self) -> int:
        """A version greater than every version minted or observed so far."""
        physical = (self._now_ms() // 1000) << _SECONDS_SHIFT
        base = max(physical, (self._last & ~_TAG_MASK) + _TICK)
        self._last = base | self._tag
        return self._last

    def observe(self, version: int) -> None:
        """Move past a version seen elsewhere (a WAL replay, a peer), as a hybrid clock does."""
        if version > self._last:
            self._last = version
