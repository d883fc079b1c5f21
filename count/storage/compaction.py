"""Compaction: folding flushed segments into compressed per-series blocks.

A compaction freezes the segments present when it starts and walks their series in id order,
a bounded number per step so that requests are served between steps. For each series it
merges the segments' points into the blocks they overlap and into the series' tail, then cuts
the result into full blocks (appended) and a new tail. When every series is done the frozen
segments are deleted; points of dropped series (``Storage.drop_series``) are left out.
Until then a read sees a point both in its segment and in its block,
with the same version, and last-write-wins keeps one: a crash mid-compaction loses nothing and
the next compaction simply redoes the work.
"""

from __future__ import annotations

import lmdb
import numpy as np

from count.storage import keys
from count.storage.blocks import Block, cut_blocks
from count.storage.codec import decode_block
from count.storage.environment import Environment
from count.storage.merge import Columns, concat, merge_sorted, resolve_by_series
from count.storage.segments import Segment

SERIES_PER_STEP = 16


class Compaction:
    """One compaction job over a fixed set of segments, run in steps."""

    def __init__(self, environment: Environment, segment_keys: list[bytes],
                 dropped: set[int] | None = None) -> None:
        self.lmdb = environment
        self.segment_keys = segment_keys
        with environment.begin(buffers=True) as txn:
            sids = [s.sids.copy() for s in self._segments(txn)]
        pending = np.unique(np.concatenate(sids)) if sids else np.empty(0, np.uint32)
        if dropped:
            pending = pending[~np.isin(pending, np.fromiter(dropped, np.uint32, len(dropped)))]
        self.pending = pending
        # The storage's own set: a series dropped while this job runs is left out too.
        self.dropped = dropped if dropped is not None else set()
        self.position = 0
        self.points_folded = 0
        self.points_dropped = 0  # of dropped series, left out
        self.blocks_written = 0

    def _segments(self, txn: lmdb.Transaction) -> list[Segment]:
        db = self.lmdb.db["segments"]
        found = (txn.get(k, db=db) for k in self.segment_keys)
        return [Segment(data) for data in found if data is not None]

    def _gather(self, first_sid: int, last_sid: int) -> list[tuple[int, Columns]]:
        """The segments' points for a run of series ids, resolved by LWW, per series."""
        sids, parts, ranks = [], [], []
        with self.lmdb.begin(buffers=True) as txn:
            for rank, segment in enumerate(self._segments(txn)):
                sid, cols = segment.gather(first_sid, last_sid)
                sids.append(sid)
                parts.append(cols)
                ranks.append(np.full(len(sid), rank, np.int64))
        sid, cols = resolve_by_series(np.concatenate(sids), concat(parts), np.concatenate(ranks))
        ids, starts = np.unique(sid, return_index=True)
        bounds = np.append(starts, len(sid))
        return [(int(ids[k]), Columns(cols.ts[bounds[k]:bounds[k + 1]],
                                      cols.val[bounds[k]:bounds[k + 1]],
                                      cols.ver[bounds[k]:bounds[k + 1]]))
                for k in range(len(ids))]

    def step(self, first_block: int) -> tuple[bool, int]:
        """Compact the next few series, numbering new blocks from ``first_block``; returns
        (whether the job is finished, the next free block number)."""
        if self.position >= len(self.pending):
            self._finish()
            return True, first_block
        chunk = self.pending[self.position:self.position + SERIES_PER_STEP]
        gathered = self._gather(int(chunk[0]), int(chunk[-1]))
        db = self.lmdb.db

        if self.dropped:
            kept = [(sid, cols) for sid, cols in gathered if sid not in self.dropped]
            self.points_dropped += sum(len(c) for _, c in gathered) - sum(len(c) for _, c in kept)
            gathered = kept

        def body(txn: lmdb.Transaction) -> int:
            next_block = first_block
            for sid, cols in gathered:
                next_block = fold_series(txn, db, sid, cols, next_block)
            return next_block

        next_block = self.lmdb.transact(body)
        self.blocks_written += next_block - first_block
        self.points_folded += sum(len(c) for _, c in gathered)
        self.position += len(chunk)
        return False, next_block

    def _finish(self) -> None:
        db = self.lmdb.db["segments"]

        def body(txn: lmdb.Transaction) -> None:
            for key in self.segment_keys:
                txn.delete(key, db=db)

        self.lmdb.transact(body)


def _present(data: bytes | memoryview | None) -> bytes | memoryview:
    """A record the index says exists (its absence is a corrupt database)."""
    assert data is not None, "the block index names a block that is not stored"
    return data


def _decode(data: bytes | memoryview) -> Columns:
    return Columns(*decode_block(data))


def fold_series(
    txn: lmdb.Transaction, db: dict[str, lmdb._Database], sid: int, new: Columns, next_block: int
) -> int:
    """Merge new sorted points of one series into its blocks and tail; return next block seq.

    Invariant kept: full blocks of a series do not overlap, and the tail (if any) holds
    the newest points, after every full block.
    """
    prefix = keys.sid_key(sid)
    tail_data = txn.get(prefix, db=db["tails"])
    tail = _decode(tail_data) if tail_data is not None else None
    lo, hi = int(new.ts[0]), int(new.ts[-1])
    include_tail = tail is not None and hi >= int(tail.ts[0])
    replaced: list[tuple[bytes, int]] = []
    if tail is None or lo < int(tail.ts[0]):
        cur = txn.cursor(db["bindex"])
        if cur.set_range(keys.index_key(sid, lo)):
            for key, value in cur:
                if key[:4] != prefix:
                    break
                seq, min_ts, _ = keys.unpack_index_value(value)
                if min_ts > hi:
                    break
                replaced.append((bytes(key), seq))
    parts = [_decode(_present(txn.get(keys.seq_key(seq), db=db["blocks"]))) for _, seq in replaced]
    if tail is not None and include_tail:
        parts.append(tail)
    parts.append(new)
    merged = merge_sorted(parts)
    # The fold keeps every point it was given, at its newest version (last write wins).
    at = np.searchsorted(merged.ts, new.ts)
    assert at.max() < len(merged) and (merged.ts[at] == new.ts).all() and (
        merged.ver[at] >= new.ver).all(), "a fold lost a point or its newest version"
    if tail is not None:
        to_tail = include_tail
    else:
        cur = txn.cursor(db["bindex"])
        later = cur.set_range(keys.index_key(sid, int(merged.ts[-1]) + 1))
        to_tail = not (later and cur.key()[:4] == prefix)
    hint = len(tail_data) / len(tail) if tail is not None and tail_data is not None else None
    full, rest, rest_data = cut_blocks(merged, hint)
    if not to_tail and len(rest):
        full.append(Block(rest_data, int(rest.ts[0]), int(rest.ts[-1]), len(rest)))
    for key, seq in replaced:
        txn.delete(key, db=db["bindex"])
        txn.delete(keys.seq_key(seq), db=db["blocks"])
    for block in full:
        txn.put(keys.seq_key(next_block), block.data, db=db["blocks"], append=True)
        txn.put(keys.index_key(sid, block.max_ts),
                keys.index_value(next_block, block.min_ts, block.count), db=db["bindex"])
        next_block += 1
    if to_tail:
        if len(rest):
            txn.put(prefix, rest_data, db=db["tails"])
        elif tail_data is not None:
            txn.delete(prefix, db=db["tails"])
    return next_block
