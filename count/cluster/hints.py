"""Hints: the durable note that this node holds points a down replica has not received.

A node that takes a write for a replica that is down (sloppy quorum), or a coordinator whose
replica write failed, stores the points in its own storage, where reads find them at once,
and records here, per (replica, series), the time range and point count to hand off. The
record lives in the node's LMDB environment, so it survives a restart; hand-off re-reads the
range from storage, so delivering it twice is harmless (points keep their write versions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import msgpack
import numpy as np

from count.storage.engine import Storage
from count.storage.writes import WriteRequest


@dataclasses.dataclass
class Hint:
    min_ts: int
    max_ts: int
    points: int
    created_s: float
    revision: int  # bumped by every addition; hand-off deletes only what it delivered

    def pack(self) -> bytes:
        return msgpack.packb([self.min_ts, self.max_ts, self.points, self.created_s,
                              self.revision])


def _key(target: str, series: str) -> bytes:
    return target.encode() + b"\0" + series.encode()


def series_extents(write: WriteRequest) -> list[tuple[str, int, int, int]]:
    """(series, min ts, max ts, points) of each series a write touches."""
    count = np.bincount(write.idx, minlength=len(write.names))
    low = np.full(len(write.names), np.iinfo(np.int64).max, np.int64)
    high = np.full(len(write.names), np.iinfo(np.int64).min, np.int64)
    np.minimum.at(low, write.idx, write.ts)
    np.maximum.at(high, write.idx, write.ts)
    return [(write.names[i], int(low[i]), int(high[i]), int(count[i]))
            for i in np.flatnonzero(count)]


class HintLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._hints: dict[str, dict[str, Hint]] = {}
        for key, value in storage.hint_records():
            target, _, series = key.partition(b"\0")
            self._hints.setdefault(target.decode(), {})[series.decode()] = Hint(
                *msgpack.unpackb(value))
        self._totals = {target: sum(h.points for h in table.values())
                        for target, table in self._hints.items()}
        self.added = 0
        self.delivered_points = 0

    def add(self, items: Iterable[tuple[str, WriteRequest]], now_s: float) -> None:
        """Record hints for writes (target, write) that were just committed; one transaction."""
        changed: dict[bytes, Hint] = {}
        for target, write in items:
            table = self._hints.setdefault(target, {})
            for series, low, high, points in series_extents(write):
                hint = table.get(series)
                if hint is None:
                    hint = table[series] = Hint(low, high, 0, now_s, 0)
                hint.min_ts, hint.max_ts = min(hint.min_ts, low), max(hint.max_ts, high)
                hint.points += points
                hint.revision += 1
                self._totals[target] = self._totals.get(target, 0) + points
                changed[_key(target, series)] = hint
        if not changed:
            return
        self.storage.update_hints({key: hint.pack() for key, hint in changed.items()}, [])
        self.added += len(changed)

    def targets(self) -> list[str]:
        return [target for target, table in self._hints.items() if table]

    def pending(self) -> dict[str, int]:
        """Points held per target replica (what gossip advertises, so reads ask this node)."""
        return {target: total for target, total in self._totals.items() if total}

    def hinted_series(self) -> set[str]:
        """The series this node holds a hint for, for any target."""
        return {series for table in self._hints.values() for series in table}

    def take(self, target: str, series_max: int) -> list[tuple[str, Hint]]:
        """Up to ``series_max`` of a target's hints, oldest first, as copies."""
        table = self._hints.get(target, {})
        oldest = sorted(table.items(), key=lambda item: item[1].created_s)[:series_max]
        return [(series, dataclasses.replace(hint)) for series, hint in oldest]

    def delivered(self, target: str, sent: list[tuple[str, Hint]]) -> None:
        """Drop the hints that were handed off, unless points were added to them meanwhile."""
        table = self._hints.get(target, {})
        done = [series for series, hint in sent
                if series in table and table[series].revision == hint.revision]
        if not done:
            return
        self.storage.update_hints({}, [_key(target, series) for series in done])
        for series in done:
            points = table.pop(series).points
            self.delivered_points += points
            self._totals[target] -= points

    def advance(self, target: str, series: str, sent: Hint, next_ts: int, points: int) -> None:
        """The first ``points`` of a hint, up to ``next_ts``, were handed off: start it there,
        unless points were added to it meanwhile (then it is sent again whole: harmless)."""
        hint = self._hints.get(target, {}).get(series)
        if hint is None or hint.revision != sent.revision:
            return
        hint.min_ts = next_ts
        delivered = min(points, hint.points - 1)
        hint.points -= delivered
        self._totals[target] -= delivered
        self.delivered_points += delivered
        self.storage.update_hints({_key(target, series): hint.pack()}, [])
