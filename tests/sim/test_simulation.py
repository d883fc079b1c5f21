"""The simulation itself: one seed replays one run byte for byte, the checker passes the
real node and catches broken ones, and the command line says so with its exit status.

The hundred seeds CI judges run beside the test suite (``make test``); these tests run a
few, short, so that a change that breaks the simulation fails here first.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from count.sim.faults import CHANGES, KINDS, draw_change, parse_kinds
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


def test_an_answer_given_while_catching_up_never_counts_for_a_read():
    """Seed 771 (60 s, every fault): node 3's disk is wiped; a quorum read through node 2
    gets node 3's empty answer while node 3 catches up, waits for a slow replica, and only
    then counts answers, after node 3's heartbeat says it caught up. Counting that answer
    made the read return 5 keys fewer than an earlier quorum read (stale_reads=1)."""
    outcome = simulate(771, nodes=5, seconds=60.0, kinds=KINDS)
    assert outcome.ok, (outcome.summary(), outcome.verdict.examples)


def test_a_fault_free_run_loses_nothing_and_is_never_unsure():
    outcome = simulate(4, nodes=3, seconds=20.0, kinds=(), changes=())
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


def test_a_running_repair_reports_its_ranges_done_of_total():
    """What ``count repair`` draws its progress bar from: while a round runs, /stats' anti-
    entropy part has ranges_done (never past) of ranges_total, the ranges this node shares
    with its live peers; once it is over, neither."""
    from count.messages import Repair
    from count.sim.world import World

    world = World(3, 3, 2, {"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    try:
        world.start()
        world.run_until(3.0)
        node = world.nodes[1]
        assert node.core is not None
        ring, me = node.core.ctx.ring, node.address
        total = sum(len(ring.shared_ranges(me, n.address, 2)) for n in world.nodes.values()
                    if n is not node)
        rounds = node.core.anti_entropy.progress()["rounds"]
        got: list[tuple[int, object]] = []
        node.request(1, Repair(), lambda status, body: got.append((status, body)))
        seen = []
        while not got and world.now_s < 30.0:
            world.run_until(world.now_s + 0.0005)
            progress = node.core.anti_entropy.progress()
            if progress["running"]:
                seen.append((progress["ranges_done"], progress["ranges_total"]))
        assert got and got[0][0] == 200, got
        assert seen and {t for _, t in seen} == {total}, (seen[:3], total)
        done = [d for d, _ in seen]
        assert done == sorted(done) and 0 < done[-1] <= total, done
        assert len(set(done)) > 1, done  # it moved while the round ran
        after = node.core.anti_entropy.progress()
        assert after["rounds"] == rounds + 1 and "ranges_total" not in after, after
    finally:
        world.close()


@pytest.mark.parametrize("kind", CHANGES)
def test_a_membership_change_amid_every_fault_kind_loses_nothing(kind):
    """A seed drawing a join, a decommission or a removal (a node killed for good, then
    removed through another) with every fault kind about it: nothing acknowledged lost,
    no stale read, no leftover, every hint delivered."""
    seed = next(s for s in range(1, 50)
                if draw_change(random.Random(f"{s}/change"), (kind,), 5, 45.0) is not None)
    outcome = simulate(seed, nodes=5, seconds=60.0, kinds=KINDS, changes=(kind,))
    assert outcome.ok, (outcome.summary(), outcome.verdict.examples)
    assert [f.kind for f in outcome.faults if f.kind in CHANGES] == [kind]
