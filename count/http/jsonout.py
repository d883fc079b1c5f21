"""Rendering columns of numbers as a JSON array of objects without a per-point Python loop.

Two renderers, one output meaning:

* ``render_points`` is the range-query fast path. When every value is a decimal with at most
  ``DECIMALS_MAX`` places (what metrics almost always are), each row is a fixed-width record
  of 4-byte words: numbers are written four digits at a time from lookup tables, padded with
  JSON's insignificant spaces, and every write is one aligned uint32 column, so the whole
  reply is one array turned into bytes.
* ``render_objects`` handles any float: orjson formats each column in C, and the numbers are
  split, suffixed with the next key, interleaved by slice assignment and joined.
"""

from __future__ import annotations

import numpy as np
import orjson

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_SPLIT = b"\n"  # never appears in orjson's output for numbers
DECIMALS_MAX = 3
_SAFE_INT = 2 ** 53
_POW10 = 10 ** np.arange(17, dtype=np.int64)
_POW10_4 = 10_000 ** np.arange(5, dtype=np.int64)


def _table(texts: list[str]) -> np.ndarray:
    """4-character strings as one uint32 word each."""
    return np.frombuffer("".join(texts).encode(), np.uint32)


def _word(text: str) -> np.uint32:
    return np.uint32(_table([text])[0])


# Four digits per word: zero-padded (inner groups), space-padded (the leading group), and
# space-padded with a minus sign (the leading group of a negative number, below 1000).
_ZERO_PADDED = _table([f"{i:04d}" for i in range(10_000)])
_SPACE_PADDED = _table([f"{i:4d}" for i in range(10_000)])
_NEGATIVE = _table([f"-{i}".rjust(4) if i < 1000 else "????" for i in range(10_000)])
_BLANK = _word("    ")
_MINUS_WORD = _word("   -")
# ".d", ".dd", ".ddd" padded with spaces to one word, per number of decimals.
_FRACTION = {d: _table([f".{i:0{d}d}".ljust(4) for i in range(10 ** d)])
             for d in range(1, DECIMALS_MAX + 1)}


def _text_words(text: str) -> np.ndarray:
    """A constant piece of the row, padded with trailing spaces to whole words."""
    return _table([text.ljust(-(-len(text) // 4) * 4)])


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


def _decimals(values: np.ndarray) -> int | None:
    """The fewest decimal places that print every value exactly, or None if none do."""
    if not np.isfinite(values).all():
        return None
    if np.abs(values).max(initial=0) >= _SAFE_INT / _POW10[DECIMALS_MAX]:
        return None
    for d in range(1, DECIMALS_MAX + 1):
        scaled = np.round(values * _POW10[d])
        if np.array_equal(scaled / _POW10[d], values):
            return d
    return None


def _integer_words(magnitude: np.ndarray, negative: np.ndarray | None) -> np.ndarray:
    """Right-aligned text of non-negative integers, as (n, words) uint32.

    A row's groups before its leading one are blank, the leading group is space-padded
    (carrying the minus sign when it fits, else a word of its own before it) and the rest
    are zero-padded. When every row has as many groups as the widest (timestamps almost
    always do) no masks are needed at all.
    """
    groups: list[np.ndarray] = []
    rest = magnitude
    while True:
        rest, group = np.divmod(rest, 10_000)
        groups.append(group)
        if not rest.any():
            break
    groups.reverse()  # most significant first
    n, count = len(magnitude), len(groups)
    lead = 0 if negative is None else 1
    words = np.empty((n, lead + count), np.uint32)
    if lead:
        words[:, 0] = _BLANK
    uniform = int(magnitude.min()) >= int(_POW10_4[count - 1])
    used = (np.full(n, count) if uniform
            else np.maximum(np.searchsorted(_POW10_4, magnitude, "right"), 1))  # groups per row
    for k, group in enumerate(groups):
        column = words[:, lead + k]
        if uniform:
            column[:] = _SPACE_PADDED[group] if k == 0 else _ZERO_PADDED[group]
            continue
        column[:] = _ZERO_PADDED[group]
        leading = used == count - k
        column[leading] = _SPACE_PADDED[group[leading]]
        column[used < count - k] = _BLANK
    if negative is not None:
        rows = np.flatnonzero(negative)
        first_column = lead + count - used[rows]
        first_group = magnitude[rows] // _POW10_4[used[rows] - 1]
        small = first_group < 1000
        words[rows[small], first_column[small]] = _NEGATIVE[first_group[small]]
        words[rows[~small], first_column[~small] - 1] = _MINUS_WORD
    return words


def render_points(ts: np.ndarray, values: np.ndarray) -> bytes:
    """``[{"timestamp": t, "value": v}, ...]`` for int64 timestamps >= 0 and float64 values."""
    n = len(ts)
    if n == 0:
        return b"[]"
    decimals = _decimals(values)
    if decimals is None or int(ts.min()) < 0:
        return render_objects([("timestamp", ts), ("value", values)])
    magnitude = np.abs(np.round(values * _POW10[decimals])).astype(np.int64)
    negative = np.signbit(values)  # -0.0 included: it prints as -0.0
    whole, fraction = np.divmod(magnitude, _POW10[decimals])
    ts_words = _integer_words(ts.astype(np.int64, copy=False), None)
    value_words = _integer_words(whole, negative if negative.any() else None)
    # Row: ' {"timestamp":  ' <ts> ',"value":   ' <whole> <.fraction> '},  '; the constant
    # words come from one template row, then only the numbers are written, column by column.
    head, middle, tail = _text_words(' {"timestamp":'), _text_words(',"value":'), _text_words("},")
    widths = [len(head), ts_words.shape[1], len(middle), value_words.shape[1], 1, len(tail)]
    starts = np.cumsum([0] + widths)
    template = np.zeros(starts[-1], np.uint32)
    template[starts[0]:starts[1]] = head
    template[starts[2]:starts[3]] = middle
    template[starts[5]:starts[6]] = tail
    rows = np.empty((n, starts[-1]), np.uint32)
    rows[:] = template
    rows[:, starts[1]:starts[2]] = ts_words
    rows[:, starts[3]:starts[4]] = value_words
    rows[:, starts[4]] = _FRACTION[decimals][fraction]
    rows[-1, -1] = _word("}]  ")
    text = rows.view(np.uint8).reshape(-1)
    text[0] = ord("[")  # the leading space of the first row opens the array
    return text.tobytes()
