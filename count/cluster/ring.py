"""Consistent hashing: which nodes hold a series.

Every member owns ``vnodes`` points ("virtual nodes") on a 64-bit ring; a series lives at
the first 8 bytes of SHA-256 of its name. The vnode range owning a series is the first vnode
at or clockwise after that position, and its replicas are the next distinct members
clockwise from there. Many small ranges per member spread load evenly and mean a joining or
leaving member moves only about 1/n of the series.

Placement depends only on the member set and ``vnodes`` (never on the order members are
listed in), so every node that agrees on membership agrees on placement; ``digest()`` lets
nodes check that cheaply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np

VNODES = 150
# Callers look the same series names up again and again; hashing dominates otherwise.
TOKEN_CACHE_ENTRIES = 1_000_000


def token(name: str) -> int:
    """Ring position of ``name``: the first 8 bytes of SHA-256(name), big-endian, unsigned."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


class Ring:
    """An immutable placement of series on members; build a new one when membership changes.

    Range ``i`` is the arc ending at the ``i``-th smallest vnode token (range 0 also takes the
    arc past the largest token, wrapping round). For every range the full clockwise order of
    distinct members is computed up front, so a lookup is a binary search plus a list copy;
    that table holds ``vnodes * n * n`` entries, which is small for clusters of tens of nodes.
    """

    def __init__(self, members: Sequence[str], vnodes: int = VNODES) -> None:
        if not members:
            raise ValueError("a ring needs at least one member")
        if any(not isinstance(m, str) or not m for m in members):
            raise ValueError("members must be non-empty strings")
        if len(set(members)) != len(members):
            raise ValueError("members must be distinct")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.members: tuple[str, ...] = tuple(members)
        self.vnodes = vnodes
        self._index = {m: i for i, m in enumerate(self.members)}
        n = len(self.members)
        tokens = np.fromiter((token(f"{m}#{i}") for m in self.members for i in range(vnodes)),
                             dtype=np.uint64, count=n * vnodes)
        member_of_vnode = np.repeat(np.arange(n), vnodes)
        # Rank by member string so equal tokens sort the same whatever the members' order.
        rank = {m: r for r, m in enumerate(sorted(self.members))}
        name_rank = np.array([rank[m] for m in self.members])
        order = np.lexsort((name_rank[member_of_vnode], tokens))
        self._tokens = tokens[order]
        owner = member_of_vnode[order]
        self._order = _clockwise_orders(owner, n)
        self._order.flags.writeable = False
        self._preferences = tuple(tuple(self.members[j] for j in row) for row in self._order)
        self._token_cache: dict[str, int] = {}

    def _cached_token(self, name: str) -> int:
        """``token(name)`` through the bounded cache (cleared whole when full)."""
        cached = self._token_cache.get(name)
        if cached is None:
            if len(self._token_cache) >= TOKEN_CACHE_ENTRIES:
                self._token_cache.clear()
            cached = self._token_cache[name] = token(name)
        return cached

    def range_index(self, name: str) -> int:
        """The vnode range owning series ``name``: first vnode token >= its token, wrapping."""
        i = int(np.searchsorted(self._tokens, np.uint64(self._cached_token(name)), "left"))
        return 0 if i == len(self._tokens) else i

    def range_indices(self, names: Sequence[str]) -> np.ndarray:
        """``range_index`` of each name, as an int64 array, in the order given."""
        return self.token_ranges(self.tokens_of(names))

    def tokens_of(self, names: Sequence[str]) -> np.ndarray:
        """``token`` of each name, as a uint64 array (through the cache)."""
        return np.fromiter((self._cached_token(n) for n in names), dtype=np.uint64,
                           count=len(names))

    def token_ranges(self, tokens: np.ndarray) -> np.ndarray:
        """The vnode range holding each ring position."""
        indices = np.searchsorted(self._tokens, tokens, "left").astype(np.int64)
        indices[indices == len(self._tokens)] = 0
        return indices

    def vnode_tokens(self) -> np.ndarray:
        """Every vnode's token, ascending (range ``i`` ends at the ``i``-th)."""
        return self._tokens

    def preference(self, name: str) -> list[str]:
        """All members, each once, clockwise from the series' position: replicas first."""
        return list(self._preferences[self.range_index(name)])

    def range_preference(self, index: int) -> list[str]:
        """All members, each once, clockwise from vnode range ``index``."""
        return list(self._preferences[index])

    def replicas(self, name: str, rf: int) -> list[str]:
        """The ``min(rf, len(members))`` members that hold series ``name``."""
        if rf < 1:
            raise ValueError("rf must be at least 1")
        return self.preference(name)[:rf]

    def ranges(self) -> int:
        """Number of vnode ranges (``len(members) * vnodes``)."""
        return len(self._tokens)

    def shared_ranges(self, a: str, b: str, rf: int) -> list[int]:
        """Ranges whose first ``rf`` members include both ``a`` and ``b``, ascending.

        These are the ranges two nodes both replicate, so the ones anti-entropy compares.
        """
        if rf < 1:
            raise ValueError("rf must be at least 1")
        for m in (a, b):
            if m not in self._index:
                raise ValueError(f"{m!r} is not a ring member")
        head = self._order[:, :rf]
        both = (head == self._index[a]).any(axis=1) & (head == self._index[b]).any(axis=1)
        return np.flatnonzero(both).tolist()

    def ownership(self, rf: int) -> dict[str, float]:
        """Each member's effective share of the ring: the fraction of the hash space whose
        series it replicates at ``rf`` (as nodetool's "Owns (effective)"; they sum to
        ``min(rf, members)``). An even ring gives each member ``rf / members``."""
        if rf < 1:
            raise ValueError("rf must be at least 1")
        if len(self._tokens) == 1:
            return {self.members[0]: 1.0}
        # Range i is the arc (token[i-1], token[i]]; uint64 subtraction wraps range 0 round.
        arcs = (self._tokens - np.roll(self._tokens, 1)).astype(np.float64) / 2.0 ** 64
        owned = np.zeros(len(self.members))
        head = self._order[:, :rf]
        np.add.at(owned, head, arcs[:, None])
        return {m: min(1.0, float(owned[i])) for i, m in enumerate(self.members)}  # float sums

    def digest(self) -> str:
        """Short hex hash of (sorted members, vnodes): rings that place alike hash alike."""
        spec = json.dumps([sorted(self.members), self.vnodes]).encode()
        return hashlib.sha256(spec).hexdigest()[:16]


# An arc of the ring: (lo, hi], wrapping round zero when lo >= hi.
Arc = tuple[int, int]


def moves(current: Ring, future: Ring, rf_now: int, rf_later: int
          ) -> dict[str, list[tuple[Arc, list[str]]]]:
    """What each member must fetch to go from ``current`` to ``future`` placement.

    For every member that replicates, in ``future``, part of the ring it does not in
    ``current``: those arcs, each with its current replicas (where the data is now), those
    that lose the arc first (Cassandra's consistent range movement: fetching from the copy
    that goes away keeps every point on as many replicas as before), then the others, each
    group in preference order. Adjacent arcs with the same sources are merged.
    """
    bounds = np.union1d(current.vnode_tokens(), future.vnode_tokens())
    cur_ranges = current.token_ranges(bounds)
    fut_ranges = future.token_ranges(bounds)
    gains: dict[str, list[tuple[Arc, list[str]]]] = {}
    for k in range(len(bounds)):
        lo, hi = int(bounds[k - 1]), int(bounds[k])  # k = 0 wraps round from the last
        now = current.range_preference(int(cur_ranges[k]))[:rf_now]
        later = future.range_preference(int(fut_ranges[k]))[:rf_later]
        sources = [m for m in now if m not in later] + [m for m in now if m in later]
        for member in later:
            if member in sources:
                continue
            arcs = gains.setdefault(member, [])
            if arcs and arcs[-1][0][1] == lo and arcs[-1][1] == sources:
                arcs[-1] = ((arcs[-1][0][0], hi), sources)
            else:
                arcs.append(((lo, hi), sources))
    return gains


def arc_of(tokens: np.ndarray, arcs: Sequence[Arc]) -> np.ndarray:
    """For each ring position, the index in ``arcs`` (disjoint) of the arc holding it, or
    -1 if none does."""
    found = np.full(len(tokens), -1, np.int64)
    plain = sorted((hi, lo, i) for i, (lo, hi) in enumerate(arcs) if lo < hi)
    for i, (lo, hi) in enumerate(arcs):
        if lo >= hi:  # wraps round zero (one arc may be the whole ring)
            found[(tokens > np.uint64(lo)) | (tokens <= np.uint64(hi))] = i
    if plain:
        his = np.array([hi for hi, _, _ in plain], np.uint64)
        los = np.array([lo for _, lo, _ in plain], np.uint64)
        index = np.array([i for _, _, i in plain], np.int64)
        at = np.searchsorted(his, tokens, "left")
        ok = at < len(his)
        ok[ok] = tokens[ok] > los[at[ok]]
        found[ok] = index[at[ok]]
    return found


def _clockwise_orders(owner: np.ndarray, n: int) -> np.ndarray:
    """Per vnode range, the member indices in order of first appearance walking clockwise.

    ``owner[i]`` is the member of the ``i``-th vnode in ring order. For each member the
    position of its next vnode at or after each range (past the end when it wraps) is found
    by binary search over its own vnode positions; sorting members by it gives the order.
    """
    total = len(owner)
    starts = np.arange(total)
    next_at = np.empty((total, n), dtype=np.int64)
    for m in range(n):
        at = np.flatnonzero(owner == m)
        j = np.searchsorted(at, starts, "left")
        wrapped = j == len(at)
        next_at[:, m] = at[np.where(wrapped, 0, j)] + total * wrapped
    return np.argsort(next_at, axis=1)


def sloppy_targets(preference: Sequence[str], rf: int, alive: Callable[[str], bool]
                   ) -> list[tuple[str, str | None]]:
    """Where one series' writes go under a sloppy quorum: (node to send to, hint target).

    Each of the first ``rf`` members of ``preference`` (the replicas), in order, gets
    ``(replica, None)`` if alive; if it is down, the next alive member past the replicas not
    already standing in for another gets ``(substitute, replica)``, and keeps the write as a
    hint to hand to ``replica`` once it is back. A down replica with no substitute left gets
    no target, which the caller counts against the write quorum.
    """
    spares = (m for m in preference[rf:] if alive(m))
    targets: list[tuple[str, str | None]] = []
    for replica in preference[:rf]:
        if alive(replica):
            targets.append((replica, None))
            continue
        substitute = next(spares, None)
        if substitute is not None:
            targets.append((substitute, replica))
    return targets
