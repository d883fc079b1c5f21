"""Tests for count.storage.codec: exact round trips, corruption handling, input checks, size."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from count.storage.codec import (
    FORMAT_VERSION,
    BlockHeader,
    block_header,
    decode_block,
    encode_block,
)

MAX_TS_MS = 2**63 - 1
U64_MAX = 2**64 - 1


def assert_round_trip(ts: np.ndarray, values: np.ndarray, versions: np.ndarray) -> bytes:
    """Encode, decode (from bytes and from a memoryview) and compare bit-exactly; return the block."""
    block = encode_block(ts, values, versions)
    for buf in (block, memoryview(block)):
        got_ts, got_values, got_versions = decode_block(buf)
        assert got_ts.dtype == np.int64 and got_values.dtype == np.float64 and got_versions.dtype == np.uint64
        np.testing.assert_array_equal(got_ts, np.asarray(ts, dtype=np.int64))
        np.testing.assert_array_equal(got_values.view(np.uint64), np.asarray(values, dtype=np.float64).view(np.uint64))
        np.testing.assert_array_equal(got_versions, np.asarray(versions, dtype=np.uint64))
    assert block_header(block) == BlockHeader(len(ts), int(ts[0]), int(ts[-1]))
    return block


def random_walk(n: int, seed: int = 0) -> np.ndarray:
    """The benchmark's values: a N(0, 1) random walk rounded to 2 decimals."""
    rng = np.random.default_rng(seed)
    return np.round(np.cumsum(rng.normal(0, 1.0, n)) + 100, 2)


def regular_ts(n: int) -> np.ndarray:
    return 1_700_000_000_000 + 10_000 * np.arange(n, dtype=np.int64)


# ---------------------------------------------------------------------------
# generated data: hypothesis picks the regime and parameters, numpy draws the
# (up to 5000-point) arrays, which keeps the examples fast


def make_timestamps(rng: np.random.Generator, n: int, kind: str, start: int) -> np.ndarray:
    if kind == "regular":
        step = int(rng.integers(1, 100_000))
        gaps = np.full(n - 1, step)
    elif kind == "jitter":
        gaps = 10_000 + rng.integers(-50, 51, n - 1)
    elif kind == "missing":
        gaps = 1000 * rng.choice([1, 1, 1, 1, 1, 1, 1, 2, 5], n - 1)
    elif kind == "small":
        gaps = rng.integers(1, 4, n - 1)
    else:  # "huge": gaps up to 2**60
        gaps = rng.integers(1, 2**60, n - 1, dtype=np.int64) >> rng.integers(0, 60, n - 1)
        gaps = np.maximum(gaps, 1)
    span = int(gaps.sum(dtype=object)) if n > 1 else 0
    if span > MAX_TS_MS:  # keep the block inside int64
        gaps = np.maximum(gaps // (span // MAX_TS_MS + 1), 1)
        span = int(gaps.sum(dtype=object))
    start = min(start, MAX_TS_MS - span)
    return start + np.concatenate(([0], np.cumsum(gaps))).astype(np.int64)


def make_values(rng: np.random.Generator, n: int, kind: str, places: int) -> np.ndarray:
    if kind == "bits":  # any bit pattern: NaN payloads, inf, subnormals, -0.0
        return rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64)
    if kind == "finite":
        values = rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64)
        return np.where(np.isfinite(values), values, 1.5)
    if kind == "decimal":
        return np.round(rng.normal(0, 10.0 ** rng.integers(0, 8), n), places)
    if kind == "walk":
        return np.round(np.cumsum(rng.normal(0, 1, n)), places)
    if kind == "huge":
        return rng.choice([1e300, -1e300, 2.0**60, 1e-300, 5e-324, 1.7976931348623157e308], n)
    if kind == "specials":  # decimals sprinkled with values the decimal path cannot hold
        values = np.round(rng.normal(0, 100, n), places)
        specials = np.array([-0.0, np.nan, np.inf, -np.inf, 1e300, 0.1 + 0.2, np.float64(2**-1074)])
        where = rng.random(n) < rng.choice([0.001, 0.01, 0.2])
        values[where] = rng.choice(specials, int(where.sum()))
        return values
    if kind == "constant":
        return np.full(n, rng.choice([0.0, -0.0, 42.5, np.nan]))
    # "integers"
    return rng.integers(-(2**60), 2**60, n).astype(np.float64)


def make_versions(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "equal":
        return np.full(n, rng.choice(np.array([0, 1, 2**50, U64_MAX], dtype=np.uint64)), dtype=np.uint64)
    if kind == "runs":
        run_values = 2**50 + np.cumsum(rng.integers(5, 11, n), dtype=np.uint64)
        return np.repeat(run_values, rng.integers(1, 20, n))[:n]
    if kind == "wrapping":  # deltas that wrap around 2**64
        return rng.choice(np.array([0, 1, U64_MAX, U64_MAX - 1, 2**63], dtype=np.uint64), n)
    return rng.integers(0, 2**64, n, dtype=np.uint64)  # "random"


@st.composite
def blocks(draw: st.DrawFn, max_points: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.one_of(st.integers(1, 10), st.integers(1, max_points)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    start = draw(st.sampled_from([0, 1, 1_700_000_000_000, 2**62, MAX_TS_MS]))
    ts = make_timestamps(rng, n, draw(st.sampled_from(["regular", "jitter", "missing", "small", "huge"])), start)
    kinds = ["bits", "finite", "decimal", "walk", "huge", "specials", "constant", "integers"]
    values = make_values(rng, n, draw(st.sampled_from(kinds)), draw(st.integers(0, 6)))
    versions = make_versions(rng, n, draw(st.sampled_from(["equal", "runs", "wrapping", "random"])))
    return ts, values, versions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_round_trip_generated(block: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    assert_round_trip(*block)


finite_or_special = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 2**40), finite_or_special, st.integers(0, U64_MAX)), min_size=1, max_size=60),
    st.integers(0, 2**62),
)
def test_round_trip_hypothesis_values(points: list[tuple[int, float, int]], start: int) -> None:
    gaps, values, versions = zip(*points)
    ts = start + np.cumsum(np.array((0,) + gaps[1:], dtype=np.int64))
    assert_round_trip(ts, np.array(values, dtype=np.float64), np.array(versions, dtype=np.uint64))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False), min_size=1, max_size=300),
    st.integers(0, 6),
)
def test_round_trip_decimals(decimals: list, places: int) -> None:
    values = np.round(np.array([float(d) for d in decimals]), places)
    n = len(values)
    assert_round_trip(regular_ts(n), values, np.zeros(n, dtype=np.uint64))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 64, 65, 100])
def test_small_blocks(n: int) -> None:
    rng = np.random.default_rng(n)
    assert_round_trip(regular_ts(n), random_walk(n, n), np.full(n, 7, dtype=np.uint64))
    ts = np.cumsum(rng.integers(1, 1000, n)).astype(np.int64)
    assert_round_trip(ts, rng.normal(size=n), rng.integers(0, 2**64, n, dtype=np.uint64))


def test_strided_and_byte_swapped_inputs() -> None:
    n = 500
    ts, values, versions = regular_ts(2 * n), random_walk(2 * n), np.arange(2 * n, dtype=np.uint64)
    block = encode_block(ts[::2].astype(">i8"), values[::2].astype(">f8"), versions[::2].astype(">u8"))
    for got, expected in zip(decode_block(block), (ts[::2], values[::2], versions[::2])):
        np.testing.assert_array_equal(got, expected)
    assert_round_trip(ts[::2], values[1::2], versions[::-2])


def test_extreme_timestamps() -> None:
    for ts in ([0], [MAX_TS_MS], [0, MAX_TS_MS], [0, 1, MAX_TS_MS], [0, MAX_TS_MS - 1, MAX_TS_MS], [2**62, 2**62 + 1]):
        n = len(ts)
        assert_round_trip(np.array(ts, dtype=np.int64), np.zeros(n), np.zeros(n, dtype=np.uint64))


def test_special_values_round_trip_bit_exactly() -> None:
    payload_nan = np.array([0x7FF0000000000001, 0xFFF8DEADBEEF0000], dtype=np.uint64).view(np.float64)
    values = np.concatenate([[-0.0, 0.0, np.inf, -np.inf, 5e-324, -5e-324, 2.2250738585072014e-308], payload_nan])
    n = len(values)
    assert_round_trip(regular_ts(n), values, np.arange(n, dtype=np.uint64))


def test_rare_negative_zero_keeps_the_decimal_path() -> None:
    """A random walk through zero rounds some values to -0.0; they must not cost 8 bytes per point."""
    n = 10_000
    values = random_walk(n)
    values[[10, 5000, 9999]] = -0.0
    block = assert_round_trip(regular_ts(n), values, np.zeros(n, dtype=np.uint64))
    assert len(block) / n < 1.2


def test_all_nan_block() -> None:
    n = 1000
    assert_round_trip(regular_ts(n), np.full(n, np.nan), np.zeros(n, dtype=np.uint64))


# ---------------------------------------------------------------------------
# buffers: memoryviews, no references kept, scratch reuse, threads


def test_decoded_arrays_do_not_reference_the_buffer() -> None:
    n = 3000
    ts, values, versions = regular_ts(n), random_walk(n), np.full(n, 3, dtype=np.uint64)
    backing = bytearray(encode_block(ts, values, versions))
    view = memoryview(backing)
    got = decode_block(view)
    view.release()  # fails with BufferError if anything still exports the buffer
    backing[:] = bytes(len(backing))
    for array, expected in zip(got, (ts, values, versions)):
        assert array.flags.writeable
        np.testing.assert_array_equal(array, expected)


def test_decode_accepts_other_buffer_types() -> None:
    n = 10
    block = encode_block(regular_ts(n), random_walk(n), np.zeros(n, dtype=np.uint64))
    for buf in (bytearray(block), memoryview(block).cast("c"), np.frombuffer(block, dtype=np.uint8)):
        np.testing.assert_array_equal(decode_block(buf)[1], random_walk(n))
        assert block_header(buf).count == n


def test_large_block() -> None:
    """Beyond the per-thread scratch buffers' size limit."""
    n = 300_000
    rng = np.random.default_rng(5)
    assert_round_trip(regular_ts(n), random_walk(n), np.repeat(np.arange(n // 10, dtype=np.uint64), 10))
    assert_round_trip(np.cumsum(rng.integers(1, 10, n)), rng.normal(size=n), np.zeros(n, dtype=np.uint64))


def test_results_survive_later_decodes() -> None:
    """Decoding reuses per-thread scratch buffers; earlier results must not change."""
    first = decode_block(encode_block(regular_ts(5000), random_walk(5000, 1), np.zeros(5000, dtype=np.uint64)))
    expected = [array.copy() for array in first]
    decode_block(encode_block(regular_ts(7000), random_walk(7000, 2), np.ones(7000, dtype=np.uint64)))
    for array, copy in zip(first, expected):
        np.testing.assert_array_equal(array, copy)


def test_concurrent_decodes() -> None:
    inputs = [(regular_ts(4000 + i), random_walk(4000 + i, i), np.full(4000 + i, i, dtype=np.uint64)) for i in range(4)]
    encoded = [encode_block(*columns) for columns in inputs]
    failures: list[int] = []

    def work(i: int) -> None:
        for _ in range(20):
            got = decode_block(encoded[i])
            if not all(np.array_equal(a, b) for a, b in zip(got, inputs[i])):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ---------------------------------------------------------------------------
# corrupt input


@pytest.fixture(scope="module")
def small_blocks() -> list[bytes]:
    """A few small blocks covering the different sections."""
    rng = np.random.default_rng(7)
    n = 40
    jittery_ts = regular_ts(n) + rng.integers(0, 5, n)
    return [
        encode_block(regular_ts(n), random_walk(n), np.full(n, 2**50, dtype=np.uint64)),
        encode_block(jittery_ts, rng.normal(size=n), np.repeat(np.arange(4, dtype=np.uint64) * 7, 10)),
        encode_block(
            regular_ts(n), np.where(rng.random(n) < 0.05, -0.0, random_walk(n)), rng.integers(0, 9, n).astype(np.uint64)
        ),
    ]


def test_every_truncation_raises(small_blocks: list[bytes]) -> None:
    for block in small_blocks:
        for size in range(len(block)):
            with pytest.raises(ValueError):
                decode_block(block[:size])


def test_every_bit_flip_raises(small_blocks: list[bytes]) -> None:
    for block in small_blocks:
        for position in range(len(block)):
            for bit in range(8):
                corrupt = bytearray(block)
                corrupt[position] ^= 1 << bit
                with pytest.raises(ValueError):
                    decode_block(bytes(corrupt))


def _header_fits(buf: bytes) -> bool:
    try:
        block_header(buf)
    except ValueError:
        return False
    return True


def test_corrupt_body_with_valid_checksum_never_crashes(small_blocks: list[bytes]) -> None:
    """Past the CRC, a damaged body may decode to other data but must only ever raise ValueError."""
    for block in small_blocks:
        body_start = next(size for size in range(len(block)) if _header_fits(block[:size]))
        for position in range(body_start, len(block) - 4):
            for mask in (0x01, 0x10, 0x80, 0xFF):
                corrupt = bytearray(block[:-4])
                corrupt[position] ^= mask
                try:
                    decode_block(bytes(corrupt) + zlib.crc32(corrupt).to_bytes(4, "little"))
                except ValueError:
                    pass


def test_unknown_format_version(small_blocks: list[bytes]) -> None:
    corrupt = bytes([FORMAT_VERSION + 1]) + small_blocks[0][1:]
    with pytest.raises(ValueError, match="format version"):
        decode_block(corrupt)
    with pytest.raises(ValueError, match="format version"):
        block_header(corrupt)


def test_garbage_and_empty_buffers() -> None:
    rng = np.random.default_rng(3)
    for size in (0, 1, 5, 30, 1000):
        garbage = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        if garbage:
            garbage[0] = FORMAT_VERSION
        with pytest.raises(ValueError):
            decode_block(bytes(garbage))
    with pytest.raises(ValueError):
        block_header(b"")


def test_block_header_does_not_need_the_body(small_blocks: list[bytes]) -> None:
    block = small_blocks[0]
    header = block_header(block)
    assert header == BlockHeader(40, int(regular_ts(40)[0]), int(regular_ts(40)[-1]))
    assert block_header(block[:14]) == header  # the header's 13 bytes (varints) are enough


# ---------------------------------------------------------------------------
# bad input to encode


@pytest.mark.parametrize(
    ("ts", "values", "versions"),
    [
        ([], [], []),  # empty
        ([1, 2, 3], [1.0, 2.0], [0, 0, 0]),  # length mismatch
        ([1, 2, 3], [1.0, 2.0, 3.0], [0, 0]),  # length mismatch
        ([1, 3, 2], [1.0, 2.0, 3.0], [0, 0, 0]),  # unsorted
        ([1, 2, 2], [1.0, 2.0, 3.0], [0, 0, 0]),  # duplicate
        ([-5, 2, 3], [1.0, 2.0, 3.0], [0, 0, 0]),  # negative
        ([1.0, 2.0], [1.0, 2.0], [0, 0]),  # float timestamps
        ([1, 2], ["a", "b"], [0, 0]),  # non-float values
        ([1, 2], [1.0, 2.0], [-1, 0]),  # negative version
        (np.array([1, 2**63], dtype=np.uint64), [1.0, 2.0], [0, 0]),  # beyond int64
        ([[1, 2]], [[1.0, 2.0]], [[0, 0]]),  # not 1-D
    ],
)
def test_bad_input_raises(ts: list, values: list, versions: list) -> None:
    with pytest.raises(ValueError):
        encode_block(np.array(ts), np.array(values), np.array(versions))


# ---------------------------------------------------------------------------
# size


def test_random_walk_size_target() -> None:
    """Benchmark data: 10 s spacing, 2-decimal random walk, one version: <= 1.11 bytes/point."""
    n = 10_000
    block = encode_block(regular_ts(n), random_walk(n, seed=0), np.full(n, 2**50 + 12345, dtype=np.uint64))
    assert len(block) / n <= 1.11


def test_version_runs_are_cheap() -> None:
    """Runs of 10 points, each run's version 5..10 above the last: about 2.7 bits per run."""
    n = 10_000
    rng = np.random.default_rng(0)
    run_versions = np.repeat(2**50 + np.cumsum(rng.integers(5, 11, n // 10), dtype=np.uint64), 10)
    ts, values = regular_ts(n), random_walk(n)
    equal = len(encode_block(ts, values, np.full(n, 2**50, dtype=np.uint64)))
    runs = len(encode_block(ts, values, run_versions))
    assert (runs - equal) / n <= 0.036
