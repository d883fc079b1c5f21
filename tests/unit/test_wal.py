"""Unit tests for count.storage.wal: the payload layout and the log file's replay rules."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.wal import WAL_FILE, WriteAheadLog, decode_points, encode_points


def columns(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32),
            rng.integers(0, 2**62, n, dtype=np.int64),
            rng.normal(0, 1e6, n),
            rng.integers(0, 2**64 - 1, n, dtype=np.uint64))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(0, 10**6))
def test_payload_round_trip(n, seed):
    cols = columns(n, seed)
    for got, want in zip(decode_points(encode_points(*cols)), cols, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_bad_payloads_raise_value_error():
    payload = encode_points(*columns(5))
    for cut in range(len(payload)):
        with pytest.raises(ValueError):
            decode_points(payload[:cut])
    with pytest.raises(ValueError):
        decode_points(payload + b"x")


def payloads(count: int) -> list[bytes]:
    return [encode_points(*columns(i + 1, i)) for i in range(count)]


def test_appends_replay_in_order_after_reopen(tmp_path):
    wal = WriteAheadLog(str(tmp_path), 1)
    assert list(wal.replay()) == []
    written = payloads(5)
    for p in written:
        wal.append(p)
    wal.close(truncate=False)
    again = WriteAheadLog(str(tmp_path), 1)
    assert list(again.replay()) == written
    again.append(b"more")  # resumes after the replayed records
    again.close(truncate=False)
    assert list(WriteAheadLog(str(tmp_path), 1).replay()) == written + [b"more"]


def test_records_of_another_generation_are_not_replayed(tmp_path):
    wal = WriteAheadLog(str(tmp_path), 3)
    for p in payloads(4):
        wal.append(p)
    wal.restart(4)  # a flush stored generation 3 elsewhere
    wal.append(b"new")
    wal.close(truncate=False)
    assert list(WriteAheadLog(str(tmp_path), 4).replay()) == [b"new"]
    assert list(WriteAheadLog(str(tmp_path), 5).replay()) == []
    # A generation whose flush committed but which never got a record: nothing to replay,
    # even though old records are still in the file.
    assert list(WriteAheadLog(str(tmp_path), 9).replay()) == []


def test_a_torn_or_corrupt_record_ends_the_replay(tmp_path):
    wal = WriteAheadLog(str(tmp_path), 1)
    written = payloads(3)
    for p in written:
        wal.append(p)
    wal.close(truncate=False)
    path = os.path.join(tmp_path, WAL_FILE)
    with open(path, "r+b") as f:  # flip one byte inside the last record's payload
        data = f.read()
        end = sum(16 + len(p) for p in written)
        f.seek(end - 3)
        f.write(bytes([data[end - 3] ^ 0xFF]))
    assert list(WriteAheadLog(str(tmp_path), 1).replay()) == written[:2]
    for cut in (end - 1, end - len(written[-1]) - 8):  # torn payload, torn header
        os.truncate(path, cut)
        assert list(WriteAheadLog(str(tmp_path), 1).replay()) == written[:2]


def test_close_truncate_gives_the_space_back(tmp_path):
    wal = WriteAheadLog(str(tmp_path), 1)
    wal.append(encode_points(*columns(1000)))
    assert os.path.getsize(os.path.join(tmp_path, WAL_FILE)) > 0
    wal.close(truncate=True)
    assert os.path.getsize(os.path.join(tmp_path, WAL_FILE)) == 0
    assert list(WriteAheadLog(str(tmp_path), 1).replay()) == []
