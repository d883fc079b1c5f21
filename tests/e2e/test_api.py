"""End-to-end tests of the HTTP API of one node: every route, every error, read-back exactness.

Most tests share one module-scoped node (each test uses its own series names); tests that
need flushes, compaction or restarts start their own node.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import time
from typing import Any

import numpy as np
import pytest
import requests

from tests.e2e.conftest import CountNode, NodeFactory

pytestmark = pytest.mark.timeout(90)

TIMESTAMP_MAX_MS = 253_402_300_799_999
API_ENV = {
    "MAX_BODY_BYTES": str(1 << 20),
    "MAX_BATCH_POINTS": "5000",
    "MAX_QUERY_POINTS": "1000",
    "MAX_SERIES_NAME_LENGTH": "256",
}
AGGREGATIONS = ("sum", "mean", "avg", "min", "max", "count")


@pytest.fixture(scope="module")
def api(module_node_factory: NodeFactory) -> CountNode:
    """One node shared by the read/write tests of this module."""
    return module_node_factory(API_ENV, name="api")


# -- helpers -------------------------------------------------------------------------------


def assert_error(resp: requests.Response, status: int, contains: str | None = None) -> str:
    """The response is ``status`` with a JSON body of exactly ``{"error": "<message>"}``."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip(), body
    if contains is not None:
        assert contains.lower() in message.lower(), message
    return message


def points(series: str, stamps: list[int], values: list[float]) -> list[dict[str, Any]]:
    return [{"series": series, "timestamp": t, "value": v} for t, v in zip(stamps, values, strict=True)]


def expected_rows(model: dict[int, float]) -> list[dict[str, Any]]:
    return [{"timestamp": t, "value": float(model[t])} for t in sorted(model)]


def assert_series(node: CountNode, series: str, model: dict[int, float]) -> None:
    """A full range read of ``series`` is exactly ``model`` (sorted, float values, bit-exact)."""
    got = node.range(series)
    want = expected_rows(model)
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want, strict=True):
        assert g["timestamp"] == w["timestamp"] and type(g["timestamp"]) is int, (g, w)
        assert isinstance(g["value"], float), g
        assert g["value"] == w["value"], (g, w)
    assert got == want


def post_raw(node: CountNode, body: bytes | str) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return node.post("/insert", data=data, headers={"Content-Type": "application/json"})


def raw_http(node: CountNode, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes, float]:
    """Send raw bytes, read one response; (status, headers, body, seconds until complete)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if match and len(rest) >= int(match.group(1)):
                    break
    elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, elapsed


# -- health and stats ----------------------------------------------------------------------


def test_health(api: CountNode) -> None:
    resp = api.get("/health")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"status": "healthy", "node_id": 1, "cluster_size": 1, "members": 1,
                           "storage": "ok", "syncing": False, "reasons": []}


def test_ready_and_live(api: CountNode) -> None:
    ready = api.get("/ready")
    assert ready.status_code == 200 and ready.headers["content-type"].startswith("application/json")
    assert ready.json() == {"status": "ready", "node_id": 1, "cluster_size": 1, "members": 1,
                            "storage": "ok", "syncing": False, "reasons": []}
    live = api.get("/live")
    assert live.status_code == 200 and live.json() == {"status": "live", "node_id": 1}


def test_stats_counters(api: CountNode, series) -> None:
    before = api.stats()
    for key in ("series", "buffer_points", "segments", "blocks", "tails", "flushes",
                "map_size_bytes", "file_bytes", "inserts", "points_written"):
        assert type(before[key]) is int and before[key] >= 0, (key, before)
    assert type(before["compacting"]) is bool
    assert before["map_size_bytes"] >= before["file_bytes"] > 0
    api.insert(points(series("a"), [1, 2, 3], [1.0, 2.0, 3.0]))
    api.insert({"series": series("b"), "timestamp": 1, "value": 1})
    after = api.stats()
    assert after["inserts"] == before["inserts"] + 2
    assert after["points_written"] == before["points_written"] + 4
    assert after["series"] == before["series"] + 2


# -- inserts and range reads ---------------------------------------------------------------


def test_insert_single_point(api: CountNode, series) -> None:
    name = series()
    resp = api.insert({"series": name, "timestamp": 1_700_000_000_000, "value": 42.5})
    assert resp.status_code == 201
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"inserted": 1}
    assert api.range(name) == [{"timestamp": 1_700_000_000_000, "value": 42.5}]


EXACT_VALUES = [0, -0.0, 1.5, -2.25, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 0.1,
                1 / 3, 123456789012345.67, 2**53, -7, 3.141592653589793, 1e-10, 99999.99999]


def test_batch_insert_reads_back_exactly(api: CountNode, series) -> None:
    name = series()
    stamps = [0, 1, 2, 10, 1000, 1_700_000_000_000, TIMESTAMP_MAX_MS - 1, TIMESTAMP_MAX_MS]
    stamps += [2_000_000 + i for i in range(len(EXACT_VALUES) - len(stamps))]
    stamps.sort()
    resp = api.insert(points(name, stamps, EXACT_VALUES))
    assert resp.json() == {"inserted": len(stamps)}
    assert_series(api, name, dict(zip(stamps, EXACT_VALUES, strict=True)))


def test_batch_over_many_series(api: CountNode, series) -> None:
    names = [series(f"m{i}") for i in range(20)]
    batch = [{"series": names[i % 20], "timestamp": i, "value": i * 0.5} for i in range(1000)]
    random.Random(1).shuffle(batch)
    assert api.insert(batch).json() == {"inserted": 1000}
    for k, name in enumerate(names):
        assert_series(api, name, {i: i * 0.5 for i in range(k, 1000, 20)})


def test_out_of_order_inserts_come_back_sorted(api: CountNode, series) -> None:
    name = series()
    rng = random.Random(7)
    stamps = rng.sample(range(1, 1_000_000), 300)
    model = {t: rng.uniform(-1e6, 1e6) for t in stamps}
    # half in one shuffled batch, then 40 one by one in reverse order, then the rest as a batch
    first, rest = stamps[:150], sorted(stamps[150:], reverse=True)
    api.insert(points(name, first, [model[t] for t in first]))
    for t in rest[:40]:
        api.insert({"series": name, "timestamp": t, "value": model[t]})
    api.insert(points(name, rest[40:], [model[t] for t in rest[40:]]))
    got = api.range(name)
    assert [p["timestamp"] for p in got] == sorted(model)
    assert_series(api, name, model)


def test_overwrite_same_timestamp_last_write_wins(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, [1, 2, 3], [1.0, 2.0, 3.0]))
    api.insert({"series": name, "timestamp": 2, "value": 20.0})
    api.insert(points(name, [3, 4], [30.0, 4.0]))
    api.insert({"series": name, "timestamp": 2, "value": -200.0})
    assert_series(api, name, {1: 1.0, 2: -200.0, 3: 30.0, 4: 4.0})


def test_duplicate_timestamps_in_one_batch_last_wins(api: CountNode, series) -> None:
    name, other = series("a"), series("b")
    batch = points(name, [5, 5, 6, 5, 6, 7], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    batch.insert(2, {"series": other, "timestamp": 5, "value": 99.0})
    resp = api.insert(batch)
    assert resp.json() == {"inserted": 7}  # every point of the request is counted
    assert_series(api, name, {5: 4.0, 6: 5.0, 7: 6.0})
    assert_series(api, other, {5: 99.0})


def test_unknown_series_reads_empty(api: CountNode, series) -> None:
    assert api.range(series("never-written")) == []
    assert api.range(series("never-written"), start=5, end=10) == []


def test_start_end_are_inclusive(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, [10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0]))

    def stamps(**params: int) -> list[int]:
        return [p["timestamp"] for p in api.range(name, **params)]

    assert stamps() == [10, 20, 30, 40]
    assert stamps(start=10, end=40) == [10, 20, 30, 40]
    assert stamps(start=11, end=39) == [20, 30]
    assert stamps(start=20, end=20) == [20]
    assert stamps(start=21, end=29) == []
    assert stamps(start=0, end=9) == []
    assert stamps(start=41) == []
    assert stamps(start=30) == [30, 40]
    assert stamps(end=20) == [10, 20]
    assert stamps(start=0, end=TIMESTAMP_MAX_MS) == [10, 20, 30, 40]


@pytest.mark.parametrize("suffix", ["a/b", "a:b", "a/b:c/d:e", "x.y_z-w/1:2", "/lead", "a//b", "::"])
def test_series_names_with_slash_and_colon(api: CountNode, series, suffix: str) -> None:
    name = series() + "-" + suffix if not suffix.startswith("/") else suffix + series()
    api.insert(points(name, [1, 2], [1.0, 2.0]))
    assert api.range(name) == [{"timestamp": 1, "value": 1.0}, {"timestamp": 2, "value": 2.0}]
    assert api.aggregate(name, "sum") == 3.0
    assert api.aggregate(name, "count", interval=1) == [
        {"timestamp": 1, "value": 1.0, "count": 1}, {"timestamp": 2, "value": 1.0, "count": 1}]
    listed = api.get("/series", params={"prefix": name}).json()
    assert listed == [name]


def test_series_name_ending_in_slash_is_refused(api: CountNode, series) -> None:
    """A trailing '/' cannot survive the URL of /query/range/{series}, so it is refused."""
    base = series()
    resp = api.post("/insert", json=[{"series": base, "timestamp": 1, "value": 1.0},
                                     {"series": base + "/", "timestamp": 2, "value": 2.0}])
    assert_error(resp, 400, "point 1")
    assert api.range(base) == []


def test_max_query_points(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, list(range(1001)), [1.0] * 1001))
    resp = api.get(f"/query/range/{name}")
    assert_error(resp, 400, "MAX_QUERY_POINTS")
    assert len(api.range(name, start=1, end=1000)) == 1000
    assert_error(api.get(f"/query/aggregated/{name}", params={"aggregation": "sum"}), 400,
                 "MAX_QUERY_POINTS")


# -- aggregations --------------------------------------------------------------------------


def _numpy_agg(values: np.ndarray, how: str) -> float | int | None:
    if how == "count":
        return len(values)
    if how == "sum":
        return float(np.sum(values)) if len(values) else 0.0
    if not len(values):
        return None
    return float({"mean": np.mean, "avg": np.mean, "min": np.min, "max": np.max}[how](values))


def _close(a: float | int | None, b: float | int | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


@pytest.fixture(scope="module")
def agg_data(api: CountNode) -> tuple[str, np.ndarray, np.ndarray]:
    """One series of 600 random points (with an overwrite) for the aggregation tests."""
    rng = np.random.default_rng(42)
    ts = np.sort(rng.choice(np.arange(0, 200_000), size=600, replace=False)).astype(np.int64)
    val = np.round(rng.normal(50, 30, size=600), 3)
    name = "agg.data/numpy:check"
    api.insert(points(name, ts.tolist(), [0.0] * 600))  # overwritten below: last write wins
    order = rng.permutation(600)
    api.insert(points(name, ts[order].tolist(), val[order].tolist()))
    return name, ts, val


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("window", [None, (0, TIMESTAMP_MAX_MS), (12_345, 150_000), (7, 7)])
def test_aggregation_matches_numpy(api: CountNode, agg_data, how: str, window) -> None:
    name, ts, val = agg_data
    params: dict[str, int] = {}
    mask = np.ones(len(ts), dtype=bool)
    if window is not None:
        params = {"start": window[0], "end": window[1]}
        mask = (ts >= window[0]) & (ts <= window[1])
    got = api.aggregate(name, how, **params)
    want = _numpy_agg(val[mask], how)
    if how == "count":
        assert type(got) is int and got == want
    elif want is None:
        assert got is None
    else:
        assert isinstance(got, float) and _close(got, want), (got, want)


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("interval,window", [
    (7_000, None), (7_000, (12_345, 150_000)), (1, (1000, 3000)), (10**12, None), (1000, (5, 5)),
])
def test_bucketed_aggregation_matches_numpy(api: CountNode, agg_data, how: str, interval: int,
                                            window) -> None:
    name, ts, val = agg_data
    params: dict[str, int] = {"interval": interval}
    mask = np.ones(len(ts), dtype=bool)
    if window is not None:
        params.update(start=window[0], end=window[1])
        mask = (ts >= window[0]) & (ts <= window[1])
    got = api.aggregate(name, how, **params)
    sel_ts, sel_val = ts[mask], val[mask]
    buckets = sel_ts - sel_ts % interval  # epoch-aligned, not aligned to start
    want = []
    for b in np.unique(buckets):
        in_bucket = sel_val[buckets == b]
        want.append({"timestamp": int(b), "value": float(_numpy_agg(in_bucket, how)),
                     "count": len(in_bucket)})
    assert [g["timestamp"] for g in got] == [w["timestamp"] for w in want]
    assert [g["count"] for g in got] == [w["count"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == {"timestamp", "value", "count"}
        assert type(g["timestamp"]) is int and type(g["count"]) is int
        assert _close(g["value"], w["value"]), (g, w)


def test_aggregation_of_nothing(api: CountNode, series, agg_data) -> None:
    name, _, _ = agg_data
    for target, params in ((series("none"), {}), (name, {"start": 200_001, "end": 300_000})):
        assert api.aggregate(target, "sum", **params) == 0
        assert api.aggregate(target, "count", **params) == 0
        for how in ("mean", "avg", "min", "max"):
            assert api.aggregate(target, how, **params) is None
        for how in AGGREGATIONS:
            assert api.aggregate(target, how, interval=1000, **params) == []


def test_aggregation_sees_last_write(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, [1, 2, 3], [10.0, 20.0, 30.0]))
    api.insert({"series": name, "timestamp": 2, "value": -5.0})
    assert api.aggregate(name, "sum") == 35.0
    assert api.aggregate(name, "count") == 3
    assert api.aggregate(name, "min") == -5.0
    assert api.aggregate(name, "max") == 30.0
    assert api.aggregate(name, "mean") == pytest.approx(35.0 / 3)
    assert api.aggregate(name, "avg") == pytest.approx(35.0 / 3)


# -- series listing ------------------------------------------------------------------------


def test_series_listing_prefix_and_limit(api: CountNode, series) -> None:
    base = series("ls")
    names = [base + s for s in (".b", ".a", ".c/x", ".c:y", "x", ".a.a")]
    api.insert([{"series": n, "timestamp": 1, "value": 1.0} for n in names])
    under = sorted(n for n in names if n.startswith(base + "."))

    def listing(**params: Any) -> list[str]:
        resp = api.get("/series", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    assert listing(prefix=base + ".") == under
    assert listing(prefix=base) == sorted(names)
    assert listing(prefix=base + ".", limit=2) == under[:2]
    assert listing(prefix=base + ".", limit=1) == under[:1]
    assert listing(prefix=base + ".c") == [base + ".c/x", base + ".c:y"]
    assert listing(prefix=base + ".zzz") == []
    everything = listing(limit=100_000)
    assert everything == sorted(everything) and set(names) <= set(everything)
    assert listing() == everything[:1000]
    assert listing(limit=3) == everything[:3]


def test_series_listing_errors(api: CountNode) -> None:
    for params in ({"limit": "0"}, {"limit": "-1"}, {"limit": "100001"}, {"limit": "abc"},
                   {"limit": "1.5"}, {"prefix": "x" * 257}):
        assert_error(api.get("/series", params=params), 400)


# -- insert errors -------------------------------------------------------------------------

GOOD = {"series": "ok", "timestamp": 1, "value": 1.0}


def _with(**changes: Any) -> dict[str, Any]:
    point = dict(GOOD)
    for key, value in changes.items():
        if value is _MISSING:
            point.pop(key)
        else:
            point[key] = value
    return point


_MISSING = object()

BAD_BODIES: list[tuple[str, bytes | str, str | None]] = [
    ("not json", b"{not json", "JSON"),
    ("truncated json", b'[{"series":"a","timestamp":1,"value":1', "JSON"),
    ("empty body", b"", None),
    ("trailing garbage", b'{"series":"a","timestamp":1,"value":1} x', "JSON"),
    ("NaN", '[{"series":"a","timestamp":1,"value":NaN}]', None),
    ("Infinity", '[{"series":"a","timestamp":1,"value":Infinity}]', None),
    ("-Infinity", '[{"series":"a","timestamp":1,"value":-Infinity}]', None),
    ("1e999 overflow", '[{"series":"a","timestamp":1,"value":1e999}]', None),
    ("-1e999 overflow", '{"series":"a","timestamp":1,"value":-1e999}', None),
    ("400-digit value", '{"series":"a","timestamp":1,"value":1' + "0" * 400 + "}", None),
    ("scalar", b"5", "point object or an array"),
    ("string", b'"hello"', "point object or an array"),
    ("null", b"null", "point object or an array"),
    ("empty array", b"[]", "empty"),
    ("array of numbers", b"[1, 2]", "point 0"),
    ("nested array", json.dumps([[GOOD]]), "point 0"),
    ("not utf-8", b'{"series":"\xff","timestamp":1,"value":1}', None),
]


@pytest.mark.parametrize("label,body,contains", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_insert_rejects_bad_body(api: CountNode, label: str, body: bytes | str, contains: str | None) -> None:
    assert_error(post_raw(api, body), 400, contains)


BAD_POINTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing series", _with(series=_MISSING), "series"),
    ("missing timestamp", _with(timestamp=_MISSING), "timestamp"),
    ("missing value", _with(value=_MISSING), "value"),
    ("float timestamp", _with(timestamp=1.5), "timestamp"),
    ("integral float timestamp", _with(timestamp=1.0), "timestamp"),
    ("string timestamp", _with(timestamp="1"), "timestamp"),
    ("null timestamp", _with(timestamp=None), "timestamp"),
    ("bool timestamp", _with(timestamp=True), "timestamp"),
    ("negative timestamp", _with(timestamp=-1), "timestamp"),
    ("timestamp after year 9999", _with(timestamp=TIMESTAMP_MAX_MS + 1), "timestamp"),
    ("timestamp 2**63", _with(timestamp=2**63), "timestamp"),
    ("timestamp 2**64", _with(timestamp=2**64), "timestamp"),
    ("bool value true", _with(value=True), "value"),
    ("bool value false", _with(value=False), "value"),
    ("string value", _with(value="1.0"), "value"),
    ("null value", _with(value=None), "value"),
    ("list value", _with(value=[1.0]), "value"),
    ("object value", _with(value={"v": 1}), "value"),
    ("empty series", _with(series=""), "series"),
    ("numeric series", _with(series=5), "series"),
    ("null series", _with(series=None), "series"),
    ("list series", _with(series=["a"]), "series"),
    ("object series", _with(series={"a": 1}), "series"),
    ("bool series", _with(series=True), "series"),
    ("series with space", _with(series="a b"), "series"),
    ("series with star", _with(series="a*b"), "series"),
    ("series with comma", _with(series="a,b"), "series"),
    ("series with non-ascii", _with(series="température"), "series"),
    ("series with newline", _with(series="a\nb"), "series"),
    ("series over 256 bytes", _with(series="x" * 257), "MAX_SERIES_NAME_LENGTH"),
]


@pytest.mark.parametrize("label,point,contains", BAD_POINTS, ids=[b[0] for b in BAD_POINTS])
def test_insert_rejects_bad_point(api: CountNode, series, label: str, point: dict[str, Any],
                                  contains: str) -> None:
    name = series()
    if point.get("series") == "ok":
        point["series"] = name
    # alone, as an object
    assert_error(post_raw(api, json.dumps(point)), 400, contains)
    # third in a batch of good points: the error names it, and nothing of the batch is stored
    batch = [{"series": name, "timestamp": 100, "value": 1.0},
             {"series": name, "timestamp": 101, "value": 2.0}, point,
             {"series": name, "timestamp": 102, "value": 3.0}]
    message = assert_error(post_raw(api, json.dumps(batch)), 400, contains)
    assert "point 2" in message, message
    assert api.range(name) == []


def test_series_name_length_limit_is_inclusive(api: CountNode) -> None:
    name = "n" * 256
    api.insert({"series": name, "timestamp": 1, "value": 1.0})
    assert api.range(name) == [{"timestamp": 1, "value": 1.0}]
    assert_error(api.get("/query/range/" + "n" * 257), 400, "MAX_SERIES_NAME_LENGTH")


def test_too_many_points(api: CountNode, series) -> None:
    name = series()
    batch = points(name, list(range(5001)), [1.0] * 5001)
    assert_error(post_raw(api, json.dumps(batch)), 400, "MAX_BATCH_POINTS")
    assert api.range(name, start=0, end=10) == []
    assert api.insert(batch[:5000]).json() == {"inserted": 5000}


def test_timestamp_bounds_are_inclusive(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, [0, TIMESTAMP_MAX_MS], [1.0, 2.0]))
    assert api.range(name) == [{"timestamp": 0, "value": 1.0}, {"timestamp": TIMESTAMP_MAX_MS, "value": 2.0}]


def test_integer_values_are_accepted(api: CountNode, series) -> None:
    name = series()
    api.insert(points(name, [1, 2, 3], [0, -5, 2**62]))
    assert api.range(name) == [{"timestamp": 1, "value": 0.0}, {"timestamp": 2, "value": -5.0},
                               {"timestamp": 3, "value": float(2**62)}]


# -- query errors --------------------------------------------------------------------------

BAD_QUERIES: list[tuple[str, str, str | None]] = [
    ("start not a number", "/query/range/{s}?start=abc", "start"),
    ("start float", "/query/range/{s}?start=1.5", "start"),
    ("start empty", "/query/range/{s}?start=", None),
    ("start negative", "/query/range/{s}?start=-1", "start"),
    ("start plus sign", "/query/range/{s}?start=%2B5", "start"),
    ("end too large", "/query/range/{s}?end=253402300800000", "end"),
    ("end huge", "/query/range/{s}?end=99999999999999999999999", "end"),
    ("end before start", "/query/range/{s}?start=10&end=9", "end must not be before start"),
    ("bad series in path", "/query/range/a%20b", "series"),
    ("star in series", "/query/range/a*b", "series"),
    ("agg missing", "/query/aggregated/{s}", "aggregation"),
    ("agg unknown", "/query/aggregated/{s}?aggregation=median", "aggregation"),
    ("agg empty", "/query/aggregated/{s}?aggregation=", "aggregation"),
    ("agg upper case", "/query/aggregated/{s}?aggregation=SUM", "aggregation"),
    ("interval zero", "/query/aggregated/{s}?aggregation=sum&interval=0", "interval"),
    ("interval negative", "/query/aggregated/{s}?aggregation=sum&interval=-5", "interval"),
    ("interval float", "/query/aggregated/{s}?aggregation=sum&interval=1.5", "interval"),
    ("interval text", "/query/aggregated/{s}?aggregation=sum&interval=1m", "interval"),
    ("agg end before start", "/query/aggregated/{s}?aggregation=sum&start=5&end=4", "end"),
    ("agg bad series", "/query/aggregated/a%20b?aggregation=sum", "series"),
]


@pytest.mark.parametrize("label,path,contains", BAD_QUERIES, ids=[q[0] for q in BAD_QUERIES])
def test_query_rejects_bad_params(api: CountNode, label: str, path: str, contains: str | None) -> None:
    assert_error(api.get(path.format(s="q.series")), 400, contains)


@pytest.mark.parametrize("path", [
    "/query/range/q?start=--5",
    "/query/range/q?end=%C2%B2",
    "/series?limit=--1",
    "/query/aggregated/q?aggregation=sum&interval=--3",
])
def test_malformed_integer_params_are_400_not_500(api: CountNode, path: str) -> None:
    assert_error(api.get(path), 400)


# -- body size -----------------------------------------------------------------------------


def test_declared_oversize_body_rejected_before_reading(api: CountNode) -> None:
    """413 from Content-Length alone: 100 MB declared, a few bytes sent, answer at once."""
    request = (b"POST /insert HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100000000\r\n\r\n" + b'[{"series"')
    status, headers, body, elapsed = raw_http(api, request, timeout=5.0)
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    payload = json.loads(body)
    assert set(payload) == {"error"} and "MAX_BODY_BYTES" in payload["error"], payload
    assert elapsed < 2.0, elapsed


def test_body_one_byte_over_limit(api: CountNode) -> None:
    limit = 1 << 20
    body = b" " * (limit - 2) + b"[]"
    # (own connections: after a 413 gunicorn may close the connection, see the test below)
    resp = requests.post(api.url("/insert"), data=body, timeout=10)
    assert_error(resp, 400, "empty")  # exactly at the limit: read and parsed
    resp = requests.post(api.url("/insert"), data=b" " + body, timeout=10)
    assert_error(resp, 413, "MAX_BODY_BYTES")


def test_chunked_insert_is_read(api: CountNode, series) -> None:
    name = series()

    def chunks():
        yield json.dumps([{"series": name, "timestamp": 1, "value": 1.0}]).encode()

    resp = requests.post(api.url("/insert"), data=chunks(), timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert resp.status_code == 201, resp.text
    assert api.range(name) == [{"timestamp": 1, "value": 1.0}]


def test_chunked_oversize_body_is_413(api: CountNode) -> None:
    def chunks():
        for _ in range(120):
            yield b" " * 10_000

    resp = requests.post(api.url("/insert"), data=chunks(), timeout=10,
                         headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "MAX_BODY_BYTES")


# -- routes and methods --------------------------------------------------------------------

ROUTES = ["/insert", "/health", "/ready", "/live", "/stats", "/series", "/query/range/a", "/query/aggregated/a"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ROUTES)
def test_wrong_method_is_405(api: CountNode, method: str, path: str) -> None:
    resp = api.request(method, path, data=b"{}")
    assert_error(resp, 405)
    assert "allow" in {k.lower() for k in resp.headers}


@pytest.mark.parametrize("path", ROUTES)
def test_head_is_405(api: CountNode, path: str) -> None:
    resp = api.request("HEAD", path)
    assert resp.status_code == 405
    assert resp.content == b""


def test_get_insert_and_post_reads_are_405(api: CountNode) -> None:
    resp = api.get("/insert")
    assert_error(resp, 405)
    assert "POST" in resp.headers["allow"]
    for path in ROUTES[1:]:
        assert_error(api.post(path, data=b"{}"), 405)


@pytest.mark.parametrize("path", ["/", "/nope", "/query", "/query/range", "/query/range/",
                                  "/query/nope/a", "/insert/extra", "/healthz", "/series/x"])
def test_unknown_route_is_404(api: CountNode, path: str) -> None:
    assert_error(api.get(path), 404)


def test_413_before_reading_the_body_closes_the_connection(api: CountNode) -> None:
    """The 413 is answered without reading the body, and the server then drops the
    connection (gunicorn does not read the rest) instead of parsing body bytes as a request."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(b"POST /insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2097152\r\n\r\n" + b" " * (1 << 20))
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert b"MAX_BODY_BYTES" in received
    assert received.count(b"HTTP/1.1") == 1  # nothing of the body was taken for a request
    assert api.get("/health").status_code == 200


def test_trailing_slash_on_routes(api: CountNode) -> None:
    assert api.get("/health/").json()["status"] == "healthy"


def test_keepalive_connection_survives_errors(api: CountNode, series) -> None:
    """Errors of every kind on one connection do not break the next request on it."""
    name = series()
    session = requests.Session()
    url = api.url
    assert session.post(url("/insert"), data=b"{bad", timeout=10).status_code == 400
    assert session.get(url("/nope"), timeout=10).status_code == 404
    assert session.delete(url("/health"), timeout=10).status_code == 405
    assert session.post(url("/insert"), data=b"[]", timeout=10).status_code == 400
    resp = session.post(url("/insert"), json={"series": name, "timestamp": 1, "value": 2.0}, timeout=10)
    assert resp.status_code == 201
    assert session.get(url(f"/query/range/{name}"), timeout=10).json() == [{"timestamp": 1, "value": 2.0}]


# -- through flushes, compaction and restarts ----------------------------------------------


def test_last_write_wins_through_flush_compaction_and_restart(make_node: NodeFactory) -> None:
    """Overwrites and out-of-order points across buffer, segments, blocks, tails and the WAL."""
    node = make_node({"MEMORY_BUFFER_SIZE": "100", "FLUSH_INTERVAL_SECONDS": "300"})
    rng = random.Random(3)
    name, filler = "lww/main:series", "lww.filler"
    model: dict[int, float] = {}
    filler_model: dict[int, float] = {}
    filler_next = [0]

    def write(stamps: list[int], values: list[float]) -> None:
        node.insert(points(name, stamps, values))
        model.update(zip(stamps, values, strict=True))

    def push_filler(count: int) -> None:
        stamps = list(range(filler_next[0], filler_next[0] + count))
        filler_next[0] += count
        values = [float(t) for t in stamps]
        node.insert(points(filler, stamps, values))
        filler_model.update(zip(stamps, values, strict=True))

    # 1. buffer only: overwrite, duplicates inside one batch
    write([10, 20, 30], [1.0, 2.0, 3.0])
    write([20], [22.0])
    write([30, 30, 40, 30], [31.0, 32.0, 4.0, 33.0])
    assert model[30] == 33.0
    assert_series(node, name, model)

    # 2. flush to a segment, then overwrite over the segment from the buffer
    push_filler(150)
    node.wait_for_stats(lambda s: s["flushes"] >= 1, what="first flush")
    assert_series(node, name, model)
    write([20, 5], [222.0, 0.5])  # over the segment, and before everything
    assert_series(node, name, model)

    # 3. many random points (enough for several full blocks), in shuffled batches
    stamps = rng.sample(range(1000, 200_000), 1500)
    values = [rng.uniform(-1e9, 1e9) for _ in stamps]
    for i in range(0, 1500, 300):
        write(stamps[i:i + 300], values[i:i + 300])
    write(list(range(300_000, 300_000 + len(EXACT_VALUES))), EXACT_VALUES)
    push_filler(150)
    node.wait_for_stats(lambda s: s["buffer_points"] < 100, what="flush of the big batches")
    # idle for a second -> compaction folds every segment into blocks and tails
    # (polled slowly: any request, /stats too, resets the node's idle timer)
    stats = node.wait_for_stats(lambda s: s["segments"] == 0 and not s["compacting"] and s["blocks"] > 0,
                                what="compaction", interval=1.5)
    assert stats["tails"] >= 1
    assert_series(node, name, model)

    # 4. after compaction: overwrite inside full blocks, before them, and in the tail
    inside = rng.sample(sorted(model), 50)
    write(inside, [rng.uniform(-1, 1) for _ in inside])
    write([1, 2, 3], [-1.0, -2.0, -3.0])
    write([300_000], [7.77])
    write([400_000], [8.88])
    assert_series(node, name, model)
    flushes = node.stats()["flushes"]
    push_filler(150)
    node.wait_for_stats(lambda s: s["flushes"] > flushes and s["segments"] == 0 and not s["compacting"],
                        what="second compaction", interval=1.5)
    assert_series(node, name, model)
    assert_series(node, filler, filler_model)

    # 5. clean restart: compaction at stop, then read everything back
    write([10], [1010.0])
    node.restart()
    assert_series(node, name, model)
    assert_series(node, filler, filler_model)

    # 6. crash restart: points only in the WAL are replayed, still last write wins
    write([10, 20], [1_000_010.0, 1_000_020.0])
    write([10], [2_000_010.0])
    node.restart(sig=None)  # SIGKILL of the process group
    assert_series(node, name, model)
    assert node.aggregate(name, "count") == len(model)
    assert node.aggregate(name, "max") == max(model.values())
    assert_series(node, filler, filler_model)


def test_columnar_insert_reads_back(api: CountNode, series) -> None:
    one, other = series("one"), series("other")
    resp = api.post("/insert", json={"series": one, "timestamps": [30, 10, 20],
                                     "values": [3.0, 1.0, 2.5]})
    assert resp.status_code == 201 and resp.json() == {"inserted": 3}
    assert api.range(one) == [{"timestamp": 10, "value": 1.0}, {"timestamp": 20, "value": 2.5},
                              {"timestamp": 30, "value": 3.0}]
    resp = api.post("/insert", json={"series": [one, other], "timestamps": [10, 10],
                                     "values": [9.0, 4.0]})
    assert resp.status_code == 201
    assert api.range(one, start=10, end=10) == [{"timestamp": 10, "value": 9.0}]
    assert api.range(other) == [{"timestamp": 10, "value": 4.0}]
    bad = api.post("/insert", json={"series": other, "timestamps": [11, -1], "values": [1, 2]})
    assert_error(bad, 400, "point 1")
    assert api.range(other) == [{"timestamp": 10, "value": 4.0}]  # nothing of it stored
