"""Shared helpers for the storage-engine tests: a reference model and on-disk layout checks.

The model is the plain statement of the rule: per series and timestamp, the point with the
highest version wins; between equal versions the later arrival wins.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from count.storage import keys
from count.storage.blocks import BLOCK_BYTES_MAX
from count.storage.codec import decode_block
from count.storage.engine import Storage, WriteRequest
from count.storage.writes import TIMESTAMP_MAX_MS

MAP_SIZE = 64 << 20
END = TIMESTAMP_MAX_MS
BIG = 10**9


def point_arrays(sid, ts, val, ver):
    """Four lists as the (sid, ts, val, ver) arrays the buffer and segments take."""
    return (np.asarray(sid, np.uint32), np.asarray(ts, np.int64), np.asarray(val, np.float64),
            np.asarray(ver, np.uint64))


def lists(c):
    """A Columns as plain lists, for comparisons."""
    return c.ts.tolist(), c.val.tolist(), c.ver.tolist()


def open_storage(path, buffer_points: int = 1000) -> Storage:
    return Storage(str(path), map_size_bytes=MAP_SIZE, buffer_points=buffer_points,
                   flush_interval_s=300)


def request(points: list[tuple[str, int, float]], version: int) -> WriteRequest:
    """A WriteRequest from (name, ts, value) tuples, in arrival order."""
    names = list(dict.fromkeys(p[0] for p in points))
    position = {n: i for i, n in enumerate(names)}
    return WriteRequest(
        names=names,
        idx=np.array([position[p[0]] for p in points], np.uint32),
        ts=np.array([p[1] for p in points], np.int64),
        val=np.array([p[2] for p in points], np.float64),
        version=version,
    )


class Model:
    def __init__(self) -> None:
        self.series: dict[str, dict[int, tuple[int, int, float]]] = defaultdict(dict)
        self.arrival = 0
        self.version_high = 0

    def write(self, requests: list[WriteRequest]) -> None:
        for req in requests:
            for i, ts, val in zip(req.idx.tolist(), req.ts.tolist(), req.val.tolist(),
                                  strict=True):
                self.arrival += 1
                points = self.series[req.names[i]]
                old = points.get(ts)
                if old is None or req.version >= old[0]:
                    points[ts] = (req.version, self.arrival, val)
            self.version_high = max(self.version_high, req.version)

    def drop(self, name: str) -> None:
        self.series.pop(name, None)

    def expected(self, name: str, start: int = 0, end: int = END):
        points = self.series.get(name, {})
        stamps = sorted(t for t in points if start <= t <= end)
        return (np.array(stamps, np.int64),
                np.array([points[t][2] for t in stamps], np.float64),
                np.array([points[t][0] for t in stamps], np.uint64))

    def names(self) -> list[str]:
        return sorted(self.series)


def assert_columns(got, want, context="") -> None:
    ts, val, ver = want
    assert got.ts.tolist() == ts.tolist(), context
    assert got.val.view(np.uint64).tolist() == val.view(np.uint64).tolist(), context
    assert got.ver.tolist() == ver.tolist(), context


def check_read(storage: Storage, model: Model, name: str, start: int = 0, end: int = END,
               context: str = "") -> None:
    assert_columns(storage.read(name, start, end, BIG), model.expected(name, start, end),
                   f"{context} {name} [{start}, {end}]")


def check_layout(storage: Storage) -> dict[int, list[tuple[int, int]]]:
    """Scan the LMDB databases; assert the block layout invariants; return block ranges.

    Per series: full blocks (bindex) are sorted and do not overlap, each index entry matches
    its block, every block is referenced exactly once, and the tail (if any) is newer than
    every full block; no block or tail belongs to a dropped series.
    """
    ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
    with storage.env.begin() as txn:
        dropped = {keys.unpack_u32(k) for k, v in txn.cursor(storage.db["series_names"]) if not v}
        seqs = set()
        for key, value in txn.cursor(storage.db["bindex"]):
            sid, max_ts = keys.unpack_index_key(key)
            seq, min_ts, count = keys.unpack_index_value(value)
            assert seq not in seqs, f"block {seq} indexed twice"
            seqs.add(seq)
            data = txn.get(keys.seq_key(seq), db=storage.db["blocks"])
            assert data is not None, f"index entry of sid {sid} points at missing block {seq}"
            assert len(data) <= BLOCK_BYTES_MAX
            ts, _, _ = decode_block(data)
            assert (int(ts[0]), int(ts[-1]), len(ts)) == (min_ts, max_ts, count)
            assert sid not in dropped, f"block {seq} of dropped sid {sid}"
            ranges[sid].append((min_ts, max_ts))
        block_keys = txn.cursor(storage.db["blocks"]).iternext(values=False)
        stored = {keys.unpack_u64(k) for k in block_keys}
        assert stored == seqs, "blocks not referenced by the index"
        for sid, spans in ranges.items():
            for (_, prev_max), (next_min, _) in zip(spans, spans[1:], strict=False):
                assert prev_max < next_min, f"sid {sid}: overlapping or unsorted blocks"
        for key, value in txn.cursor(storage.db["tails"]):
            sid = keys.unpack_u32(key)
            assert sid not in dropped, f"tail of dropped sid {sid}"
            ts, _, _ = decode_block(value)
            if ranges.get(sid):
                assert int(ts[0]) > ranges[sid][-1][1], f"sid {sid}: tail not after its blocks"
    return ranges


def stored_points(storage: Storage, name: str):
    """A series' points as held in its blocks and tail (meaningful after flush + compact)."""
    sid = storage.sid(name)
    parts = []
    with storage.env.begin() as txn:
        cur = txn.cursor(storage.db["bindex"])
        if cur.set_range(keys.index_key(sid, 0)):
            for key, value in cur:
                if keys.unpack_index_key(key)[0] != sid:
                    break
                seq = keys.unpack_index_value(value)[0]
                parts.append(decode_block(txn.get(keys.seq_key(seq), db=storage.db["blocks"])))
        tail = txn.get(keys.sid_key(sid), db=storage.db["tails"])
        if tail is not None:
            parts.append(decode_block(tail))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.uint64)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
