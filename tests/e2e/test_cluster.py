"""End-to-end tests of a cluster of real nodes: placement, replication, failures, repair.

Behaviour, never timings: every wait is bounded (``tests/e2e/cluster.py``) and a test only
asserts what the cluster answers once it has settled. What a single node *holds* is checked
by taking the other nodes down: a node that sees itself alone is a minority, refuses writes,
and still answers reads, from its own storage only.

The read/write tests share one three-node RF=2 cluster (``cluster3``) and their own series
names; tests that kill, wipe or reconfigure nodes start their own clusters.
"""

from __future__ import annotations

import collections
import random
import re
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.e2e.conftest import CountNode, guide_fields
from tests.e2e.workload import PointLog, Writers, load_batch, verify_all

if TYPE_CHECKING:  # imported by pytest_plugins below, so that its asserts are rewritten
    from tests.e2e.cluster import Cluster, ClusterFactory

# The harness's fixtures: make_cluster (function scope) and cluster3 (module scope).
pytest_plugins = ("tests.e2e.cluster",)

pytestmark = pytest.mark.timeout(120)

T0 = 1_640_995_200_000  # the README's timestamp
AGGREGATIONS = ("sum", "count", "min", "max", "mean", "avg")


# -- helpers -------------------------------------------------------------------------------


def points(series: str, stamps: list[int], values: list[float]) -> list[dict[str, Any]]:
    return [{"series": series, "timestamp": t, "value": v}
            for t, v in zip(stamps, values, strict=True)]


def rows(model: dict[int, float]) -> list[dict[str, Any]]:
    return [{"timestamp": t, "value": float(model[t])} for t in sorted(model)]


def assert_error(resp: requests.Response, status: int, *contains: str) -> str:
    """``status`` with a JSON body ``{"error": message}`` whose message holds ``contains``."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    for word in contains:
        assert word.lower() in message.lower(), (word, message)
    return message


def write_series(cluster: Cluster, names: list[str], n_points: int,
                 consistency: str | None = "all", via: list[int] | None = None,
                 step_ms: int = 1000, first: int = 0, offset: float = 0.0,
                 model: dict[str, dict[int, float]] | None = None
                 ) -> dict[str, dict[int, float]]:
    """Write points ``first..first+n_points-1`` (``step_ms`` apart) of each series, one
    request per series, coordinators taken in turn; returns ``model`` updated."""
    via = via or cluster.live_ids()
    model = {} if model is None else model
    for k, name in enumerate(names):
        stamps = [T0 + step_ms * j for j in range(first, first + n_points)]
        values = [round(offset + k * 100 + j * 0.25, 2) for j in range(first, first + n_points)]
        cluster.insert(via[k % len(via)], points(name, stamps, values), consistency=consistency)
        model.setdefault(name, {}).update(zip(stamps, values, strict=True))
    return model


def assert_holds(node: CountNode, model: dict[str, dict[int, float]], expected: set[str],
                 what: str) -> None:
    """``node`` answers exactly ``model[s]`` for the series in ``expected`` (it is alone, so
    this is what its own storage holds) and, for the others, a 503 naming the replicas that
    did not answer: never an empty answer for data it cannot reach."""
    problems = []
    for name, series_model in model.items():
        if name not in expected:
            resp = node.get(f"/query/range/{name}")
            if resp.status_code != 503 or "not answering: node" not in resp.json()["error"]:
                problems.append(f"{name}: {resp.status_code} {resp.text[:120]}, expected 503")
            continue
        got = node.range(name)
        if got != rows(series_model):
            problems.append(f"{name}: {len(got)} points, expected {len(series_model)}")
    assert not problems, f"{what}: {problems[:10]} ({len(problems)} of {len(model)} series)"


def pick_series(cluster: Cluster, prefix: str, count: int, wanted=lambda reps: True) -> list[str]:
    return cluster.series_on(wanted, count, prefix)


# -- 1. three nodes, RF=2: the guide's commands and plain reads and writes -------------------


def test_guide_commands_write_on_one_node_read_on_the_others(cluster3: Cluster) -> None:
    for name, value in (("app1.cpu", 45.0), ("app2.cpu", 12.5), ("app3.cpu", 99.0)):
        cluster3.node(1).insert({"series": name, "timestamp": T0, "value": value})
    for i in (2, 3):
        for name, value in (("app1.cpu", 45.0), ("app2.cpu", 12.5), ("app3.cpu", 99.0)):
            resp = cluster3.node(i).get(f"/query/range/{name}",
                                        params={"start": 1640995000000, "end": 1640996000000})
            assert resp.status_code == 200, resp.text
            assert resp.json() == [{"timestamp": T0, "value": value}], (i, name)
    listed = cluster3.node(3).get("/series", params={"prefix": "app"}).json()
    assert {"app1.cpu", "app2.cpu", "app3.cpu"} <= set(listed)


def test_round_robin_inserts_read_identically_everywhere(cluster3: Cluster, series) -> None:
    name = series("rr")
    model = {}
    for j in range(60):
        ts, value = T0 + j * 10_000, round(j * 1.5 - 20, 1)
        cluster3.node(1 + j % 3).insert({"series": name, "timestamp": ts, "value": value})
        model[ts] = value
    # and a columnar batch through node 2
    more = {T0 + 1_000_000 + j: float(j) for j in range(50)}
    cluster3.node(2).insert({"series": name, "timestamps": list(more), "values": list(more.values())})
    model.update(more)
    answers = {i: cluster3.node(i).range(name) for i in cluster3.ids}
    for i, got in answers.items():
        assert got == rows(model), f"node {i} answered {len(got)} points, expected {len(model)}"
    sub = {i: cluster3.node(i).range(name, start=T0 + 100_000, end=T0 + 200_000)
           for i in cluster3.ids}
    assert sub[1] == sub[2] == sub[3] == [r for r in rows(model)
                                          if T0 + 100_000 <= r["timestamp"] <= T0 + 200_000]


def test_series_list_from_every_node_has_every_series(cluster3: Cluster, series) -> None:
    names = [series(f"m{k}") for k in range(12)]
    for k, name in enumerate(names):
        cluster3.node(1 + k % 3).insert({"series": name, "timestamp": T0 + k, "value": k})
    prefix = names[0].rsplit(".", 1)[0] + "."
    for i in cluster3.ids:
        resp = cluster3.node(i).get("/series", params={"prefix": prefix})
        assert resp.status_code == 200, resp.text
        assert resp.json() == sorted(names), f"node {i}"
        limited = cluster3.node(i).get("/series", params={"prefix": prefix, "limit": 5}).json()
        assert limited == sorted(names)[:5], f"node {i}"


def test_aggregations_agree_across_nodes(cluster3: Cluster, series) -> None:
    name = series("agg")
    rng = random.Random(7)
    values = [rng.randint(-5000, 5000) / 4 for _ in range(500)]
    stamps = [T0 + 1000 * j for j in range(500)]
    for start in range(0, 500, 100):  # batches through different coordinators
        cluster3.node(1 + (start // 100) % 3).insert(
            points(name, stamps[start:start + 100], values[start:start + 100]))
    expect = {"sum": sum(values), "count": 500, "min": min(values), "max": max(values),
              "mean": sum(values) / 500, "avg": sum(values) / 500}
    for how in AGGREGATIONS:
        got = {i: cluster3.node(i).aggregate(name, how) for i in cluster3.ids}
        assert got[1] == got[2] == got[3], (how, got)
        assert got[1] == pytest.approx(expect[how], rel=1e-12), (how, got[1], expect[how])
    buckets = {i: cluster3.node(i).aggregate(name, "sum", interval=60_000) for i in cluster3.ids}
    assert buckets[1] == buckets[2] == buckets[3]
    assert sum(b["count"] for b in buckets[1]) == 500
    # an empty window is the same everywhere too
    for i in cluster3.ids:
        assert cluster3.node(i).aggregate(name, "count", start=1, end=2) == 0
        assert cluster3.node(i).aggregate(name, "mean", start=1, end=2) is None


def test_health_and_cluster_status_show_three_alive_members(cluster3: Cluster) -> None:
    digests = set()
    for i in cluster3.ids:
        health = cluster3.health(i)
        assert guide_fields(health) == {"status": "healthy", "node_id": i, "cluster_size": 3}
        assert health["reasons"] == [] and health["members"] == 3, health
        status = cluster3.status(i)
        assert status["node_id"] == i and status["status"] == "healthy", status
        assert status["cluster_size"] == 3 and status["replication_factor"] == 2, status
        assert status["address"] == cluster3.node(i).address
        members = status["members"]
        assert sorted(m["node_id"] for m in members) == [1, 2, 3], members
        assert all(m["alive"] and m["state"] == "normal" for m in members), members
        assert [m["node_id"] for m in members if m["self"]] == [i], members
        assert {m["address"] for m in members} == {n.address for n in cluster3}
        for m in members:
            assert m["self"] or (m["heartbeat_age_s"] is not None and m["heartbeat_age_s"] >= 0)
            assert isinstance(m["points"], int) and isinstance(m["hints_pending"], int), m
        # RF=2 of three members: each replicates about two thirds of the ring
        assert sum(m["ownership"] for m in members) == pytest.approx(2, abs=0.001), members
        assert all(0.5 < m["ownership"] < 0.8 for m in members), members
        digests.add(status["ring"])
    assert len(digests) == 1, digests


def test_endpoints_agree_on_two_distinct_node_ids(cluster3: Cluster, series) -> None:
    seen = collections.Counter()
    for k in range(60):
        name = series(f"e{k}")
        answers = []
        for i in cluster3.ids:
            resp = cluster3.node(i).get(f"/cluster/endpoints/{name}")
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["series"] == name
            answers.append(body["replicas"])
        assert answers[0] == answers[1] == answers[2], (name, answers)
        replicas = answers[0]
        assert len(replicas) == 2 and len(set(replicas)) == 2, replicas
        assert set(replicas) <= {1, 2, 3}, replicas
        seen.update(replicas)
    # 60 series on a 150-vnode ring: every node holds some of them
    assert set(seen) == {1, 2, 3}, seen
    bad = cluster3.node(1).get("/cluster/endpoints/bad name")
    assert_error(bad, 400)


# -- 7. conflicting overwrites through different coordinators -------------------------------


def test_conflicting_concurrent_overwrites_converge(cluster3: Cluster, series) -> None:
    names = [series("c0"), series("c1")]
    stamps = list(range(T0, T0 + 300))
    rounds = 2
    errors: list[str] = []

    def value(thread: int, rnd: int, ts: int) -> float:
        return float(thread * 1_000_000 + rnd * 100_000 + (ts - T0))

    def writer(thread: int) -> None:
        node = cluster3.node(thread)
        rng = random.Random(thread)
        for rnd in range(rounds):
            chunks = [stamps[i:i + 25] for i in range(0, len(stamps), 25)]
            rng.shuffle(chunks)
            for chunk in chunks:
                batch = [{"series": n, "timestamp": ts, "value": value(thread, rnd, ts)}
                         for ts in chunk for n in names]
                try:
                    resp = node.insert(batch, expect=None)
                    if resp.status_code != 201:
                        errors.append(f"{thread}: {resp.status_code} {resp.text[:200]}")
                except requests.RequestException as exc:
                    errors.append(f"{thread}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in cluster3.ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "writers hung"
    assert not errors, errors[:5]

    # Versions only grow through one coordinator, so the winner of each timestamp is the
    # last round's value of one of the coordinators, never an earlier round's.
    last_round = {ts: {value(t, rounds - 1, ts) for t in cluster3.ids} for ts in stamps}
    for name in names:
        first = {i: cluster3.node(i).range(name) for i in cluster3.ids}
        again = {i: cluster3.node(i).range(name) for i in reversed(cluster3.ids)}
        assert first[1] == first[2] == first[3], f"{name}: nodes disagree"
        assert again == first, f"{name}: a repeated read changed"
        got = {r["timestamp"]: r["value"] for r in first[1]}
        assert sorted(got) == stamps, f"{name}: {len(got)} timestamps"
        wrong = [(ts, v) for ts, v in got.items() if v not in last_round[ts]]
        assert not wrong, f"{name}: not a last-round value: {wrong[:5]}"
        winners = collections.Counter(int(v) // 1_000_000 for v in got.values())
        assert set(winners) <= set(cluster3.ids), winners


def test_a_later_overwrite_through_another_coordinator_wins(cluster3: Cluster, series) -> None:
    [name] = cluster3.series_on(lambda reps: 3 not in reps, 1, series("seq"))
    for j in range(20):  # each overwrite is sent once the first write is acknowledged
        cluster3.node(1).insert({"series": name, "timestamp": T0 + j, "value": 1.0})
        cluster3.node(3).insert({"series": name, "timestamp": T0 + j, "value": 2.0})
    for i in cluster3.ids:
        stale = [r["timestamp"] - T0 for r in cluster3.node(i).range(name) if r["value"] != 2.0]
        assert not stale, f"node {i}: the first write won at offsets {stale}"


# -- 2. RF 1, 2, 3: data is on exactly the replicas /cluster/endpoints names ---------------


@pytest.mark.parametrize("rf", [1, 2, 3])
def test_data_lives_on_exactly_the_named_replicas(make_cluster: ClusterFactory, rf: int) -> None:
    cluster = make_cluster(3, rf, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    names = [f"rf{rf}.series.{k}" for k in range(30)]
    placement = {name: cluster.endpoints(name) for name in names}
    for name, replicas in placement.items():
        assert len(replicas) == rf and len(set(replicas)) == rf, replicas
        assert set(replicas) <= {1, 2, 3}
        assert all(cluster.endpoints(name, via=i) == replicas for i in (2, 3))
    model = write_series(cluster, names, 40, consistency="all")

    # Each node's own storage counters: the series, and the points, it was given.
    for i in cluster.ids:
        mine = [n for n in names if i in placement[n]]
        stats = cluster.stats(i)
        assert stats["series"] == len(mine), (i, stats["series"], len(mine))
        assert stats["points_written"] == 40 * len(mine), (i, stats["points_written"])
        assert stats["hints_pending"] == 0, stats

    # Node 1 alone answers from its storage: its share whole, nothing of the rest.
    lone = cluster.alone(1)
    assert_holds(lone, model, {n for n in names if 1 in placement[n]}, f"RF={rf}, node 1 alone")


# -- 3. five nodes, RF=3 ------------------------------------------------------------------


def test_five_nodes_rf3_default_timings(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(5, 3, fast=False)
    names = [f"five.s{k}" for k in range(25)]
    for name in names:
        answers = [cluster.endpoints(name, via=i) for i in cluster.ids]
        assert all(a == answers[0] for a in answers), (name, answers)
        assert len(answers[0]) == 3 and len(set(answers[0])) == 3, answers[0]
        assert set(answers[0]) <= set(range(1, 6))
    model = write_series(cluster, names, 30, consistency="quorum")
    for i in cluster.ids:
        for name in names:
            assert cluster.node(i).range(name) == rows(model[name]), (i, name)
        assert guide_fields(cluster.health(i)) == {"status": "healthy", "node_id": i,
                                                   "cluster_size": 5}
        listed = cluster.node(i).get("/series", params={"prefix": "five."}).json()
        assert listed == sorted(names), i
    # replicas hold the series (after the reads, which repaired any replica a quorum
    # write had not reached yet), the others do not
    for i in cluster.ids:
        mine = sum(1 for n in names if i in cluster.endpoints(n))
        assert cluster.stats(i)["series"] == mine, i


# -- 4. kill -9 under write load -----------------------------------------------------------


def test_kill_9_under_write_load_loses_no_acknowledged_point(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2)
    log = PointLog()
    writers = {i: Writers(cluster.node(i), log, threads=2, make_batch=load_batch(f"load.n{i}"),
                          seed=i) for i in cluster.ids}
    for w in writers.values():
        w.start()
    try:
        cluster.wait_until(lambda: log.statuses[201] >= 60, "60 acknowledged writes", 30)
        cluster.kill(3)
        writers[3].stop()
        acked_at_kill = log.statuses[201]
        cluster.wait_sees(1, {1, 2})
        cluster.wait_sees(2, {1, 2})
        # the two survivors go on taking writes for every series, with node 3 down
        cluster.wait_until(lambda: log.statuses[201] >= acked_at_kill + 60,
                           "writes acknowledged with node 3 down", 30)
    finally:
        for w in writers.values():
            w.stop()
    assert log.statuses[201] > acked_at_kill
    # 503: a write that could not reach both replicas before node 3 was seen down; an
    # exception: node 3's own clients losing their connections. No 500, no hang.
    unexpected = {s: n for s, n in log.statuses.items() if s not in (201, 503)
                  and not (isinstance(s, str) and "Timeout" not in s)}
    assert not unexpected, (unexpected, log.errors[:5])

    verify_all(log, [cluster.node(i) for i in (1, 2)], "node 3 killed")
    cluster.restart(3)
    for i in (1, 2):
        assert re.search(r"Node 3 unreachable \(", cluster.node(i).log), i
        assert re.search(r"Node 3 (restarted|back online) \(", cluster.node(i).log), i
    verify_all(log, [cluster.node(i) for i in (3, 1, 2)], "node 3 restarted")


def test_paused_node_catches_up_after_it_resumes(make_cluster: ClusterFactory) -> None:
    """SIGSTOP is a hung node, not a dead one: sockets stay open, nothing answers. Once it
    resumes it must end up with every acknowledged point of its share, with no read to
    repair it (anti-entropy off), and every node must read every acknowledged point."""
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    log = PointLog()
    writers = [Writers(cluster.node(i), log, threads=2, make_batch=load_batch(f"pause.n{i}"),
                       seed=10 + i) for i in (1, 2)]
    for w in writers:
        w.start()
    paused = cluster.node(3)
    try:
        cluster.wait_until(lambda: log.statuses[201] >= 40, "40 acknowledged writes", 30)
        paused.signal_group(signal.SIGSTOP)
        cluster.wait_sees(1, {1, 2})
        cluster.wait_sees(2, {1, 2})
        acked = log.statuses[201]
        cluster.wait_until(lambda: log.statuses[201] >= acked + 40,
                           "writes acknowledged with node 3 paused", 30)
        paused.signal_group(signal.SIGCONT)
        cluster.wait_converged()
    finally:
        paused.signal_group(signal.SIGCONT)
        for w in writers:
            w.stop()
    bad = {s: n for s, n in log.statuses.items() if s not in (201, 503)}
    assert not bad, (bad, log.errors[:5])
    cluster.wait_until(lambda: all(cluster.stats(i)["hints_pending"] == 0 for i in cluster.ids),
                       "every hint handed off")

    share = sorted(n for n in log.series_names() if 3 in cluster.endpoints(n))
    assert share, "no series on node 3"
    lone = cluster.alone(3)
    problems = []
    for name in share:
        got = {r["timestamp"]: r["value"] for r in lone.range(name)}
        for (series_name, ts) in [k for k in log.attempts if k[0] == name]:
            values, may_be_absent = log.allowed((series_name, ts))
            if ts not in got and not may_be_absent:
                problems.append(("missing", name, ts))
            elif ts in got and got[ts] not in values:
                problems.append(("wrong", name, ts, got[ts]))
    assert not problems, f"node 3 alone: {len(problems)} bad points, e.g. {problems[:5]}"

    cluster.start([1, 2])
    verify_all(log, [cluster.node(i) for i in (1, 2, 3)], "after node 3 resumed")


# -- 5. hinted handoff ---------------------------------------------------------------------


def test_hinted_handoff_delivers_to_a_returning_replica(make_cluster: ClusterFactory) -> None:
    # No anti-entropy: whatever node 3 holds at the end, hand-off brought it.
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    x = 3
    names = pick_series(cluster, "hh", 8, lambda reps: x in reps)
    # Each series is written and overwritten through the same coordinator: see
    # test_a_later_overwrite_through_another_coordinator_wins for why.
    model = write_series(cluster, names, 30, consistency="all", via=[1, 2])
    cluster.kill(x)
    cluster.wait_sees(1, {1, 2})
    cluster.wait_sees(2, {1, 2})
    # with node 3 down: overwrite points 10..29 and add 30..39, all of them hinted for it
    write_series(cluster, names, 30, consistency="quorum", via=[1, 2], first=10, offset=0.5,
                 model=model)
    total = 30 * len(names)

    pending = {i: cluster.stats(i)["hints_pending"] for i in (1, 2)}
    assert sum(pending.values()) == total, pending
    status = cluster.status(1)
    advertised = {m["node_id"]: m["hints_pending"] for m in status["members"]}
    assert advertised[1] == pending[1], (advertised, pending)
    # while node 3 is down both survivors answer every point (replica + hint holder)
    for i in (1, 2):
        for name in names:
            assert cluster.node(i).range(name) == rows(model[name]), (i, name)

    # Hints are durable: both holders crash and come back with them.
    for i in (1, 2):
        cluster.kill(i)
    cluster.start([1, 2])
    assert sum(cluster.stats(i)["hints_pending"] for i in (1, 2)) == total

    cluster.restart(x)
    holders = [i for i in (1, 2) if pending[i]]
    cluster.wait_until(
        lambda: sum(cluster.stats(i)["hinted_points_delivered"] for i in (1, 2)) >= total
        and all(cluster.stats(i)["hints_pending"] == 0 for i in (1, 2)),
        "hints delivered to node 3")
    for i in holders:
        assert re.search(rf"Hinted handoff to node {x}: \d+ points of \d+ series delivered",
                         cluster.node(i).log), cluster.node(i).log_tail()

    # node 3 alone holds the newest value of every point: hand-off kept the write versions
    lone = cluster.alone(x)
    assert_holds(lone, model, set(names), "node 3 alone after hand-off")


def test_a_hint_larger_than_one_message_is_handed_off_in_slices(
        make_cluster: ClusterFactory) -> None:
    """250,000 points of one series hinted while its replica is down: more than one hand-off
    message holds (200,000), so it arrives in slices, and the replica alone holds all."""
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    [name] = cluster.series_on(lambda reps: 3 in reps, 1, "sliced")
    cluster.kill(3)
    cluster.wait_sees(1, {1, 2})
    cluster.wait_sees(2, {1, 2})
    total = 250_000
    for start in range(0, total, 50_000):
        stamps = list(range(T0 + start, T0 + start + 50_000))
        cluster.insert(1, {"series": name, "timestamps": stamps,
                           "values": [float(t % 1000) for t in stamps]})
    held = sum(cluster.stats(i)["hints_pending"] for i in (1, 2))
    assert held == total, held
    cluster.restart(3)
    cluster.wait_until(lambda: all(cluster.stats(i)["hints_pending"] == 0 for i in (1, 2)),
                       "every hint handed off")
    lines = [line for i in (1, 2) for line in cluster.node(i).log.splitlines()
             if "Hinted handoff to node 3" in line]
    assert len(lines) >= 2, lines  # more than one message: sliced
    lone = cluster.alone(3)
    got = lone.range(name, start=T0, end=T0 + total)
    assert len(got) == total
    assert got[0] == {"timestamp": T0, "value": float(T0 % 1000)}
    assert got[-1]["timestamp"] == T0 + total - 1


def test_no_hints_for_a_replica_down_longer_than_the_hint_window(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0",
                                      "MAX_HINT_WINDOW_SECONDS": "1"})
    names = pick_series(cluster, "window", 4, lambda reps: 3 in reps)
    cluster.kill(3)
    cluster.wait_sees(1, {1, 2})
    cluster.wait_sees(2, {1, 2})
    time.sleep(2.0)  # node 3 has now been down longer than the 1 s window
    write_series(cluster, names, 10, consistency="quorum", via=[1, 2])
    held = {i: cluster.stats(i)["hints_pending"] for i in (1, 2)}
    assert held == {1: 0, 2: 0}, f"hints stored past the window: {held}"


# -- 6. a wiped node restored by anti-entropy ----------------------------------------------


def test_wiped_node_catches_up_before_it_counts_for_reads(make_cluster: ClusterFactory) -> None:
    """A node started on an empty DATA_DIR compares with every replica peer before it counts
    for reads (anti-entropy's background job is off: catching up runs all the same); then
    /cluster/repair finds nothing left to repair and it alone holds its share."""
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    x = 2
    names = [f"wipe.s{k}" for k in range(30)]
    placement = {name: cluster.endpoints(name) for name in names}
    share = {n for n in names if x in placement[n]}
    # 30 min apart: 30 one-hour digest buckets per series, more than one exchange message
    model = write_series(cluster, names, 60, consistency="all", step_ms=1_800_000)

    cluster.wipe(x)  # returns once no node sees a member catching up
    log = cluster.node(x).log
    assert "catching up: its store is new" in log, cluster.node(x).log_tail()
    assert "caught up: compared with every replica peer" in log, cluster.node(x).log_tail()
    stats = cluster.stats(x)
    assert stats["series"] == len(share), stats
    assert stats["anti_entropy"]["rounds"] >= 1, stats

    report = cluster.node(x).post("/cluster/repair", timeout=60).json()
    assert sorted(report["peers"]) == [1, 3], report
    assert report["errors"] == [] and report["ranges_differing"] == 0, report
    assert report["points_received"] == 0 and report["points_sent"] == 0, report

    lone = cluster.alone(x)
    assert_holds(lone, model, share, "wiped node 2 alone after catching up")


def test_wiped_node_restored_by_background_anti_entropy(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 3, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "2"})
    x = 1
    names = [f"bg.s{k}" for k in range(20)]
    model = write_series(cluster, names, 60, consistency="all", step_ms=1_800_000)
    cluster.wipe(x)

    def converged() -> bool:
        stats = cluster.stats(x)
        ae = stats["anti_entropy"]
        last = ae["last"]
        # a round of node x's own that compared both peers and found nothing different
        return (stats["series"] == len(names) and ae["rounds"] >= 1
                and sorted(last.get("peers", [])) == [2, 3]
                and last.get("ranges_differing") == 0 and last.get("errors") == [])

    cluster.wait_until(converged, "wiped node 1 converged by background anti-entropy", 45,
                       interval=0.5)
    assert cluster.stats(x)["read_repairs"] == 0  # nothing was read through it
    lone = cluster.alone(x)
    assert_holds(lone, model, set(names), "wiped node 1 alone after background anti-entropy")


def test_read_repair_restores_a_stale_replica(make_cluster: ClusterFactory) -> None:
    """A replica that missed writes (down, no hints: MAX_HINT_WINDOW_SECONDS=0, anti-entropy
    off) is brought up to date by one read of each series, before the read answers."""
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0",
                                      "MAX_HINT_WINDOW_SECONDS": "0"})
    x = 3
    names = [f"rr.s{k}" for k in range(16)]
    placement = {name: cluster.endpoints(name) for name in names}
    share = {n for n in names if x in placement[n]}
    cluster.kill(x)
    cluster.wait_sees(1, {1, 2})
    cluster.wait_sees(2, {1, 2})
    model = write_series(cluster, names, 40, consistency="one", via=[1, 2])
    cluster.restart(x)
    assert cluster.stats(x)["series"] == 0
    for k, name in enumerate(names):  # one read of each series, through any node
        via = 1 + k % 3
        assert cluster.node(via).range(name) == rows(model[name]), (via, name)
    repairs = sum(cluster.stats(i)["read_repairs"] for i in cluster.ids)
    repaired = sum(cluster.stats(i)["read_repair_points"] for i in cluster.ids)
    assert repairs == len(share) and repaired == 40 * len(share), (repairs, repaired, len(share))
    # the repair was done before the reads answered: nothing more is read from here on
    lone = cluster.alone(x)
    assert_holds(lone, model, share, "stale node 3 alone after one read of each series")


def test_anti_entropy_merges_by_last_write_wins(make_cluster: ClusterFactory) -> None:
    """A replica that missed overwrites (its hints are stuck on a down node) is brought up
    to date by /cluster/repair, and its stale values do not overwrite the newer ones."""
    cluster = make_cluster(3, 2, env={"ANTI_ENTROPY_INTERVAL_SECONDS": "0"})
    names = pick_series(cluster, "lww", 6, lambda reps: sorted(reps) == [1, 2])
    # each series written and overwritten through the same coordinator: see
    # test_a_later_overwrite_through_another_coordinator_wins
    model = write_series(cluster, names, 40, consistency="all", step_ms=600_000, via=[1, 3])
    stale = {n: dict(m) for n, m in model.items()}
    cluster.kill(2)
    cluster.wait_sees(1, {1, 3})
    cluster.wait_sees(3, {1, 3})
    # overwrite 20..39 and add 40..49 while node 2 is down; node 3 holds them as hints
    write_series(cluster, names, 30, consistency="quorum", via=[1, 3], first=20, offset=0.5,
                 model=model)
    assert cluster.stats(3)["hints_pending"] == 30 * len(names)
    cluster.kill(3)  # the hints go down with node 3
    cluster.restart(2)
    report = cluster.node(2).post("/cluster/repair", timeout=60).json()
    assert report["peers"] == [1] and report["errors"] == [], report
    assert report["points_received"] > 0, report

    cluster.kill(2)  # node 1 alone: it kept the newer values
    cluster.wait_sees(1, 1)
    assert_holds(cluster.node(1), model, set(names), "node 1 alone after the repair")
    cluster.restart(2, converge=False)
    cluster.alone(2)  # node 2 alone: it now has them too
    assert_holds(cluster.node(2), model, set(names), "node 2 alone after the repair")
    assert stale != model


# -- 8. consistency levels -----------------------------------------------------------------


def test_consistency_levels_with_a_replica_down(make_cluster: ClusterFactory) -> None:
    # RF=3 on three nodes: with one down no other node can stand in for it.
    cluster = make_cluster(3, 3)
    name = "cl.s"

    def one_point(ts: int) -> dict[str, Any]:
        return {"series": name, "timestamp": ts, "value": float(ts - T0)}

    cluster.insert(1, one_point(T0), consistency="all")

    cluster.kill(3)
    # Straight after the kill node 1 may or may not have noticed yet: either way the write
    # cannot reach 3 replicas.
    resp = cluster.insert(1, one_point(T0 + 1), consistency="all", expect=None)
    assert_error(resp, 503, "2 of 3 replicas", "consistency=all")
    cluster.wait_sees(1, {1, 2})
    cluster.wait_sees(2, {1, 2})

    resp = cluster.insert(1, one_point(T0 + 2), consistency="all", expect=None)
    assert_error(resp, 503, "2 of 3 replicas", "consistency=all")
    resp = cluster.node(2).post("/insert", json=one_point(T0 + 3),
                                headers={"X-Count-Consistency": "ALL"})
    assert_error(resp, 503, "2 of 3 replicas", "consistency=all")
    cluster.insert(1, one_point(T0 + 4), consistency="one")
    cluster.insert(2, one_point(T0 + 5), consistency="quorum")
    cluster.insert(2, one_point(T0 + 6))  # default quorum: 2 of 3
    resp = cluster.node(1).post("/insert", json=one_point(T0 + 7),
                                headers={"X-Count-Consistency": "one"})
    assert resp.status_code == 201, resp.text

    for bad in ("two", "ALLL", "strong"):
        assert_error(cluster.insert(1, one_point(T0 + 9), consistency=bad, expect=None), 400,
                     "consistency")
        assert_error(cluster.node(2).post("/insert", json=one_point(T0 + 9),
                                          headers={"X-Count-Consistency": bad}), 400,
                     "consistency")
        assert_error(cluster.node(1).get(f"/query/range/{name}",
                                         params={"consistency": bad}), 400, "consistency")
    resp = cluster.node(1).get(f"/query/range/{name}", params={"consistency": "all"})
    assert_error(resp, 503, "consistency=all")
    for level in ("one", "quorum"):
        resp = cluster.node(2).get(f"/query/range/{name}", params={"consistency": level})
        assert resp.status_code == 200, (level, resp.text)
    got = {i: cluster.node(i).range(name) for i in (1, 2)}
    assert got[1] == got[2]
    stamps = [r["timestamp"] for r in got[1]]
    assert {T0, T0 + 4, T0 + 5, T0 + 6, T0 + 7} <= set(stamps), stamps
    assert T0 + 9 not in stamps, stamps


# -- 9. a node that sees no majority ------------------------------------------------------


def test_minority_node_refuses_writes_and_serves_reads(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, 2, fast=False)  # default heartbeat and failure timeout
    names = pick_series(cluster, "minority", 3, lambda reps: 1 in reps)
    model = write_series(cluster, names, 20, consistency="all")

    cluster.stop(2)  # clean stop: node 2 says it is leaving
    cluster.kill(3)
    cluster.wait_sees(1, 1)
    health = cluster.health(1)
    assert guide_fields(health) == {"status": "unhealthy", "node_id": 1, "cluster_size": 1}
    assert "sees 1 of 3 members alive" in health["reasons"][0], health
    log = cluster.node(1).log
    assert "Node 2 leaving" in log and "Node 3 unreachable" in log, cluster.node(1).log_tail()
    # reported once the startup grace (3 heartbeats + a failure timeout) is over
    cluster.wait_until(lambda: "Network partition detected" in cluster.node(1).log,
                       "the partition logged by node 1")

    for level in (None, "one", "all"):
        resp = cluster.insert(1, points(names[0], [T0 + 999_999], [1.0]), consistency=level,
                              expect=None)
        assert_error(resp, 503, "partition")
    assert cluster.stats(1)["writes_refused"] >= 3
    for name in names:  # reads still answered, from node 1's own storage
        assert cluster.node(1).range(name) == rows(model[name]), name
    assert cluster.node(1).aggregate(names[0], "count") == 20
    resp = cluster.node(1).get("/series", params={"prefix": "minority."})
    assert resp.status_code == 200 and set(names) <= set(resp.json()), resp.text
    status = cluster.status(1)
    assert status["status"] == "unhealthy" and status["cluster_size"] == 1
    assert [m["alive"] for m in status["members"]] == [True, False, False], status["members"]

    cluster.restart(2)  # a majority again: writes are taken
    assert guide_fields(cluster.health(1)) == {"status": "degraded", "node_id": 1,
                                               "cluster_size": 2}
    cluster.insert(1, points(names[0], [T0 + 999_999], [1.0]), consistency="quorum")
    assert "Network partition healed" in cluster.node(1).log
    assert re.search(r"Node 2 (back online|restarted|joining)", cluster.node(1).log)
