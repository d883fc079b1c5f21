"""Judging a simulated run's history against what the README promises.

- lost: a key (series, timestamp) of an acknowledged write that some node's final read
  (after the heal and anti-entropy) does not return.
- phantom: a value some read returned that no write ever sent for that key.
- divergent: a series whose replicas' stored points (timestamps, values, versions) differ
  after the heal, or whose final reads differ between nodes.
- stale_reads: a completed quorum or all read missing a key that an earlier completed quorum
  or all read of the series returned (monotonic reads), or a completed read at any level
  missing a key whose write was acknowledged at consistency=all before the read was sent.
- errors: an answer no correct node gives (a 4xx or 5xx other than 503/507 to a valid
  request, or a final read that fails).
- hints: hints still pending on some node after the heal, or a key of a write acknowledged
  at quorum or all that, once every hint was handed off (and before anti-entropy ran),
  fewer of its replicas store than the level needs: a stand-in's acknowledgement is a
  promise that the replica it stood in for gets the points.
- leftover: a series some node still holds after cleanup had its time, though it is none
  of its replicas and holds no hint for it.

A write at consistency=one sent before a disk was wiped (or a node was killed for good and
removed) is counted as maybe, not as lost, even if its acknowledgement came after: one copy
was all it asked for, and that copy may be the one that went.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from count.sim.workload import Read, Workload, Write
from count.sim.world import World
from count.storage.writes import TIMESTAMP_MAX_MS

FAIL_KEYS = ("lost", "phantom", "divergent", "stale_reads", "errors", "hints", "leftover")
WRITE_STATUSES = (201, 503, 507)
READ_STATUSES = (200, 503)
DIGEST_POINTS_MAX = 1 << 31


@dataclass
class Verdict:
    counts: dict[str, int]
    examples: list[str] = field(default_factory=list)

    def failed(self) -> bool:
        return any(self.counts[k] for k in FAIL_KEYS)

    def merge(self, other: Verdict) -> None:
        for key in FAIL_KEYS:
            self.counts[key] += other.counts[key]
        self.examples.extend(other.examples[:max(0, 20 - len(self.examples))])

    def note(self, key: str, example: str) -> None:
        self.counts[key] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{key}: {example}")


def judge(world: World, workload: Workload, final_reads: list[Read],
          wiped_at_s: list[float]) -> Verdict:
    verdict = Verdict({k: 0 for k in FAIL_KEYS})
    writes = workload.writes
    last_wipe = max(wiped_at_s) if wiped_at_s else None

    def unsure(w: Write) -> bool:
        # At one, a write sent before a wipe (or a node killed for good, then removed) may
        # have been stored on that node alone (its acknowledgement can reach the client
        # after): one copy was all it asked for.
        return (w.outcome == "maybe" or (w.outcome == "ok" and w.level == "one"
                                         and last_wipe is not None
                                         and w.sent_s <= last_wipe))

    verdict.counts["acked"] = sum(w.outcome == "ok" and not unsure(w) for w in writes)
    verdict.counts["maybe"] = sum(unsure(w) for w in writes)
    for w in writes:
        if w.status not in WRITE_STATUSES and w.status != 0:
            verdict.note("errors", f"write op {w.op} via node {w.node}: {w.status} {w.detail}")
    for r in workload.reads:
        if r.status not in READ_STATUSES and r.status != 0:
            verdict.note("errors", f"read op {r.op} via node {r.node}: {r.status} {r.detail}")

    _phantoms(workload, [*workload.reads, *final_reads], verdict)
    _lost(workload, final_reads, unsure, verdict)
    _stale(workload, verdict)
    _divergent(world, workload, final_reads, verdict)
    for node in world.members():
        assert node.core is not None
        pending = sum(node.core.ctx.hints.pending().values())
        if pending:
            verdict.note("hints", f"node {node.index} still holds {pending} hinted points")
        ring, rf = node.core.ctx.ring, node.core.ctx.rf
        hinted = node.core.ctx.hints.hinted_series()
        for series in workload.series:
            if (node.address not in ring.replicas(series, rf) and series not in hinted
                    and node.storage is not None and node.storage.sid(series) is not None):
                verdict.note("leftover", f"node {node.index} still holds {series}, which it "
                                         "does not replicate")
    return verdict


def handed_off(world: World, workload: Workload, wiped_at_s: list[float]) -> Verdict:
    """After the heal and hand-off, before anti-entropy: every key acknowledged at quorum or
    all is on at least as many of its replicas as the level needs (keys acknowledged before
    a disk was wiped excepted: the wiped copy may have been one of them)."""
    verdict = Verdict({k: 0 for k in FAIL_KEYS})
    some = world.members()[0]
    assert some.core is not None
    ring, rf = some.core.ctx.ring, some.core.ctx.rf
    last_wipe = max(wiped_at_s) if wiped_at_s else None
    stored: dict[tuple[int, str], set[int]] = {}
    for w in workload.writes:
        if w.outcome != "ok" or w.level == "one" or w.done_s is None:
            continue
        if last_wipe is not None and w.sent_s <= last_wipe:
            continue
        needed = rf if w.level == "all" else rf // 2 + 1
        for series, ts, _ in w.points:
            holders = 0
            for address in ring.range_preference(ring.range_index(series))[:rf]:
                node = world.by_address[address]
                key = (node.index, series)
                if key not in stored:
                    assert node.storage is not None
                    cols = node.storage.read(series, 0, TIMESTAMP_MAX_MS, DIGEST_POINTS_MAX)
                    stored[key] = set(cols.ts.tolist())
                holders += ts in stored[key]
            if holders < needed:
                verdict.note("hints", f"{series}@{ts} acknowledged at {w.level} (op {w.op}) is "
                                      f"on {holders} of its replicas after hand-off")
    return verdict


def _phantoms(workload: Workload, reads: list[Read], verdict: Verdict) -> None:
    for r in reads:
        for ts, value in r.points.items():
            if value not in workload.values.get((r.series, ts), ()):
                verdict.note("phantom", f"read op {r.op} via node {r.node}: {r.series}@{ts}"
                                        f" = {value}, which no write sent")


def _lost(workload: Workload, final_reads: list[Read], unsure: object,
          verdict: Verdict) -> None:
    acked: dict[str, set[int]] = defaultdict(set)
    for w in workload.writes:
        if w.outcome == "ok" and not unsure(w):  # type: ignore[operator]
            for series, ts, _ in w.points:
                acked[series].add(ts)
    missing: set[tuple[str, int]] = set()
    for r in final_reads:
        if r.status != 200:
            verdict.note("errors", f"final read of {r.series} via node {r.node}: {r.status} "
                                   f"{r.detail}")
            continue
        for ts in sorted(acked[r.series] - r.points.keys()):
            if (r.series, ts) not in missing:
                missing.add((r.series, ts))
                verdict.note("lost", f"{r.series}@{ts} acknowledged, not returned by node "
                                     f"{r.node}'s final read")


def _stale(workload: Workload, verdict: Verdict) -> None:
    """Monotonic quorum reads; every read keeps what was acknowledged at all before it."""
    reads = [r for r in workload.reads if r.status == 200 and r.done_s is not None]
    by_series: dict[str, list[Read]] = defaultdict(list)
    for r in reads:
        by_series[r.series].append(r)
    all_acked: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for w in workload.writes:
        if w.outcome == "ok" and w.level == "all" and w.done_s is not None:
            for series, ts, _ in w.points:
                all_acked[series].append((w.done_s, ts))
    for series, series_reads in by_series.items():
        strong = sorted((r for r in series_reads if r.level != "one"),
                        key=lambda r: r.done_s or 0.0)
        acks = sorted(all_acked[series])
        seen: set[int] = set()
        seen_at = 0
        for r in sorted(series_reads, key=lambda r: r.sent_s):
            if r.level != "one":
                while seen_at < len(strong) and (strong[seen_at].done_s or 0.0) < r.sent_s:
                    seen.update(strong[seen_at].points)
                    seen_at += 1
                gone = seen - r.points.keys()
                if gone:
                    verdict.note("stale_reads", f"{r.level} read op {r.op} via node {r.node} "
                                 f"of {series} lacks {len(gone)} keys an earlier read returned"
                                 f" (e.g. {min(gone)})")
                    continue
            required = {ts for done_s, ts in acks if done_s < r.sent_s}
            gone = required - r.points.keys()
            if gone:
                verdict.note("stale_reads", f"{r.level} read op {r.op} via node {r.node} of "
                             f"{series} lacks {len(gone)} keys acknowledged at all before it"
                             f" (e.g. {min(gone)})")


def _divergent(world: World, workload: Workload, final_reads: list[Read],
               verdict: Verdict) -> None:
    answers: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in final_reads:
        if r.status == 200:
            answers[r.series][hash(tuple(sorted(r.points.items())))].append(r.node)
    for series, groups in answers.items():
        if len(groups) > 1:
            verdict.note("divergent", f"final reads of {series} differ between nodes "
                                      f"{sorted(groups.values())}")
    some = world.members()[0]
    assert some.core is not None
    ring, rf = some.core.ctx.ring, some.core.ctx.rf
    for series in workload.series:
        replicas = ring.range_preference(ring.range_index(series))[:rf]
        stored = {}
        for address in replicas:
            node = world.by_address[address]
            assert node.storage is not None
            cols = node.storage.read(series, 0, TIMESTAMP_MAX_MS, DIGEST_POINTS_MAX)
            stored[node.index] = (cols.ts.tobytes(), cols.val.tobytes(), cols.ver.tobytes())
        if len(set(stored.values())) > 1:
            verdict.note("divergent", f"replicas {sorted(stored)} of {series} store different "
                                      "points or versions")
