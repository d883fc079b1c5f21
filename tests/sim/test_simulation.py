"""The simulation itself: one seed replays one run byte for byte, the checker passes the
real node and catches broken ones, and the command line says so with its exit status.

The hundred seeds CI judges run beside the test suite (``make sim-ci``); these tests run a
few, short, so that a change that breaks the simulation fails here first.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from count.sim.faults import KINDS, parse_kinds
from count.sim.run import simulate

pytestmark = pytest.mark.sim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "count.sim", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_same_seed_gives_the_same_line_in_another_process():
    """Dict and set orders of strings differ between processes (hash randomisation); the
    run must not depend on them, nor on where its temporary directories are."""
    args = ("--seed", "11", "--seconds", "25", "--faults", "all")
    first, second = _cli(*args, hash_seed="1"), _cli(*args, hash_seed="2")
    assert first.returncode == 0, first.stdout + first.stderr
    line = first.stdout.strip().splitlines()[-1]
    assert line == second.stdout.strip().splitlines()[-1]
    keys = [pair.split("=")[0] for pair in line.split()]
    assert keys[:9] == ["seed", "ops", "acked", "lost", "maybe", "phantom", "divergent",
                        "stale_reads", "errors"]
    assert keys[-2:] == ["faults", "digest"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_faulted_cluster_keeps_every_promise(seed):
    outcome = simulate(seed, nodes=5, seconds=30.0, kinds=KINDS)
    assert outcome.ok, (outcome.summary(), outcome.verdict.examples)
    counts = outcome.verdict.counts
    assert counts["acked"] > 50 and outcome.faults, outcome.summary()


def test_a_fault_free_run_loses_nothing_and_is_never_unsure():
    outcome = simulate(4, nodes=3, seconds=20.0, kinds=())
    assert outcome.ok, outcome.verdict.examples
    assert outcome.verdict.counts["maybe"] == 0 and not outcome.faults


def test_a_broken_node_fails_the_run_and_the_failure_names_its_replay():
    """A replica that acknowledges before it commits loses points when it crashes."""
    found = None
    for seed in range(1, 9):
        result = _cli("--seed", str(seed), "--seconds", "40", "--faults", "crash,loss",
                      "--mutant", "ack_before_commit")
        if result.returncode == 1:
            found = result
            break
    assert found is not None, "ack_before_commit went unnoticed in 8 seeds"
    assert "replay: python -m count.sim --seed" in found.stdout
    assert "--mutant ack_before_commit" in found.stdout
    counts = dict(pair.split("=") for pair in found.stdout.strip().splitlines()[-1].split())
    assert any(counts[k] != "0" for k in ("lost", "stale_reads", "divergent", "hints")), counts


def test_fault_lists_are_checked():
    assert parse_kinds("all") == KINDS and parse_kinds("none") == ()
    assert parse_kinds("crash, loss") == ("crash", "loss")
    with pytest.raises(ValueError, match="unknown fault kinds"):
        parse_kinds("crash,meteor")
    result = _cli("--faults", "meteor")
    assert result.returncode == 2 and "unknown fault kinds" in result.stderr
