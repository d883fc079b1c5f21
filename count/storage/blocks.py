"""Cutting a series' sorted points into compressed blocks that fill LMDB pages exactly.

LMDB stores a value over about 2 KiB in whole overflow pages, one 16-byte header for the
run, so a value of 2 x 4096 - 16 = 8,176 bytes fills two pages to the byte and one of 8,200
would waste most of a third. Full blocks are therefore cut to land just under
``BLOCK_BYTES_MAX`` (about 7,400 points of typical metrics, so a range read decodes few
blocks and the per-block codec overhead is small); they are appended in key order. What is
left over after the last full block is the series' tail, rewritten as new points arrive
until it fills; at a clean stop tails are packed together (``segments.build_pack``).
"""

from __future__ import annotations

from typing import NamedTuple

from count.storage.codec import encode_block
from count.storage.merge import Columns

PAGE_BYTES = 4096
_OVERFLOW_HEADER_BYTES = 16
BLOCK_PAGES = 2
BLOCK_BYTES_MAX = BLOCK_PAGES * PAGE_BYTES - _OVERFLOW_HEADER_BYTES
# A full block is at least this big, so its pages are at least 99% full.
BLOCK_BYTES_MIN = BLOCK_BYTES_MAX - 80
_FIT_TRIES_MAX = 8


class Block(NamedTuple):
    data: bytes
    min_ts: int
    max_ts: int
    count: int  # type: ignore[assignment]  # the name of the field, not tuple.count


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


def cut_blocks(cols: Columns, bytes_per_point_hint: float | None = None
               ) -> tuple[list[Block], Columns, bytes]:
    """Split sorted, unique points into full blocks and the remainder that does not fill one.

    Returns (full blocks in time order, remainder, remainder encoded). The hint (bytes per
    point of similar data, e.g. the series' old tail) saves encoding everything up front.
    """
    n = len(cols)
    if n == 0:
        return [], cols, b""
    per_point = bytes_per_point_hint
    if per_point is None or n * per_point < BLOCK_BYTES_MIN * 1.1:
        whole = _encode(cols, 0, n)
        if len(whole) < BLOCK_BYTES_MIN:
            return [], cols, whole
        per_point = len(whole) / n
    blocks: list[Block] = []
    lo = 0
    while lo < n:
        estimate = int(BLOCK_BYTES_MAX / per_point * 0.99)
        hi, data = _fit(cols, lo, estimate)
        if len(data) < BLOCK_BYTES_MIN and hi == n:
            rest = Columns(cols.ts[lo:], cols.val[lo:], cols.ver[lo:])
            return blocks, rest, data
        blocks.append(Block(data, int(cols.ts[lo]), int(cols.ts[hi - 1]), hi - lo))
        per_point = len(data) / (hi - lo)
        lo = hi
    return blocks, Columns(cols.ts[n:], cols.val[n:], cols.ver[n:]), b""
