"""Unit tests for count.storage.wal: the write-ahead log record."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.wal import decode_wal_record, encode_wal_record


def arrays(sid, ts, val, ver):
    return (np.asarray(sid, np.uint32), np.asarray(ts, np.int64), np.asarray(val, np.float64),
            np.asarray(ver, np.uint64))


def assert_same(decoded, original):
    names = ("sid", "ts", "val", "ver")
    for name, got, want, dtype in zip(names, decoded, original,
                                      (np.uint32, np.int64, np.float64, np.uint64), strict=True):
        assert got.dtype == dtype, name
        if dtype == np.float64:
            got, want = got.view(np.uint64), np.asarray(want, np.float64).view(np.uint64)
        np.testing.assert_array_equal(got, want, err_msg=name)


SAMPLE = arrays([3, 1, 3], [30, 10, -5], [1.5, -0.0, float("nan")], [7, 2**64 - 1, 0])


def test_round_trip():
    assert_same(decode_wal_record(encode_wal_record(*SAMPLE)), SAMPLE)


def test_round_trip_from_memoryview():
    assert_same(decode_wal_record(memoryview(encode_wal_record(*SAMPLE))), SAMPLE)


def test_empty_record():
    empty = arrays([], [], [], [])
    decoded = decode_wal_record(encode_wal_record(*empty))
    assert all(len(a) == 0 for a in decoded)
    assert_same(decoded, empty)


def test_decoded_arrays_are_writable_copies():
    data = bytearray(encode_wal_record(*SAMPLE))
    decoded = decode_wal_record(data)
    data[:] = bytes(len(data))
    assert_same(decoded, SAMPLE)
    decoded[1][0] = 99  # the caller may modify them


def test_other_integer_dtypes_are_converted():
    sid = np.array([1, 2], np.int64)
    ts = np.array([1, 2], np.int32)
    val = np.array([1, 2], np.float32)
    ver = np.array([1, 2], np.int64)
    assert_same(decode_wal_record(encode_wal_record(sid, ts, val, ver)),
                arrays([1, 2], [1, 2], [1.0, 2.0], [1, 2]))


@pytest.mark.parametrize("cut", [0, 1, 15, 16, 17, -1, -4, -28])
def test_truncated_record_raises(cut):
    data = encode_wal_record(*SAMPLE)
    with pytest.raises(ValueError):
        decode_wal_record(data[:cut])


def test_trailing_garbage_raises():
    with pytest.raises(ValueError):
        decode_wal_record(encode_wal_record(*SAMPLE) + b"\x00")


@pytest.mark.parametrize("fmt", [0, 2, 0xFF])
def test_wrong_format_byte_raises(fmt):
    data = bytearray(encode_wal_record(*SAMPLE))
    data[0] = fmt
    with pytest.raises(ValueError):
        decode_wal_record(bytes(data))


@pytest.mark.parametrize("count", [0, 2, 4, 2**63])
def test_corrupt_point_count_raises(count):
    data = bytearray(encode_wal_record(*SAMPLE))
    data[8:16] = count.to_bytes(8, "little")
    with pytest.raises(ValueError):
        decode_wal_record(bytes(data))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=100))
def test_garbage_raises_value_error_or_decodes(blob):
    try:
        decoded = decode_wal_record(blob)
    except ValueError:
        return
    # only well-framed input decodes, and then into equal-length columns
    assert len({len(a) for a in decoded}) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**63), 2**63 - 1),
                          st.floats(width=64), st.integers(0, 2**64 - 1)), max_size=80))
def test_round_trip_property(points):
    cols = arrays(*zip(*points, strict=True)) if points else arrays([], [], [], [])
    data = encode_wal_record(*cols)
    assert len(data) == 16 + 28 * len(points)
    assert_same(decode_wal_record(data), cols)
