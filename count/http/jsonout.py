"""Rendering columns of numbers as a JSON array of objects without a per-point Python loop.

orjson formats each numpy column in C; the numbers are then split, suffixed with the next
field's key, interleaved by slice assignment and joined, all C-level list and bytes
operations. This keeps a 100,000-point range reply to a few milliseconds.
"""

from __future__ import annotations

import numpy as np
import orjson

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_SPLIT = b"\n"  # never appears in orjson's output for numbers


def render_objects(fields: list[tuple[str, np.ndarray]]) -> bytes:
    """``[{"f1": a[0], "f2": b[0]}, ...]`` for equal-length numeric columns."""
    n = len(fields[0][1])
    if n == 0:
        return b"[]"
    keys = [orjson.dumps(name) + b":" for name, _ in fields]
    width = len(fields)
    pieces: list[bytes] = [b""] * (width * n)
    for j, (_, column) in enumerate(fields):
        suffix = b"," + keys[j + 1] if j + 1 < width else b"},{" + keys[0]
        body = orjson.dumps(np.ascontiguousarray(column), option=_NUMPY)[1:-1]
        parts = (body + b",").replace(b",", suffix + _SPLIT).split(_SPLIT)
        parts.pop()
        pieces[j::width] = parts
    text = b"".join(pieces)
    return b"[{" + keys[0] + text[: -(len(keys[0]) + 2)] + b"]"
