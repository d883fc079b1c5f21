"""Unit tests for count.cluster.failure: the phi accrual failure detector."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster.failure import PhiAccrualDetector

STEP_S = 0.05


def detector(**overrides: float) -> PhiAccrualDetector:
    kwargs = {"expected_interval_s": 1.0, "failure_timeout_s": 4.0} | overrides
    return PhiAccrualDetector(**kwargs)


def beat_regularly(det: PhiAccrualDetector, count: int, start_s: float = 0.0,
                   seed: int = 0) -> float:
    """``count`` heartbeats about 1 s apart (jitter +-0.1 s); returns the time of the last."""
    rng = random.Random(seed)
    now_s = start_s
    for _ in range(count):
        det.heartbeat(now_s)
        now_s += 1.0 + rng.uniform(-0.1, 0.1)
    return det.last_heartbeat_s


def first_unavailable_s(det: PhiAccrualDetector, horizon_s: float = 10.0) -> float:
    """Seconds after the last heartbeat at which the detector first says unavailable."""
    last_s = det.last_heartbeat_s
    for step in range(int(horizon_s / STEP_S) + 1):
        if not det.available(last_s + step * STEP_S):
            return step * STEP_S
    raise AssertionError("still available at the horizon")


def test_unavailable_before_the_first_heartbeat():
    det = detector()
    assert det.last_heartbeat_s is None
    assert det.phi(0.0) == 0.0
    assert not det.available(0.0)
    det.heartbeat(5.0)
    assert det.last_heartbeat_s == 5.0
    assert det.available(5.0)


def test_one_heartbeat_is_enough_to_judge():
    det = detector()
    det.heartbeat(0.0)
    assert det.available(1.0)
    assert 1.5 < first_unavailable_s(det) < 4.0


@pytest.mark.parametrize("seed", range(20))
def test_silent_node_is_unavailable_within_the_timeout_but_not_too_soon(seed):
    det = detector()
    beat_regularly(det, 50, seed=seed)
    silent_s = first_unavailable_s(det)
    assert 1.5 < silent_s <= 4.0


def test_phi_suspects_before_the_hard_timeout_with_regular_heartbeats():
    det = detector(failure_timeout_s=30.0)
    beat_regularly(det, 50)
    assert first_unavailable_s(det) < 3.0


def test_failure_timeout_is_a_hard_cap_whatever_phi_says():
    det = detector(threshold=1e9)  # phi alone would never suspect
    det.heartbeat(0.0)
    assert det.available(3.99)
    assert not det.available(4.0)


def test_one_heartbeat_after_a_long_outage_makes_the_node_available_at_once():
    det = detector()
    last_s = beat_regularly(det, 30)
    assert not det.available(last_s + 60.0)
    det.heartbeat(last_s + 60.0)
    assert det.available(last_s + 60.0)
    assert det.available(last_s + 61.0)


def test_an_outage_does_not_poison_the_statistics():
    det = detector()
    last_s = beat_regularly(det, 30)
    beat_regularly(det, 30, start_s=last_s + 60.0, seed=1)
    # Had the 60 s gap been recorded, the mean and deviation would keep phi low until the
    # hard cap; as it is, phi suspects the node as promptly as before the outage.
    assert first_unavailable_s(det) < 3.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.8, max_value=1.3), min_size=1, max_size=300))
def test_jittery_heartbeats_never_cause_a_false_unavailable(intervals_s):
    det = detector()
    now_s = 0.0
    det.heartbeat(now_s)
    for interval_s in intervals_s:
        for fraction in (0.25, 0.5, 0.75, 1.0):
            assert det.available(now_s + interval_s * fraction)
        now_s += interval_s
        det.heartbeat(now_s)


def test_the_window_forgets_old_intervals():
    det = detector(window=10, failure_timeout_s=10.0)
    for i in range(11):
        det.heartbeat(2.0 * i)  # ten 2 s intervals push the 1 s seed out
    # Every interval is 2 s, so at 2 s of silence the chance of a later heartbeat is 1/2.
    assert det.phi(20.0 + 2.0) == pytest.approx(math.log10(2.0), abs=1e-9)
    wide = detector(window=100, failure_timeout_s=10.0)
    for i in range(11):
        wide.heartbeat(2.0 * i)
    assert wide.phi(22.0) > det.phi(22.0)  # the seed still pulls the mean below 2 s


def test_deviation_is_floored():
    strict = detector(min_std_s=0.01)
    loose = detector()  # floor of expected / 4
    for det in (strict, loose):
        for i in range(20):
            det.heartbeat(float(i))  # no variation at all
    assert strict.phi(19.0 + 1.1) > 8.0
    assert loose.phi(19.0 + 1.1) < 1.0


@given(st.lists(st.floats(min_value=0.01, max_value=4.0), min_size=1, max_size=50),
       st.floats(min_value=0.0, max_value=1e6), st.floats(min_value=0.0, max_value=1e6))
def test_phi_is_finite_non_negative_and_grows_with_silence(intervals_s, a_s, b_s):
    det = detector(min_std_s=1e-6)
    now_s = 0.0
    det.heartbeat(now_s)
    for interval_s in intervals_s:
        now_s += interval_s
        det.heartbeat(now_s)
    early, late = sorted((a_s, b_s))
    phi_early, phi_late = det.phi(now_s + early), det.phi(now_s + late)
    assert math.isfinite(phi_early) and math.isfinite(phi_late)
    assert 0.0 <= phi_early <= phi_late


@pytest.mark.parametrize("kwargs", [
    {"expected_interval_s": 0.0},
    {"failure_timeout_s": 0.5},
    {"threshold": 0.0},
    {"window": 0},
    {"min_std_s": 0.0},
])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(AssertionError):
        detector(**kwargs)


def test_time_must_not_go_backwards():
    det = detector()
    det.heartbeat(10.0)
    with pytest.raises(AssertionError):
        det.heartbeat(9.0)
