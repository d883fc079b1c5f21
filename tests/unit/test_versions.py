"""Unit tests for count.storage.versions: the hybrid logical clock behind last-write-wins."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.storage.versions import TAG_BITS, VersionClock, node_tag, version_ms

TAG_MASK = (1 << TAG_BITS) - 1
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms


def _strictly_increasing(values):
    return all(b > a for a, b in itertools.pairwise(values))


def test_first_version_carries_wall_clock_milliseconds_and_tag():
    clock = VersionClock(0x1234, now_ms=lambda: NOW)
    v = clock.next()
    assert version_ms(v) == NOW
    assert v & TAG_MASK == 0x1234


def test_default_clock_uses_wall_time():
    import time

    before = time.time_ns() // 1_000_000
    v = VersionClock(7).next()
    after = time.time_ns() // 1_000_000
    assert before <= version_ms(v) <= after
    assert v & TAG_MASK == 7


@pytest.mark.parametrize("tag", [0, 1, 0xBEEF, TAG_MASK])
def test_frozen_clock_still_strictly_increasing(tag):
    clock = VersionClock(tag, now_ms=lambda: NOW)
    versions = [clock.next() for _ in range(5000)]
    assert _strictly_increasing(versions)
    assert all(v & TAG_MASK == tag for v in versions)
    # 64 writes fit one frozen millisecond; more run the clock ahead, never backwards
    assert version_ms(versions[0]) == NOW
    assert version_ms(versions[63]) == NOW
    assert version_ms(versions[-1]) == NOW + 5000 // 64


def test_backwards_clock_still_strictly_increasing():
    now = iter(range(NOW, NOW - 10_000, -7))
    clock = VersionClock(3, now_ms=lambda: next(now))
    versions = [clock.next() for _ in range(1000)]
    assert _strictly_increasing(versions)
    assert all(version_ms(v) >= NOW for v in versions)


def test_clock_jumping_back_far():
    times = [NOW, NOW + 5, NOW - 3_600_000, NOW - 3_600_000, NOW + 1]
    it = iter(times)
    clock = VersionClock(9, now_ms=lambda: next(it))
    versions = [clock.next() for _ in times]
    assert _strictly_increasing(versions)


def test_clock_moving_forward_follows_wall_time():
    now = iter(range(NOW, NOW + 1000 * 50, 50))
    clock = VersionClock(1, now_ms=lambda: next(now))
    versions = [clock.next() for _ in range(1000)]
    assert _strictly_increasing(versions)
    assert [version_ms(v) for v in versions] == list(range(NOW, NOW + 1000 * 50, 50))


def test_consecutive_versions_of_one_millisecond_are_one_step_apart():
    clock = VersionClock(0xABCD, now_ms=lambda: NOW)
    versions = [clock.next() for _ in range(100)]
    assert {b - a for a, b in itertools.pairwise(versions)} == {1 << TAG_BITS}


def test_observe_moves_past_a_higher_version():
    clock = VersionClock(5, now_ms=lambda: NOW)
    other = VersionClock(6, now_ms=lambda: NOW + 60_000)
    seen = other.next()
    clock.observe(seen)
    v = clock.next()
    assert v > seen
    assert v & TAG_MASK == 5
    assert version_ms(v) >= NOW + 60_000


def test_observe_lower_version_changes_nothing():
    clock = VersionClock(5, now_ms=lambda: NOW)
    first = clock.next()
    clock.observe(1)
    clock.observe(first - 1)
    second = clock.next()
    assert second > first
    assert second & TAG_MASK == 5


def test_observe_foreign_version_with_same_ms_and_higher_tag():
    clock = VersionClock(1, now_ms=lambda: NOW)
    mine = clock.next()
    foreign = mine | TAG_MASK  # same second and logical step, higher tag
    clock.observe(foreign)
    assert clock.next() > foreign


@settings(max_examples=150, deadline=None)
@given(
    tag=st.integers(0, TAG_MASK),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("next"), st.integers(0, 1 << 43)),
            st.tuples(st.just("observe"), st.integers(0, (1 << 63) - 1)),
        ),
        min_size=1, max_size=60,
    ),
)
def test_versions_exceed_everything_minted_or_observed(tag, ops):
    clock_time = [0]
    clock = VersionClock(tag, now_ms=lambda: clock_time[0])
    highest = -1
    for op, value in ops:
        if op == "next":
            clock_time[0] = value
            v = clock.next()
            assert v > highest
            assert v & TAG_MASK == tag
            assert version_ms(v) >= value
            highest = v
        else:
            clock.observe(value)
            highest = max(highest, value)


@given(ms=st.integers(0, (1 << 44) - 1), tag=st.integers(0, TAG_MASK))
@settings(max_examples=100, deadline=None)
def test_version_ms_inverts_a_fresh_clock(ms, tag):
    assert version_ms(VersionClock(tag, now_ms=lambda: ms).next()) == ms


def test_version_ms_orders_like_versions():
    clock = VersionClock(0xFFFF, now_ms=lambda: NOW)
    later = VersionClock(0, now_ms=lambda: NOW + 1000)
    a, b = clock.next(), later.next()
    assert a < b
    assert version_ms(a) < version_ms(b)


def test_node_tag_is_stable_and_16_bit():
    ids = [1, 2, 3, "count-cluster-0", "count-cluster-1", "n" * 63]
    tags = [node_tag(i) for i in ids]
    assert tags == [node_tag(i) for i in ids]
    assert all(0 <= t <= TAG_MASK for t in tags)
    assert len(set(tags)) == len(tags)
    assert node_tag(1) == node_tag("1")


def test_clocks_with_different_tags_never_collide():
    a = VersionClock(node_tag("a"), now_ms=lambda: NOW)
    b = VersionClock(node_tag("b"), now_ms=lambda: NOW)
    assert node_tag("a") != node_tag("b")
    minted_a = {a.next() for _ in range(200)}
    minted_b = {b.next() for _ in range(200)}
    assert not minted_a & minted_b
