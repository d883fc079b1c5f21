"""The scenario scripts of ``tests/sim/testdata``: each is a behaviour the README promises,
run step by step in the simulation with every output pinned (raft's data-driven style).

``COUNT_SCENARIO_REWRITE=1`` writes the actual outputs back into the files (then read the
diff before committing it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from count.sim.scenario import parse, run_script

pytestmark = pytest.mark.sim

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_every_script_is_found():
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    text = path.read_text()
    actual = run_script(text)
    if os.environ.get("COUNT_SCENARIO_REWRITE") == "1":
        path.write_text(actual + "\n")
        return
    mismatches = []
    for (_, command, want), (_, _, got) in zip(parse(text), parse(actual), strict=True):
        if want != got:
            mismatches.append(f"{command}\n---- expected\n{want}\n---- got\n{got}")
    assert not mismatches, f"{path.name}:\n\n" + "\n\n".join(mismatches)
