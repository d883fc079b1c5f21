"""The scenario scripts of ``tests/sim/testdata``: each is a behaviour the README promises,
run step by step in the simulation with every output pinned (raft's data-driven style).

``COUNT_SCENARIO_REWRITE=1`` writes the actual outputs back into the files (then read the
diff before committing it).
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from count.sim.scenario import render, run_script

pytestmark = pytest.mark.sim

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_every_script_is_found() -> None:
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    """The script's outputs are what it says; shown as a diff of the file when they are not."""
    expected = path.read_text()
    actual = render(expected, run_script(expected))
    if os.environ.get("COUNT_SCENARIO_REWRITE") == "1":
        path.write_text(actual)
        return
    if actual != expected:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                    f"{path.name} (expected)", f"{path.name} (actual)",
                                    lineterm="")
        pytest.fail("\n".join(diff), pytrace=False)


def test_the_standin_script_catches_cleanup_dropping_before_the_replica_has_it() -> None:
    """Run with the ``cleanup_without_ack`` mutant (in a process of its own: mutants patch
    the node's classes), the stand-in script loses the series: seeds rarely make a
    stand-in's copy the last one, but this script always does."""
    script = (TESTDATA / "standin_leftovers.txt").read_text()
    code = ("import sys; from count.sim import mutants; mutants.apply('cleanup_without_ack'); "
            "from count.sim.scenario import render, run_script; t = sys.stdin.read(); "
            "sys.stdout.write(render(t, run_script(t)))")
    done = subprocess.run([sys.executable, "-c", code], input=script, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout != script
    assert "read via=1 series=s0\n----\n200 points=0 ts=-\n" in done.stdout, done.stdout
