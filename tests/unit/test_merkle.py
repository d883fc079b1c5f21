"""Unit tests for count.cluster.merkle: anti-entropy digests and read-repair differences."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster.merkle import (
    BUCKET_MS,
    DIGEST_BYTES,
    bucket_digests,
    combine,
    differing,
    newer_points,
)
from count.storage.merge import EMPTY, Columns, concat, merge_sorted

HOUR_MS = 3_600_000


def cols(ts, val, ver) -> Columns:
    return Columns(np.asarray(ts, np.int64), np.asarray(val, np.float64),
                   np.asarray(ver, np.uint64))


def sample() -> Columns:
    """Points in three hourly buckets (one negative), a few per bucket."""
    ts = [-5, 0, 10, 3_599_999, HOUR_MS, HOUR_MS + 7, 5 * HOUR_MS + 1]
    return cols(ts, [1.5, 2.0, -0.0, float("nan"), 1e300, 3.0, 4.0], [1, 2, 3, 4, 5, 6, 7])


def assert_columns_equal(a: Columns, b: Columns) -> None:
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.val.view(np.uint64), b.val.view(np.uint64))
    np.testing.assert_array_equal(a.ver, b.ver)


def with_value_bits(c: Columns, i: int, flip: int) -> Columns:
    bits = c.val.view(np.uint64).copy()
    bits[i] ^= np.uint64(flip)
    return Columns(c.ts, bits.view(np.float64), c.ver)


def test_constants():
    assert BUCKET_MS == HOUR_MS
    assert DIGEST_BYTES == 16


def test_bucket_keys_and_digest_format():
    digests = bucket_digests(sample())
    assert list(digests) == [-HOUR_MS, 0, HOUR_MS, 5 * HOUR_MS]
    assert all(type(k) is int for k in digests)
    assert all(len(d) == DIGEST_BYTES for d in digests.values())
    assert bucket_digests(EMPTY) == {}


def test_bucket_digest_is_blake2b_of_little_endian_rows():
    c = cols([HOUR_MS + 1, HOUR_MS + 2], [0.5, -2.0], [9, 2**64 - 1])
    raw = b"".join(int(t).to_bytes(8, "little", signed=True) + np.float64(v).tobytes()
                   + int(r).to_bytes(8, "little") for t, v, r in zip(c.ts, c.val, c.ver))
    assert np.little_endian  # np.float64.tobytes() above is native order
    assert bucket_digests(c) == {HOUR_MS: hashlib.blake2b(raw, digest_size=16).digest()}


def test_custom_bucket_size():
    c = cols([0, 9, 10, 25], [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1])
    assert list(bucket_digests(c, bucket_ms=10)) == [0, 10, 20]


def test_equal_data_equal_digests_however_built():
    c = sample()
    # from parts concatenated, from a last-write-wins merge with superseded points, from
    # strided views and big-endian arrays
    parts = concat([Columns(c.ts[:3], c.val[:3], c.ver[:3]),
                    Columns(c.ts[3:], c.val[3:], c.ver[3:])])
    older = Columns(c.ts[::2], c.val[::2] + 1, c.ver[::2] - np.uint64(1))
    merged = merge_sorted([older, c])
    wide = Columns(np.repeat(c.ts, 2)[::2], np.repeat(c.val, 2)[::2], np.repeat(c.ver, 2)[::2])
    swapped = Columns(c.ts.astype(">i8"), c.val.astype(">f8"), c.ver.astype(">u8"))
    want = bucket_digests(c)
    for other in (parts, merged, wide, swapped):
        assert bucket_digests(other) == want


def test_change_alters_exactly_that_bucket():
    c = sample()
    base = bucket_digests(c)
    changed_value = with_value_bits(c, 5, 1)  # lowest mantissa bit of a point in bucket 1h
    ver = c.ver.copy()
    ver[1] += np.uint64(1)  # a version in bucket 0
    changed_version = Columns(c.ts, c.val, ver)
    sign = with_value_bits(c, 2, 1 << 63)  # -0.0 -> 0.0, bucket 0
    extra = merge_sorted([c, cols([HOUR_MS + 3], [9.0], [1])])
    cases = [(changed_value, HOUR_MS), (changed_version, 0), (sign, 0), (extra, HOUR_MS)]
    for other, bucket in cases:
        got = bucket_digests(other)
        assert got.keys() == base.keys()
        assert [k for k in base if got[k] != base[k]] == [bucket]


def test_extra_point_in_new_bucket_adds_only_that_bucket():
    c = sample()
    base = bucket_digests(c)
    got = bucket_digests(merge_sorted([c, cols([3 * HOUR_MS], [1.0], [1])]))
    assert got.keys() == base.keys() | {3 * HOUR_MS}
    assert all(got[k] == base[k] for k in base)


def test_combine_ignores_insertion_order_and_sees_every_change():
    children = {k: bytes([k % 256]) * 16 for k in (5, -1, 300, 0)}
    reordered = dict(sorted(children.items(), reverse=True))
    assert combine(children) == combine(reordered)
    assert len(combine(children)) == DIGEST_BYTES
    assert combine({}) == bytes(16)
    assert combine({"s": bytes(16)}) != bytes(16)
    changed_digest = {**children, 300: bytes(16)}
    changed_key = {(6 if k == 5 else k): d for k, d in children.items()}
    fewer = {k: d for k, d in children.items() if k != 0}
    results = {combine(children), combine(changed_digest), combine(changed_key), combine(fewer)}
    assert len(results) == 4
    # keys compare by repr: the series name "1" and the range 1 are different children
    assert combine({"1": bytes(16)}) != combine({1: bytes(16)})


def test_combine_of_string_keys_is_unambiguous():
    d = bytes(16)
    assert combine({"a": d, "bc": d}) != combine({"ab": d, "c": d})


def test_differing():
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    assert differing({}, {}) == []
    assert differing({1: a, 2: b}, {2: b, 1: a}) == []
    assert differing({1: a, 2: b, 3: c}, {1: a, 2: c, 4: c}) == [2, 3, 4]
    assert differing({"y": a}, {}) == ["y"]
    assert differing({}, {"x": a, "w": b}) == ["w", "x"]


def test_newer_points_of_identical_columns_is_empty():
    c = sample()
    assert len(newer_points(c, c)) == 0
    assert len(newer_points(EMPTY, c)) == 0
    assert_columns_equal(newer_points(c, EMPTY), c)


def test_newer_points_compares_value_bits_and_version():
    ref = cols([1, 2, 3, 4, 5], [0.0, 1.0, 2.0, float("nan"), 4.0], [1, 1, 2, 1, 1])
    replica = cols([0, 1, 2, 4, 5], [7.0, -0.0, 1.0, float("nan"), 4.0], [1, 1, 1, 1, 0])
    got = newer_points(ref, replica)
    assert got.ts.dtype == np.int64 and got.val.dtype == np.float64 and got.ver.dtype == np.uint64
    # 1: sign bit differs; 3: missing; 5: version differs; 2 and 4 (same NaN bits) match
    assert got.ts.tolist() == [1, 3, 5]
    assert got.ver.tolist() == [1, 2, 1]


points = st.dictionaries(st.integers(-10 * HOUR_MS, 10 * HOUR_MS),
                         st.tuples(st.floats(allow_nan=True, width=64), st.integers(1, 2**64 - 1)),
                         max_size=60)


@given(reference_points=points, data=st.data())
@settings(max_examples=200, deadline=None)
def test_newer_points_repairs_replica(reference_points, data):
    keys = sorted(reference_points)
    reference = cols(keys, [reference_points[k][0] for k in keys],
                     [reference_points[k][1] for k in keys])
    # replica: each point kept, dropped, given another value at the same or an older
    # version, or kept at an older version
    actions = data.draw(st.lists(st.sampled_from(["keep", "drop", "value", "older"]),
                                 min_size=len(keys), max_size=len(keys)))
    new_val = data.draw(st.lists(st.floats(width=64), min_size=len(keys), max_size=len(keys)))
    r_ts, r_val, r_ver = [], [], []
    for k, action, other in zip(keys, actions, new_val, strict=True):
        val, ver = reference_points[k]
        if action == "drop":
            continue
        if action == "value":
            val = other
            ver = data.draw(st.integers(0, ver))
        elif action == "older":
            ver -= 1
        r_ts.append(k)
        r_val.append(val)
        r_ver.append(ver)
    replica = cols(r_ts, r_val, r_ver)

    sent = newer_points(reference, replica)
    # last-write-wins by version, ties to the sent (later) part
    assert_columns_equal(merge_sorted([replica, sent]), reference)
    assert len(newer_points(reference, reference)) == 0
    # nothing already identical is sent
    assert len(sent) <= sum(a != "keep" for a in actions)
