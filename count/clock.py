"""Time as an input: the node reads both of its clocks through a ``Clock``.

The monotonic clock times intervals (heartbeats, deadlines, flushes); the wall clock stamps
write versions and hints. The node loop passes ``SystemClock``; the simulation passes clocks
it advances itself, skewed per node, so that one seed replays one run exactly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals only)."""
        ...

    def wall_ms(self) -> int:
        """Unix time in milliseconds (may jump; for versions and ages)."""
        ...


class SystemClock:
    def monotonic_s(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000
