"""One simulated run: a cluster, a workload, a fault schedule, the heal, and the verdict.

The workload runs for the whole run; faults happen in its first three quarters and all end
at the heal; a seed may also make one membership change amid them (a node joins, one
decommissions, or one is killed and removed); after the workload and the change's end,
every node runs anti-entropy (as ``POST /cluster/repair``)
until a pass finds nothing to repair, cleanup deletes what nodes hold but do not replicate,
then every node reads every series back. ``summary``
is the line ``python -m count.sim`` prints: the same seed gives the same line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from count.failsafe import set_strict, strict
from count.messages import Repair
from count.sim import faults as fault_kinds
from count.sim.checker import Verdict, handed_off, judge
from count.sim.workload import Read, Workload
from count.sim.world import World

HEAL_AT = 0.75
OPS_PER_S = 20.0
RF = 3
# After the workload: at most this many anti-entropy passes over every node.
SETTLE_PASSES_MAX = 8
STEP_S = 0.5


@dataclass
class Outcome:
    seed: int
    ops: int
    verdict: Verdict
    faults: list[fault_kinds.Fault]
    digest: str
    simulated_s: float

    def summary(self) -> str:
        c = self.verdict.counts
        return (f"seed={self.seed} ops={self.ops} acked={c['acked']} lost={c['lost']} "
                f"maybe={c['maybe']} phantom={c['phantom']} divergent={c['divergent']} "
                f"stale_reads={c['stale_reads']} errors={c['errors']} hints={c['hints']} "
                f"leftover={c['leftover']} "
                f"faults={len(self.faults)} digest={self.digest}")

    @property
    def ok(self) -> bool:
        return not self.verdict.failed()


def _wait(world: World, done: list[Any], limit_s: float) -> None:
    deadline = world.now_s + limit_s
    while not done and world.now_s < deadline:
        world.run_until(world.now_s + STEP_S)


def hand_off(world: World, limit_s: float = 30.0) -> None:
    """Run until no node holds a hint (bounded)."""
    deadline = world.now_s + limit_s
    while world.now_s < deadline and any(
            n.core is not None and n.core.ctx.hints.pending() for n in world.members()):
        world.run_until(world.now_s + STEP_S)


def finish_changes(world: World, limit_s: float = 180.0) -> None:
    """Run until the membership change, if any, has ended on every member (bounded)."""
    deadline = world.now_s + limit_s

    def settled() -> bool:
        cores = [n.core for n in world.members()]
        return all(c is not None and c.ctx.topology.changing() is None
                   and c.ctx.is_member() for c in cores) and len(
            {c.ctx.topology.epoch for c in cores if c is not None}) == 1
    while world.now_s < deadline and not settled():
        world.run_until(world.now_s + STEP_S)


def settle(world: World) -> None:
    """Run anti-entropy on every node until a whole pass repairs nothing."""
    for _ in range(SETTLE_PASSES_MAX):
        clean = True
        for node in world.members():
            got: list[tuple[int, Any]] = []

            def answered(status: int, body: Any, got: list[tuple[int, Any]] = got) -> None:
                got.append((status, body))
            node.request(-node.index, Repair(), answered)
            _wait(world, got, 120.0)
            status, report = got[0] if got else (0, {})
            if status != 200 or report["errors"] or report["ranges_differing"]:
                clean = False
        world.run_until(world.now_s + 2.0)  # hand-off of what is left
        hints = sum(sum(n.core.ctx.hints.pending().values())
                    for n in world.members() if n.core is not None)
        if clean and not hints:
            return


def clean_up(world: World, limit_s: float = 60.0) -> None:
    """Run until no node holds a series it does not replicate (bounded): cleanup's rounds."""
    deadline = world.now_s + limit_s
    while world.now_s < deadline and any(
            n.core is not None and n.core.cleanup.candidates() for n in world.members()):
        world.run_until(world.now_s + STEP_S)


def final_reads(world: World, workload: Workload) -> list[Read]:
    reads = []
    for node in world.members():
        for series in workload.series:
            read = workload.send_read(node.index, "one", series)
            workload.reads.pop()  # judged as final reads, not as part of the history
            _wait_read(world, read)
            reads.append(read)
    return reads


def _wait_read(world: World, read: Read) -> None:
    deadline = world.now_s + 10.0
    while read.done_s is None and world.now_s < deadline:
        world.run_until(world.now_s + 0.05)


def simulate(seed: int, nodes: int = 5, seconds: float = 60.0,
             kinds: tuple[str, ...] = fault_kinds.KINDS, rf: int = RF,
             env: dict[str, str] | None = None,
             changes: tuple[str, ...] = fault_kinds.CHANGES) -> Outcome:
    """Run one seed; raises what a node raised (the simulation runs in strict mode)."""
    was_strict = strict()
    set_strict(True)
    rng = random.Random(seed)
    world = World(seed, nodes, min(rf, nodes), env)
    try:
        world.start()
        heal_s = seconds * HEAL_AT
        faults = fault_kinds.schedule(random.Random(f"{seed}/faults"), kinds, nodes, heal_s)
        change = fault_kinds.draw_change(random.Random(f"{seed}/change"), changes, nodes,
                                         heal_s)
        if change is not None and change.kind == "removenode":
            # A removed node's disk is lost for good; a wipe too would be two disks lost,
            # more than a quorum write at RF 3 promises to survive.
            faults = [f for f in faults if f.kind != "wipe"]
        fault_kinds.inject(world, faults)
        if change is not None:
            fault_kinds.inject_change(world, change)
            faults.append(change)
        world.at(heal_s, lambda: fault_kinds.heal(world))
        workload = Workload(world, random.Random(f"{seed}/workload"))
        workload.schedule(1.0, seconds, OPS_PER_S * rng.uniform(0.5, 1.5))
        world.run_until(seconds)
        world.run_until(seconds + 6.0)  # the last answers, heartbeats after the heal
        # A disk wiped, or a node killed for good, took the copies it alone held.
        wiped = [f.start_s for f in faults if f.kind in ("wipe", "removenode")]
        finish_changes(world)
        hand_off(world)
        delivered = handed_off(world, workload, wiped)
        settle(world)
        clean_up(world)
        reads = final_reads(world, workload)
        verdict = judge(world, workload, reads, wiped)
        verdict.merge(delivered)
        return Outcome(seed, len(workload.writes) + len(workload.reads), verdict, faults,
                       world.digest(), world.now_s)
    finally:
        world.close()
        set_strict(was_strict)
