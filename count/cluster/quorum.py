"""Counting answers: how many replicas a consistency level needs, a write waiting for its
acknowledgements, and a request waiting for several nodes. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from count.messages import CONSISTENCY_LEVELS, Reply


def required(level: str, rf: int) -> int:
    """Acknowledgements a consistency level needs out of ``rf`` replicas."""
    assert level in CONSISTENCY_LEVELS, level
    return {"one": 1, "quorum": rf // 2 + 1, "all": rf}[level]


def once(reply: Reply) -> Reply:
    """``reply``, checked to run at most once (a client is answered exactly once)."""
    answered = [False]

    def checked(status: int, body: Any) -> None:
        assert not answered[0], f"answered twice: {status} {body!r:.80}"
        answered[0] = True
        reply(status, body)
    return checked


class Quorum:
    """One client insert waiting until every replica group has W acknowledgements.

    A write spanning several replica sets has one group per set; the write succeeds when
    every group reached W, and fails as soon as one group can no longer reach it.
    """

    def __init__(self, reply: Reply, groups: list[int], needed: int, level: str, rf: int,
                 points: int) -> None:
        assert needed >= 1 and groups, (needed, groups)
        self.reply = once(reply)
        self.sizes = groups
        self.acks = [0] * len(groups)
        self.fails = [0] * len(groups)
        self.needed = needed
        self.level = level
        self.rf = rf
        self.points = points
        self.done = False
        self.errors: list[tuple[int, str]] = []

    def result(self, groups: list[int], status: int, detail: str) -> None:
        ok = status < 300
        for g in groups:
            if ok:
                self.acks[g] += 1
            else:
                self.fails[g] += 1
            assert self.acks[g] + self.fails[g] <= self.sizes[g], "a replica answered twice"
        if not ok:
            self.errors.append((status, detail))
        if self.done:
            return
        if all(a >= self.needed for a in self.acks):
            self.done = True
            self.reply(201, {"inserted": self.points})
        elif any(size - fail < self.needed for size, fail in zip(self.sizes, self.fails,
                                                                  strict=True)):
            self.done = True
            statuses = {status for status, _ in self.errors}
            # Replicas that all failed the same way (a full disk, 507) report that status.
            status = statuses.pop() if len(statuses) == 1 else 503
            if self.sizes == [1]:
                self.reply(status, self.errors[0][1])
                return
            self.reply(status, f"write reached {min(self.acks)} of {self.rf} replicas but "
                               f"consistency={self.level} needs {self.needed}; points may be "
                               f"stored on some replicas "
                               f"({'; '.join(d for _, d in self.errors[:3])})")


class Gather:
    """Answers from several nodes; ``done`` runs once when every node has answered or failed."""

    def __init__(self, nodes: list[str],
                 done: Callable[[dict[str, Any], dict[str, tuple[int, str]]], None]) -> None:
        self.waiting = set(nodes)
        self.answers: dict[str, Any] = {}
        self.errors: dict[str, tuple[int, str]] = {}
        self._done = done
        if not self.waiting:
            done(self.answers, self.errors)

    def callback(self, node: str) -> Reply:
        def on_result(status: int, body: Any) -> None:
            if node not in self.waiting:
                return
            self.waiting.discard(node)
            if status < 300:
                self.answers[node] = body
            else:
                self.errors[node] = (status, str(body))
            if not self.waiting:
                self._done(self.answers, self.errors)
        return on_result
