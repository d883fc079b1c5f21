"""Unit tests for count.http.jsonout: columns rendered as a JSON array of objects."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.http.jsonout import render_objects, render_points

I64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308,
                     1.7976931348623157e308, -1.7976931348623157e308, 1e16, 1e-7, 0.1,
                     123456789.125, 2.0**53, 2.0**53 + 2]),
)


def bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def both_parsers(data: bytes):
    a = orjson.loads(data)
    b = json.loads(data)
    assert a == b or (a == [] and b == [])
    return a, b


def check_rendered(fields, data: bytes) -> None:
    n = len(fields[0][1])
    for parsed in both_parsers(data):
        assert isinstance(parsed, list) and len(parsed) == n
        for i, obj in enumerate(parsed):
            assert list(obj) == [name for name, _ in fields]  # keys in column order
            for name, column in fields:
                got = obj[name]
                want = column[i]
                if column.dtype.kind == "f":
                    assert isinstance(got, float), (name, i, got)
                    assert bits(got) == bits(float(want)), (name, i, got, want)
                else:
                    assert type(got) is int and got == int(want), (name, i, got, want)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_empty_columns_render_an_empty_array(width):
    fields = [(f"f{j}", np.empty(0, np.int64 if j == 0 else np.float64)) for j in range(width)]
    assert render_objects(fields) == b"[]"


def test_two_columns_exact_bytes():
    out = render_objects([("timestamp", np.array([1, 2], np.int64)),
                          ("value", np.array([1.5, -0.0]))])
    assert orjson.loads(out) == [{"timestamp": 1, "value": 1.5}, {"timestamp": 2, "value": -0.0}]
    assert out == b'[{"timestamp":1,"value":1.5},{"timestamp":2,"value":-0.0}]'


def test_single_point():
    out = render_objects([("timestamp", np.array([7], np.int64)), ("value", np.array([0.25]))])
    assert out == b'[{"timestamp":7,"value":0.25}]'


def test_single_column():
    out = render_objects([("count", np.array([3, -4, 0], np.int64))])
    assert orjson.loads(out) == [{"count": 3}, {"count": -4}, {"count": 0}]


def test_three_columns():
    fields = [("timestamp", np.array([0, 60_000, 120_000], np.int64)),
              ("value", np.array([1.25, -3.5, 1e300])),
              ("count", np.array([2, 1, 17], np.int64))]
    out = render_objects(fields)
    assert orjson.loads(out) == [
        {"timestamp": 0, "value": 1.25, "count": 2},
        {"timestamp": 60_000, "value": -3.5, "count": 1},
        {"timestamp": 120_000, "value": 1e300, "count": 17},
    ]
    check_rendered(fields, out)


def test_keys_are_json_escaped():
    fields = [('we"ird', np.array([1], np.int64)), ("ü\\n", np.array([2.0]))]
    assert orjson.loads(render_objects(fields)) == [{'we"ird': 1, "ü\\n": 2.0}]


def test_non_contiguous_and_big_endian_columns():
    ts = np.arange(20, dtype=np.int64)[::3]
    val = np.linspace(0, 1, 20)[::3]
    out = render_objects([("timestamp", ts), ("value", val)])
    check_rendered([("timestamp", ts), ("value", val)], out)


def test_large_reply():
    n = 100_000
    ts = np.arange(n, dtype=np.int64) * 10_000 + 1_700_000_000_000
    val = np.round(np.cumsum(np.random.default_rng(0).normal(0, 1, n)), 2)
    parsed = orjson.loads(render_objects([("timestamp", ts), ("value", val)]))
    assert len(parsed) == n
    assert [p["timestamp"] for p in parsed] == ts.tolist()
    assert [p["value"] for p in parsed] == val.tolist()


def test_integral_floats_stay_floats():
    out = render_objects([("value", np.array([1.0, -2.0, 1e22]))])
    parsed = json.loads(out)
    assert all(isinstance(p["value"], float) for p in parsed)
    assert [p["value"] for p in parsed] == [1.0, -2.0, 1e22]


@settings(max_examples=80, deadline=None)
@given(st.data(), st.integers(1, 40))
def test_int64_and_float64_columns_round_trip(data, n):
    ts = np.array(data.draw(st.lists(I64, min_size=n, max_size=n)), np.int64)
    val = np.array(data.draw(st.lists(FINITE, min_size=n, max_size=n)), np.float64)
    count = np.array(data.draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)),
                     np.int64)
    width = data.draw(st.sampled_from([2, 3]))
    fields = [("timestamp", ts), ("value", val), ("count", count)][:width]
    check_rendered(fields, render_objects(fields))


@settings(max_examples=60, deadline=None)
@given(st.lists(FINITE, min_size=1, max_size=30))
def test_float_only_column_round_trips(values):
    col = np.array(values, np.float64)
    parsed = orjson.loads(render_objects([("value", col)]))
    assert [bits(p["value"]) for p in parsed] == [bits(v) for v in col.tolist()]
    assert all(math.isfinite(p["value"]) for p in parsed)


# -- render_points: the range-query renderer (fixed-width fast path and its fallback) ------

TIMESTAMPS = st.integers(0, 253_402_300_799_999)


def check_points(ts: np.ndarray, values: np.ndarray) -> None:
    data = render_points(ts, values)
    for parsed in both_parsers(data):
        assert [p["timestamp"] for p in parsed] == ts.tolist()
        assert [p["value"] for p in parsed] == values.tolist()
        assert all(set(p) == {"timestamp", "value"} for p in parsed)
        assert all(isinstance(p["value"], float) for p in parsed)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TIMESTAMPS, st.integers(-(10**12), 10**12), st.integers(0, 3)),
                min_size=1, max_size=60))
def test_render_points_decimals_round_trip(rows):
    ts = np.array([t for t, _, _ in rows], np.int64)
    decimals = max(d for _, _, d in rows)
    values = np.array([m / 10**d for _, m, d in rows], np.float64)
    assert len(render_points(ts, values)) > 0 and decimals <= 3
    check_points(ts, values)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(TIMESTAMPS, FINITE), min_size=1, max_size=40))
def test_render_points_any_float_round_trips(rows):
    check_points(np.array([t for t, _ in rows], np.int64),
                 np.array([v for _, v in rows], np.float64))


def test_render_points_sign_and_width_edges():
    values = np.array([-0.5, -9999.5, -10000.25, 0.001, -0.001, 123456789012.5, 7.0, -0.0])
    ts = np.arange(len(values), dtype=np.int64) * 10**12
    check_points(ts, values)
    last = orjson.loads(render_points(ts, values))[-1]["value"]
    assert last == 0.0 and math.copysign(1.0, last) == -1.0  # -0.0 keeps its sign
    assert b" " in render_points(ts, values)  # the fixed-width fast path took it


def test_render_points_empty():
    assert render_points(np.empty(0, np.int64), np.empty(0, np.float64)) == b"[]"
