"""Unit tests for count.http.points: validating insert bodies and turning them into columns."""

from __future__ import annotations

import json
import re

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.errors import BadRequest
from count.http.points import check_series_name, parse_points
from count.storage.writes import TIMESTAMP_MAX_MS

BATCH_MAX = 1000
NAME_MAX = 64
GOOD = {"series": "cpu.host1", "timestamp": 1_700_000_000_000, "value": 1.5}


def parse(body, batch_max=BATCH_MAX, name_max=NAME_MAX):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return parse_points(body, batch_max, name_max)


# -- valid bodies ----------------------------------------------------------------------------


def test_single_point_object():
    cols = parse(GOOD)
    assert cols.names == ["cpu.host1"]
    assert cols.idx.tolist() == [0]
    assert cols.ts.tolist() == [1_700_000_000_000]
    assert cols.val.tolist() == [1.5]
    assert (cols.idx.dtype, cols.ts.dtype, cols.val.dtype) == (np.uint32, np.int64, np.float64)


def test_batch_maps_points_to_unique_names_in_first_seen_order():
    body = [
        {"series": "b", "timestamp": 3, "value": 1},
        {"series": "a", "timestamp": 1, "value": 2.5},
        {"series": "b", "timestamp": 2, "value": -3},
        {"series": "c/x:y_z-1", "timestamp": 0, "value": 0.0},
        {"series": "a", "timestamp": 1, "value": 4e300},
    ]
    cols = parse(body)
    assert cols.names == ["b", "a", "c/x:y_z-1"]
    assert cols.idx.tolist() == [0, 1, 0, 2, 1]
    assert cols.ts.tolist() == [3, 1, 2, 0, 1]
    assert cols.val.tolist() == [1.0, 2.5, -3.0, 0.0, 4e300]


def test_single_point_in_an_array():
    assert parse([GOOD]).names == ["cpu.host1"]


def test_extra_fields_are_ignored():
    cols = parse({**GOOD, "tags": {"x": 1}, "unit": "ms"})
    assert cols.val.tolist() == [1.5]


@pytest.mark.parametrize("ts", [0, 1, TIMESTAMP_MAX_MS])
def test_timestamp_bounds_accepted(ts):
    assert parse({**GOOD, "timestamp": ts}).ts.tolist() == [ts]


def test_timestamp_max_is_the_last_millisecond_of_9999():
    assert TIMESTAMP_MAX_MS == 253_402_300_799_999


@pytest.mark.parametrize("value", [0, -0.0, 5e-324, 1.7976931348623157e308, -1e308,
                                   2**63, 2**64 - 1, -(2**63), 10**20])
def test_extreme_finite_values_accepted(value):
    got = parse({**GOOD, "value": value}).val
    assert got.tolist() == [float(value)]


def test_negative_zero_keeps_its_sign():
    assert np.signbit(parse({**GOOD, "value": -0.0}).val[0])


def test_name_of_exactly_the_maximum_length():
    assert parse({**GOOD, "series": "x" * NAME_MAX}).names == ["x" * NAME_MAX]


def test_exactly_the_maximum_batch():
    body = [{**GOOD, "timestamp": i} for i in range(BATCH_MAX)]
    assert len(parse(body).ts) == BATCH_MAX


def test_whitespace_and_unicode_escapes_in_json():
    body = b' [ {"series" : "a\\u002eb", "timestamp":5 , "value" : 2 } ] '
    cols = parse_points(body, BATCH_MAX, NAME_MAX)
    assert cols.names == ["a.b"]


# -- invalid points: the error names the point -----------------------------------------------

INVALID_POINTS = {
    "missing series": {"timestamp": 1, "value": 1.0},
    "missing timestamp": {"series": "a", "value": 1.0},
    "missing value": {"series": "a", "timestamp": 1},
    "bool value": {**GOOD, "value": True},
    "false value": {**GOOD, "value": False},
    "string value": {**GOOD, "value": "1.5"},
    "null value": {**GOOD, "value": None},
    "list value": {**GOOD, "value": [1]},
    "float timestamp": {**GOOD, "timestamp": 1.0},
    "fractional timestamp": {**GOOD, "timestamp": 1.5},
    "string timestamp": {**GOOD, "timestamp": "1"},
    "bool timestamp": {**GOOD, "timestamp": True},
    "null timestamp": {**GOOD, "timestamp": None},
    "negative timestamp": {**GOOD, "timestamp": -1},
    "timestamp above max": {**GOOD, "timestamp": TIMESTAMP_MAX_MS + 1},
    "timestamp beyond int64": {**GOOD, "timestamp": 2**63},
    "timestamp beyond uint64": {**GOOD, "timestamp": 10**20},
    "bad series chars": {**GOOD, "series": "cpu host"},
    "non-ascii series": {**GOOD, "series": "température"},
    "newline in series": {**GOOD, "series": "a\n"},
    "comma in series": {**GOOD, "series": "a,b"},
    "empty name": {**GOOD, "series": ""},
    "too long name": {**GOOD, "series": "x" * (NAME_MAX + 1)},
    "numeric series": {**GOOD, "series": 5},
    "null series": {**GOOD, "series": None},
    "point is a list": ["a", 1, 1.0],
    "point is a number": 5,
    "point is a string": "a",
    "point is null": None,
}

UNHASHABLE_SERIES = {
    "list series": {**GOOD, "series": ["a"]},
    "object series": {**GOOD, "series": {"name": "a"}},
}


def _batch_with_bad_point_at(bad, index: int, size: int = 5) -> list:
    body = [{**GOOD, "timestamp": i} for i in range(size)]
    body[index] = bad
    return body


@pytest.mark.parametrize("case", list(INVALID_POINTS))
@pytest.mark.parametrize("index", [0, 3])
def test_invalid_point_raises_naming_its_index(case, index):
    with pytest.raises(BadRequest) as info:
        parse(_batch_with_bad_point_at(INVALID_POINTS[case], index))
    assert re.match(rf"point {index}: ", str(info.value)), str(info.value)


@pytest.mark.parametrize("case", ["missing value", "bool value", "negative timestamp",
                                  "bad series chars"])
def test_invalid_single_object_is_point_0(case):
    with pytest.raises(BadRequest, match=r"^point 0: "):
        parse(INVALID_POINTS[case])


def test_first_of_several_bad_points_is_named():
    body = _batch_with_bad_point_at(INVALID_POINTS["string value"], 4, size=8)
    body[2] = INVALID_POINTS["negative timestamp"]
    with pytest.raises(BadRequest, match=r"^point 2: timestamp"):
        parse(body)


@pytest.mark.parametrize(("case", "words"), [
    ("missing timestamp", "missing field 'timestamp'"),
    ("bool value", "value must be a number"),
    ("string value", "value must be a number"),
    ("float timestamp", "timestamp must be an integer"),
    ("timestamp above max", "timestamp must be an integer"),
    ("empty name", "non-empty"),
    ("too long name", f"longer than {NAME_MAX} bytes"),
    ("bad series chars", "may only hold"),
])
def test_error_says_what_is_wrong(case, words):
    with pytest.raises(BadRequest) as info:
        parse(_batch_with_bad_point_at(INVALID_POINTS[case], 1))
    assert words in str(info.value)


def test_huge_integer_value_is_rejected():
    body = (b'[{"series":"a","timestamp":1,"value":1},'
            b'{"series":"a","timestamp":2,"value":1' + b"0" * 400 + b"}]")
    with pytest.raises(BadRequest):
        parse_points(body, BATCH_MAX, NAME_MAX)


@pytest.mark.parametrize("case", list(UNHASHABLE_SERIES))
def test_unhashable_series_raises_bad_request(case):
    with pytest.raises(BadRequest, match=r"^point 2: "):
        parse(_batch_with_bad_point_at(UNHASHABLE_SERIES[case], 2))


# -- invalid bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "words"), [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"[1,]", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"series":"a","timestamp":1,"value":NaN}', "not valid JSON"),
    (b'{"series":"a","timestamp":1,"value":Infinity}', "not valid JSON"),
    (b"5", "point object or an array"),
    (b'"text"', "point object or an array"),
    (b"null", "point object or an array"),
    (b"true", "point object or an array"),
    (b"[]", "empty"),
])
def test_invalid_body(body, words):
    with pytest.raises(BadRequest) as info:
        parse_points(body, BATCH_MAX, NAME_MAX)
    assert words in str(info.value)


def test_too_many_points():
    body = [{**GOOD, "timestamp": i} for i in range(11)]
    with pytest.raises(BadRequest, match="11 points in one request; at most 10"):
        parse(body, batch_max=10)


def test_limits_come_from_the_arguments():
    with pytest.raises(BadRequest, match="longer than 3 bytes"):
        parse({**GOOD, "series": "abcd"}, name_max=3)
    assert parse({**GOOD, "series": "abc"}, name_max=3).names == ["abc"]


# -- check_series_name -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A-Z_0.9/x:y", "x" * NAME_MAX])
def test_check_series_name_accepts(name):
    assert check_series_name(name, NAME_MAX) == name


@pytest.mark.parametrize("name", ["", " ", "a b", "é", "a\x00", "x" * (NAME_MAX + 1), None, 3,
                                  b"abc"])
def test_check_series_name_rejects(name):
    with pytest.raises(BadRequest):
        check_series_name(name, NAME_MAX)


# -- property: valid batches round-trip ------------------------------------------------------

names = st.text(alphabet="abcXYZ09._-/:", min_size=1, max_size=12).filter(lambda n: not n.endswith("/"))
points = st.lists(
    st.fixed_dictionaries({
        "series": names,
        "timestamp": st.integers(0, TIMESTAMP_MAX_MS),
        "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                           st.integers(-(2**63), 2**64 - 1)),
    }),
    min_size=1, max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(points)
def test_valid_batches_round_trip(batch):
    cols = parse_points(orjson.dumps(batch), BATCH_MAX, NAME_MAX)
    assert cols.names == list(dict.fromkeys(p["series"] for p in batch))
    assert len(set(cols.names)) == len(cols.names)
    assert [cols.names[i] for i in cols.idx.tolist()] == [p["series"] for p in batch]
    assert cols.ts.tolist() == [p["timestamp"] for p in batch]
    assert cols.val.tolist() == [float(p["value"]) for p in batch]


@settings(max_examples=100, deadline=None)
@given(points, st.data())
def test_one_bad_point_anywhere_is_named(batch, data):
    index = data.draw(st.integers(0, len(batch) - 1))
    case = data.draw(st.sampled_from(sorted(INVALID_POINTS)))
    batch[index] = INVALID_POINTS[case]
    with pytest.raises(BadRequest, match=rf"^point {index}: "):
        parse_points(json.dumps(batch).encode(), BATCH_MAX, NAME_MAX)


# -- the columnar form ----------------------------------------------------------------------


def test_columnar_one_series():
    body = orjson.dumps({"series": "c.one", "timestamps": [3, 1, 2], "values": [1.5, 2, -3.25]})
    cols = parse(body)
    assert cols.names == ["c.one"]
    assert cols.idx.tolist() == [0, 0, 0]
    assert cols.ts.tolist() == [3, 1, 2] and cols.val.tolist() == [1.5, 2.0, -3.25]


def test_columnar_many_series_matches_the_object_form():
    rows = [("a", 1, 1.0), ("b", 2, 2.0), ("a", 3, 3.5), ("c", 4, -1.0)]
    columnar = parse(orjson.dumps({"series": [r[0] for r in rows],
                                   "timestamps": [r[1] for r in rows],
                                   "values": [r[2] for r in rows]}))
    objects = parse(orjson.dumps([{"series": s, "timestamp": t, "value": v} for s, t, v in rows]))
    assert columnar.names == objects.names
    for got, want in zip(columnar[1:], objects[1:], strict=True):
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize(("body", "words"), [
    ({"series": "a", "timestamps": [1, 2], "values": [1.0]}, "equally long"),
    ({"series": ["a"], "timestamps": [1, 2], "values": [1.0, 2.0]}, "equally long"),
    ({"series": "a", "timestamps": 5, "values": [1.0]}, '"timestamps" and "values" arrays'),
    ({"series": 7, "timestamps": [1], "values": [1.0]}, "series name or an array"),
    ({"series": "a", "timestamps": [], "values": []}, "empty"),
    ({"series": "a", "timestamps": [1, -2], "values": [1.0, 2.0]}, "point 1: timestamp"),
    ({"series": "a", "timestamps": [1, 2], "values": [1.0, "x"]}, "point 1: value"),
    ({"series": ["a", "bad name"], "timestamps": [1, 2], "values": [1.0, 2.0]}, "point 1: series"),
    ({"series": "bad name", "timestamps": [1], "values": [1.0]}, "point 0: series"),
    ({"series": "a", "timestamps": [1, 2.5], "values": [1.0, 2.0]}, "point 1: timestamp"),
])
def test_columnar_invalid(body, words):
    with pytest.raises(BadRequest, match=re.escape(words)):
        parse(orjson.dumps(body))


def test_columnar_point_limit():
    body = orjson.dumps({"series": "a", "timestamps": list(range(BATCH_MAX + 1)),
                         "values": [1.0] * (BATCH_MAX + 1)})
    with pytest.raises(BadRequest, match="MAX_BATCH_POINTS"):
        parse(body)
