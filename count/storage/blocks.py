"""Cutting a series' sorted points into compressed blocks that fill LMDB pages.

LMDB stores a value of up to about 2,000 bytes inside a leaf page (two per 4 KiB page) and
anything larger in whole overflow pages, so a 2,100-byte block would waste half its pages.
Full blocks are therefore cut to land just under ``BLOCK_BYTES_MAX``; full blocks are appended
in key order, which keeps their leaf pages packed. What is left over after the last full block
is the series' tail, rewritten as new points arrive until it fills.
"""

from __future__ import annotations

from typing import NamedTuple

from count.storage.codec import encode_block
from count.storage.merge import Columns

# Largest value LMDB keeps inline with an 8-byte key on 4 KiB pages is 2,022 bytes; leave room.
BLOCK_BYTES_MAX = 2000
# A full block is at least this big, so two of them fill at least 97% of a page.
BLOCK_BYTES_MIN = 1940
_FIT_TRIES_MAX = 8


class Block(NamedTuple):
    data: bytes
    min_ts: int
    max_ts: int
    count: int


def _encode(cols: Columns, lo: int, hi: int) -> bytes:
    return encode_block(cols.ts[lo:hi], cols.val[lo:hi], cols.ver[lo:hi])


def _fit(cols: Columns, lo: int, estimate: int) -> tuple[int, bytes]:
    """The longest run from ``lo`` (searched near ``estimate`` points) that fits a block.

    A bracketed search: ``good`` points are known to fit, ``bad`` known not to; each try
    interpolates by bytes per point and stays strictly inside the bracket, so it ends in at
    most ``_FIT_TRIES_MAX`` encodes with a block of BLOCK_BYTES_MIN..MAX bytes whenever the
    data allows one.
    """
    n = len(cols)
    good, good_data = 0, b""
    bad = n - lo + 1
    guess = min(max(1, estimate), n - lo)
    for _ in range(_FIT_TRIES_MAX):
        data = _encode(cols, lo, lo + guess)
        if len(data) <= BLOCK_BYTES_MAX:
            good, good_data = guess, data
            if len(data) >= BLOCK_BYTES_MIN or guess == n - lo:
                break
        else:
            bad = guess
        if bad - good <= 1:
            break
        target = (BLOCK_BYTES_MIN + BLOCK_BYTES_MAX) / 2
        scaled = int(guess * target / max(len(data), 1))
        guess = min(max(scaled, good + 1), bad - 1)
        if guess in (good, bad):
            guess = (good + bad) // 2
    if good == 0:  # even one point is too big: impossible for this codec, but stay safe
        return lo + 1, _encode(cols, lo, lo + 1)
    return lo + good, good_data


def cut_blocks(cols: Columns) -> tuple[list[Block], Columns]:
    """Split sorted, unique points into full blocks and the remainder that does not fill one.

    Returns (full blocks in time order, remainder columns).
    """
    n = len(cols)
    whole = _encode(cols, 0, n) if n else b""
    if len(whole) < BLOCK_BYTES_MIN:
        return [], cols
    per_point = len(whole) / n
    blocks: list[Block] = []
    lo = 0
    while lo < n:
        estimate = int(BLOCK_BYTES_MAX / per_point * 0.985)
        hi, data = _fit(cols, lo, estimate)
        if len(data) < BLOCK_BYTES_MIN and hi == n:
            break  # the remainder becomes the tail
        blocks.append(Block(data, int(cols.ts[lo]), int(cols.ts[hi - 1]), hi - lo))
        per_point = len(data) / (hi - lo)
        lo = hi
    rest = Columns(cols.ts[lo:], cols.val[lo:], cols.ver[lo:])
    return blocks, rest
