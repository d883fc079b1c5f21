"""python -m count.sim --seed S --nodes N --seconds T --faults LIST

Runs simulated clusters and judges their histories. The last line printed is one run's
``key=value`` summary; with --seeds K, K seeds from --seed on run and one line is printed
per seed (then a total). Exit status 0 when the checker found nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from functools import partial

from count.sim.faults import CHANGES, parse_kinds
from count.sim.mutants import MUTANTS, apply
from count.sim.run import Outcome, simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m count.sim", description=__doc__.split("\n")[2])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--faults", default="all",
                        help="comma-separated fault kinds, 'all' or 'none'")
    parser.add_argument("--changes", default="all",
                        help="membership changes a seed may make (one at most): "
                             "join,decommission,removenode, 'all' or 'none'")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--mutant", choices=sorted(MUTANTS),
                        help="run a deliberately broken node (count/sim/mutants.py)")
    parser.add_argument("--verbose", action="store_true",
                        help="print the fault schedule and the checker's examples")
    args = parser.parse_args(argv)
    try:
        kinds = parse_kinds(args.faults)
        changes = parse_kinds(args.changes, CHANGES, "membership changes")
    except ValueError as exc:
        parser.error(str(exc))
    failed = []
    started = time.monotonic()
    simulated = 0.0
    if args.mutant:
        apply(args.mutant)
    run = partial(_run, nodes=args.nodes, seconds=args.seconds, kinds=kinds, changes=changes)
    seeds = range(args.seed, args.seed + args.seeds)
    outcomes: Iterator[Outcome]
    if args.jobs > 1:
        pool = multiprocessing.get_context("fork").Pool(args.jobs)
        outcomes = pool.imap(run, seeds)
    else:
        outcomes = map(run, seeds)
    for seed, outcome in zip(seeds, outcomes, strict=True):
        simulated += outcome.simulated_s
        if args.verbose or not outcome.ok:
            for fault in outcome.faults:
                print(f"  fault {fault.describe()}")
            for example in outcome.verdict.examples:
                print(f"  {example}")
        if not outcome.ok:
            failed.append(seed)
            mutant = f" --mutant {args.mutant}" if args.mutant else ""
            print(f"  replay: python -m count.sim --seed {seed} --nodes {args.nodes} "
                  f"--seconds {args.seconds:g} --faults {args.faults} --changes "
                  f"{args.changes}{mutant} --verbose")
        print(outcome.summary(), flush=True)
    if args.seeds > 1:
        wall = time.monotonic() - started
        print(f"seeds={args.seeds} failed={len(failed)} failing={','.join(map(str, failed))} "
              f"simulated_s={simulated:.0f} wall_s={wall:.1f} speedup={simulated / wall:.1f}x")
    return 1 if failed else 0


def _run(seed: int, nodes: int, seconds: float, kinds: tuple[str, ...],
         changes: tuple[str, ...]) -> Outcome:
    return simulate(seed, nodes, seconds, kinds, changes=changes)


if __name__ == "__main__":
    sys.exit(main())
