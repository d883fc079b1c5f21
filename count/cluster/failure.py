"""Phi accrual failure detection (Hayashibara et al., as Cassandra and Akka use it).

Instead of a yes/no timeout, the detector turns the time since a peer's last heartbeat into a
suspicion level, phi: the negative log10 of the chance that a heartbeat that late would still
come, given the intervals seen so far. A peer whose heartbeats are regular is suspected soon
after it falls silent; one whose heartbeats jitter is given the slack its history shows. A
hard timeout caps the wait whatever the statistics say.

The module is pure: the caller passes ``now_s``, a monotonic clock reading in seconds.
"""

from __future__ import annotations

import math
from collections import deque

# The logistic approximation of the standard normal CDF that Akka uses:
# P(X > y) ~= 1 / (1 + exp(y * (A + B * y * y))).
_LOGISTIC_A = 1.5976
_LOGISTIC_B = 0.070566
_LN_10 = math.log(10.0)


def _phi_of(elapsed_s: float, mean_s: float, std_s: float) -> float:
    """-log10 P(an interval exceeds ``elapsed_s``) for a normal(mean_s, std_s) interval."""
    y = (elapsed_s - mean_s) / std_s
    z = y * (_LOGISTIC_A + _LOGISTIC_B * y * y)
    # -log10(1 / (1 + e^z)) = log10(1 + e^z), computed so that neither branch overflows.
    softplus = z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
    return softplus / _LN_10


class PhiAccrualDetector:
    """Judges whether one peer is alive from the arrival times of its heartbeats.

    The history of intervals is bounded (``window``) so it follows a peer whose rhythm
    changes, and is seeded with the expected interval so that one heartbeat is enough to judge.
    Intervals longer than the hard timeout are outages, not rhythm, and are left out: a peer
    back from a long outage must be judged as promptly as before it.
    """

    def __init__(self, *, expected_interval_s: float, failure_timeout_s: float,
                 threshold: float = 8.0, window: int = 100,
                 min_std_s: float | None = None) -> None:
        assert expected_interval_s > 0, expected_interval_s
        assert failure_timeout_s >= expected_interval_s, (failure_timeout_s, expected_interval_s)
        assert threshold > 0, threshold
        assert window >= 1, window
        self.expected_interval_s = expected_interval_s
        self.failure_timeout_s = failure_timeout_s
        self.threshold = threshold
        self.min_std_s = expected_interval_s / 4 if min_std_s is None else min_std_s
        assert self.min_std_s > 0, self.min_std_s
        self.last_heartbeat_s: float | None = None
        self._intervals_s: deque[float] = deque([expected_interval_s], maxlen=window)

    def heartbeat(self, now_s: float) -> None:
        """Record a heartbeat that arrived at ``now_s`` (which must not go backwards)."""
        if self.last_heartbeat_s is not None:
            interval_s = now_s - self.last_heartbeat_s
            assert interval_s >= 0, (now_s, self.last_heartbeat_s)
            if interval_s <= self.failure_timeout_s:
                self._intervals_s.append(interval_s)
        self.last_heartbeat_s = now_s

    def shift(self, seconds: float, now_s: float) -> None:
        """Take up to ``seconds`` off the silence so far (never past ``now_s``): time this
        node itself was stalled, when it could not read a heartbeat, is not the peer's
        silence."""
        assert seconds >= 0, seconds
        if self.last_heartbeat_s is not None:
            self.last_heartbeat_s = min(self.last_heartbeat_s + seconds, now_s)

    def phi(self, now_s: float) -> float:
        """Suspicion that the peer is down; 0.0 before its first heartbeat (nothing to judge)."""
        if self.last_heartbeat_s is None:
            return 0.0
        count = len(self._intervals_s)
        mean_s = sum(self._intervals_s) / count
        variance_s2 = sum((i - mean_s) ** 2 for i in self._intervals_s) / count
        std_s = max(math.sqrt(variance_s2), self.min_std_s)
        return _phi_of(now_s - self.last_heartbeat_s, mean_s, std_s)

    def available(self, now_s: float) -> bool:
        """Whether the peer counts as alive: heard from, not suspected, and within the timeout."""
        if self.last_heartbeat_s is None:
            return False
        if now_s - self.last_heartbeat_s >= self.failure_timeout_s:
            return False
        return self.phi(now_s) < self.threshold
