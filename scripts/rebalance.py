#!/usr/bin/env python3
"""Rebalance a Count cluster: print the plan, then start or resume it and show its progress.

Rebalancing is automatic in Count (a join or leave streams the moved ranges, cleanup deletes
what a node no longer owns), so this script is the operator's view and lever over it:

1. The plan, from GET /cluster/status of --url: every member's ring state, its share of the
   ring (ownership), the points it holds, the points its share says it should hold, and how
   far off it is; the membership change in flight, if any.
2. With --run (the default unless --plan-only): while a change is in flight, wait for it,
   showing its streaming; then start (or resume) a repair round on every live member
   (POST /cluster/repair: anti-entropy copies what a replica lacks), and wait until cleanup
   has settled (every member's points stable for --settle seconds), showing progress.
3. The plan again, and the verdict.

Exit status: 0 every member within --tolerance of its share; 1 not (or a node could not be
reached, or a repair reported errors); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from count.cli import CliError, _request, human_bytes
from count.progress import Progress

REPAIR_TIMEOUT_S = 660.0
POLL_S = 1.0
WAIT_MAX_S = 3600.0


def plan(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Per owning member: its share of the points by ownership, and how far off it is."""
    owners = [m for m in status["members"] if m.get("ring_state") in ("normal", "leaving",
                                                                       "removing")]
    total = sum(int(m.get("points") or 0) for m in owners)
    owned = sum(float(m.get("ownership") or 0) for m in owners) or 1.0
    rows = []
    for m in owners:
        target = total * float(m.get("ownership") or 0) / owned
        points = int(m.get("points") or 0)
        rows.append({"node_id": m["node_id"], "address": m["address"],
                     "ring_state": m["ring_state"], "alive": m["alive"],
                     "ownership": m.get("ownership"), "points": points, "bytes": m.get("bytes"),
                     "target_points": round(target),
                     "off": (points - target) / target if target else 0.0})
    return rows


def print_plan(status: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    change = status.get("change")
    print(f"Cluster at epoch {status.get('epoch')}, replication factor "
          f"{status.get('replication_factor')}"
          + (f"; change in flight: node {change['node_id']} {change['state']}" if change else ""))
    header = ("Node", "Address", "Ring", "Up", "Owns", "Points", "Bytes", "Target", "Off")
    table = [header] + [(str(r["node_id"]), r["address"], r["ring_state"],
                         "yes" if r["alive"] else "no", f"{100 * (r['ownership'] or 0):.1f}%",
                         f"{r['points']:,}", human_bytes(r["bytes"]), f"{r['target_points']:,}",
                         f"{100 * r['off']:+.1f}%") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def wait_for_change(url: str) -> dict[str, Any]:
    progress = Progress(sys.stderr, "streaming", "ranges")
    started = time.monotonic()
    try:
        while time.monotonic() - started < WAIT_MAX_S:
            status = _request(url, "GET", "/cluster/status")
            if not status.get("change"):
                return status
            me = next(m for m in status["members"] if m["self"])
            stream = me.get("streaming") or {}
            progress.update(stream.get("ranges_done", 0), stream.get("ranges_total", 0),
                            time.monotonic() - started)
            time.sleep(POLL_S)
    finally:
        progress.finish()
    raise CliError(f"the change in flight has not ended after {WAIT_MAX_S:.0f} s")


def repair_everywhere(status: dict[str, Any]) -> int:
    errors = 0
    for m in status["members"]:
        if not m["alive"]:
            continue
        report = _request(f"http://{m['address']}", "POST", "/cluster/repair",
                          timeout_s=REPAIR_TIMEOUT_S)
        errors += len(report.get("errors") or [])
        sys.stderr.write(f"repair on node {m['node_id']}: {report.get('points_received', 0):,} "
                         f"points received, {report.get('points_sent', 0):,} sent, "
                         f"{len(report.get('errors') or [])} errors\n")
    return errors


def wait_settled(url: str, settle_s: float) -> dict[str, Any]:
    """Until no member's points change for ``settle_s`` (cleanup has done its rounds)."""
    progress = Progress(sys.stderr, "cleanup", "s settled")
    started = time.monotonic()
    last: dict[str, int] | None = None
    stable = time.monotonic()
    try:
        while time.monotonic() - started < WAIT_MAX_S:
            status = _request(url, "GET", "/cluster/status")
            points = {m["address"]: int(m.get("points") or 0) for m in status["members"]}
            if points != last:
                last, stable = points, time.monotonic()
            elif time.monotonic() - stable >= settle_s:
                return status
            progress.update(int(time.monotonic() - stable), int(settle_s),
                            time.monotonic() - started)
            time.sleep(POLL_S)
    finally:
        progress.finish()
    raise CliError(f"the members' points did not settle within {WAIT_MAX_S:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     epilog="exit status: 0 balanced; 1 not, or a failure; "
                                            "2 bad usage")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="any member")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and exit")
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="largest allowed relative distance from a member's share "
                             "(default 0.15)")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds without change that mean cleanup is done (default 15)")
    parser.add_argument("--json", action="store_true", help="print the final plan as JSON")
    args = parser.parse_args(argv)
    try:
        status = _request(args.url, "GET", "/cluster/status")
        rows = plan(status)
        if not args.json:
            print_plan(status, rows)
        errors = 0
        if not args.plan_only:
            if status.get("change"):
                status = wait_for_change(args.url)
            errors = repair_everywhere(status)
            status = wait_settled(args.url, args.settle)
            rows = plan(status)
            if not args.json:
                print("after rebalancing:")
                print_plan(status, rows)
    except CliError as exc:
        sys.stderr.write(f"rebalance: {exc}\n")
        return 1
    if args.json:
        print(json.dumps({"epoch": status.get("epoch"), "members": rows}, indent=2))
    worst = max((abs(r["off"]) for r in rows), default=0.0)
    balanced = worst <= args.tolerance and errors == 0
    if not args.json:
        print(f"{'balanced' if balanced else 'NOT balanced'}: worst member "
              f"{100 * worst:.1f}% off its share (tolerance {100 * args.tolerance:.0f}%)"
              + (f"; {errors} repair errors" if errors else ""))
    return 0 if balanced else 1


if __name__ == "__main__":
    sys.exit(main())
