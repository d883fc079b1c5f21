"""Digests for anti-entropy and read repair.

Two replicas compare a Merkle tree of ring range -> series -> time bucket: a leaf is one
bucket of one series' points, each inner node combines its children's digests. Matching
digests let whole ranges or series be skipped; walking down only where they differ finds
the buckets to exchange. ``newer_points`` then works out exactly which points to send.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from count.storage.merge import Columns

BUCKET_MS = 3_600_000
DIGEST_BYTES = 16

K = TypeVar("K", int, str)


def bucket_digests(cols: Columns, bucket_ms: int = BUCKET_MS) -> dict[int, bytes]:
    """Leaf digests of one series: bucket start -> hash of that bucket's points.

    ``cols`` must be sorted by ts with one point per ts (as every read returns them). A
    bucket starts at ``ts // bucket_ms * bucket_ms``; its digest is blake2b-16 over its rows
    (ts int64, value as its 64 raw bits, version uint64), little-endian, row-major, so it
    depends only on the points and tells -0.0 from 0.0 and one NaN payload from another.
    """
    if not len(cols):
        return {}
    rows = np.empty((len(cols), 3), dtype="<u8")
    rows[:, 0] = np.asarray(cols.ts, dtype="<i8").view("<u8")
    rows[:, 1] = np.asarray(cols.val, dtype="<f8").view("<u8")
    rows[:, 2] = np.asarray(cols.ver, dtype="<u8")
    starts_ms = np.asarray(cols.ts, dtype=np.int64) // bucket_ms * bucket_ms
    edges = np.concatenate(([0], np.flatnonzero(starts_ms[1:] != starts_ms[:-1]) + 1,
                            [len(cols)]))
    return {int(starts_ms[lo]): hashlib.blake2b(rows[lo:hi].data, digest_size=DIGEST_BYTES).digest()
            for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)}


def combine(children: Mapping[Any, bytes]) -> bytes:
    """Digest of one tree level from its children's digests, whatever their insertion order.

    blake2b-16 over the children sorted by key, each as the length of ``repr(key)`` (4 bytes,
    little-endian), ``repr(key)`` and the child digest; the length prefix keeps two different
    levels from ever serialising to the same bytes. No children -> 16 zero bytes.
    """
    if not children:
        return bytes(DIGEST_BYTES)
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for key in sorted(children):
        encoded = repr(key).encode()
        h.update(len(encoded).to_bytes(4, "little"))
        h.update(encoded)
        h.update(children[key])
    return h.digest()


def differing(mine: Mapping[K, bytes], theirs: Mapping[K, bytes]) -> list[K]:
    """Keys whose digests differ or that only one side has, sorted: the children to descend."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def newer_points(reference: Columns, replica: Columns) -> Columns:
    """The points of ``reference`` that ``replica`` lacks or holds with another (version, value).

    That is what to send the replica so it holds ``reference`` (read repair passes the
    last-write-wins merge of every replica's answer, so the replica never holds a newer
    version). Values compare by their raw bits. Both sorted by ts, one point per ts.
    """
    if not len(replica):
        return reference
    at = np.minimum(np.searchsorted(replica.ts, reference.ts), len(replica) - 1)
    same = ((replica.ts[at] == reference.ts)
            & (replica.ver[at] == reference.ver)
            & (replica.val[at].view(np.uint64) == reference.val.view(np.uint64)))
    send = ~same
    return Columns(reference.ts[send], reference.val[send], reference.ver[send])
