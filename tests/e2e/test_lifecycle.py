"""End-to-end tests of a node's life: configuration, stops, crashes, concurrency, full disks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pytest
import requests

from tests.e2e.conftest import CountNode, NodeFactory, guide_fields, port_free
from tests.e2e.workload import Batch, PointLog, Writers

pytestmark = pytest.mark.timeout(120)

COUNT_SERVER = Path(sys.executable).with_name("count-server")


def assert_json_error(resp: requests.Response, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers.get("content-type", "").startswith("application/json")
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"} and body["error"], body
    return body["error"]


def assert_503_saying_why(resp: requests.Response) -> str:
    """A 503 in JSON: an error ``{"error": ...}``, or a probe's body (/health, /ready,
    /live keep their shape and say why in ``reasons``); returns the message."""
    if resp.request.path_url.split("?")[0] in ("/health", "/ready", "/live"):
        assert resp.status_code == 503, (resp.status_code, resp.text[:300])
        body = resp.json()
        assert body["status"] in ("unhealthy", "not_ready", "not_live"), body
        assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("node process: ")
        return str(body["reasons"][0])
    return assert_json_error(resp, 503)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def assert_only_acks_and_disconnects(log: PointLog) -> None:
    """Every request got 201 or lost its connection (the node went away); no error status,
    no timeout (a hang)."""
    bad = {s: n for s, n in log.statuses.items()
           if s != 201 and (isinstance(s, int) or "Timeout" in s)}
    assert not bad, (bad, log.errors[:5])


# -- configuration -------------------------------------------------------------------------

CONFIG_ERRORS: list[tuple[dict[str, str | None], str]] = [
    ({"MEMORY_BUFFER_SIZE": "abc"}, "MEMORY_BUFFER_SIZE"),
    ({"MEMORY_BUFFER_SIZE": "99"}, "MEMORY_BUFFER_SIZE"),
    ({"BIND_ADDRESS": "nope"}, "BIND_ADDRESS"),
    ({"BIND_ADDRESS": "127.0.0.1:70000"}, "BIND_ADDRESS"),
    ({"BIND_ADDRESS": "127.0.0.1:"}, "BIND_ADDRESS"),
    ({"REPLICATION_FACTOR": "0"}, "REPLICATION_FACTOR"),
    ({"REPLICATION_FACTOR": "two"}, "REPLICATION_FACTOR"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"LOG_LEVEL": "=debug"}, "LOG_LEVEL"),
    ({"HTTP_WORKERS": "0"}, "HTTP_WORKERS"),
    ({"HTTP_THREADS": "65"}, "HTTP_THREADS"),
    ({"REQUEST_TIMEOUT_MS": "10"}, "REQUEST_TIMEOUT_MS"),
    ({"MAX_BODY_BYTES": "1k"}, "MAX_BODY_BYTES"),
    ({"MAX_BATCH_POINTS": "0"}, "MAX_BATCH_POINTS"),
    ({"MAX_SERIES_NAME_LENGTH": "5000"}, "MAX_SERIES_NAME_LENGTH"),
    ({"MAX_QUERY_POINTS": "999"}, "MAX_QUERY_POINTS"),
    ({"LMDB_MAP_SIZE_MB": "0"}, "LMDB_MAP_SIZE_MB"),
    ({"FLUSH_INTERVAL_SECONDS": "0"}, "FLUSH_INTERVAL_SECONDS"),
    ({"NODE_ID": "bad name!"}, "NODE_ID"),
    ({"NODE_ID": "-1"}, "NODE_ID"),
    ({"CLUSTER_ENABLED": "maybe"}, "CLUSTER_ENABLED"),
    ({"CLUSTER_ENABLED": "true", "CLUSTER_NODES": ""}, "CLUSTER_NODES"),
    ({"CLUSTER_NODES": "a:1,b"}, "CLUSTER_NODES"),
    ({"DATA_DIR": "   "}, "DATA_DIR"),
    ({"DATA_DIR": "{a_file}/sub"}, "DATA_DIR"),  # under a regular file: cannot be created
]


@pytest.mark.parametrize("env,variable", CONFIG_ERRORS,
                         ids=[",".join(f"{k}={v}" for k, v in e.items()) for e, _ in CONFIG_ERRORS])
def test_bad_config_exits_2_naming_the_variable(make_node: NodeFactory, tmp_path: Path, env,
                                               variable: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {k: v.replace("{a_file}", str(a_file)) if v else v for k, v in env.items()}
    node = make_node(env, start=False)
    node.start()
    code = node.wait_exit(timeout=30)
    assert code == 2, node.log
    assert variable in node.log, node.log
    assert "configuration error" in node.log
    assert port_free(node.port, reuse=True)


def test_bad_config_via_console_script(make_node: NodeFactory) -> None:
    if not COUNT_SERVER.exists():
        pytest.skip(f"no console script at {COUNT_SERVER}")
    node = make_node({"MEMORY_BUFFER_SIZE": "abc"}, start=False, command=[str(COUNT_SERVER)])
    node.start()
    assert node.wait_exit(timeout=30) == 2
    assert "MEMORY_BUFFER_SIZE" in node.log


def test_bad_rust_log_exits_2(make_node: NodeFactory) -> None:
    node = make_node({"LOG_LEVEL": None, "RUST_LOG": "loud"}, start=False)
    node.start()
    assert node.wait_exit(timeout=30) == 2
    # The message names the variable that was actually set, and the bad value.
    assert "RUST_LOG" in node.log, node.log
    assert "loud" in node.log


def test_node_id_name_and_number(make_node: NodeFactory) -> None:
    named = make_node({"NODE_ID": "count-cluster-2", "HTTP_WORKERS": "3"}, start=False)
    numbered = make_node({"NODE_ID": "7", "HTTP_WORKERS": "1", "HTTP_THREADS": "1"}, start=False)
    named.start()
    numbered.start()
    named.wait_ready()
    numbered.wait_ready()
    assert guide_fields(named.get("/health").json()) == {
        "status": "healthy", "node_id": "count-cluster-2", "cluster_size": 1}
    body = numbered.get("/health").json()
    assert guide_fields(body) == {"status": "healthy", "node_id": 7, "cluster_size": 1}
    assert type(body["node_id"]) is int
    assert f"Node count-cluster-2 serving HTTP on {named.address} (3 workers x 4 threads)" in named.log
    # (workers boot one after another; /health answers once the first one is up)
    for node, workers in ((named, 3), (numbered, 1)):
        deadline = time.monotonic() + 20
        while len(node.http_master().children()) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        assert len(node.http_master().children()) == workers


def test_flush_interval_flushes_a_small_buffer(make_node: NodeFactory) -> None:
    node = make_node({"FLUSH_INTERVAL_SECONDS": "1", "MEMORY_BUFFER_SIZE": "10000"})
    node.insert([{"series": "fi.s", "timestamp": i, "value": float(i)} for i in range(10)])
    assert node.stats()["buffer_points"] == 10
    stats = node.wait_for_stats(lambda s: s["flushes"] >= 1, timeout=10, what="timed flush")
    assert stats["buffer_points"] == 0
    assert node.range("fi.s") == [{"timestamp": i, "value": float(i)} for i in range(10)]


def test_rust_log_is_accepted_and_applied(make_node: NodeFactory) -> None:
    node = make_node({"LOG_LEVEL": None, "RUST_LOG": "count::storage=debug,warn",
                      "MEMORY_BUFFER_SIZE": "100"})
    node.insert([{"series": "log.test", "timestamp": i, "value": 1.0} for i in range(150)])
    node.wait_for_stats(lambda s: s["flushes"] >= 1, what="flush")
    deadline = time.monotonic() + 10
    while "Flushed 150 points" not in node.log and time.monotonic() < deadline:
        time.sleep(0.1)
    log = node.log
    assert "DEBUG [node] count.storage: Flushed 150 points" in log, log
    assert "count.storage: Storage opened" in log  # INFO of count.storage: under debug
    assert "INFO [server]" not in log and "[INFO] Booting worker" not in log, log  # default warn


def test_log_level_wins_over_rust_log(make_node: NodeFactory) -> None:
    node = make_node({"LOG_LEVEL": "info", "RUST_LOG": "not a filter!"})
    assert node.get("/health").status_code == 200
    assert "INFO [server] count.server: Node 1 serving HTTP" in node.log


# -- clean stop ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_stop_exits_0_and_keeps_data(make_node: NodeFactory, sig: int) -> None:
    node = make_node({"MEMORY_BUFFER_SIZE": "1000"})
    rng = random.Random(5)
    model = {}
    for i in range(5):
        stamps = rng.sample(range(10_000_000), 500)
        batch = [{"series": f"stop.s{i % 2}", "timestamp": t, "value": rng.random()} for t in stamps]
        node.insert(batch)
        model.update({(f"stop.s{i % 2}", p["timestamp"]): p["value"] for p in batch})
    children = [p.pid for p in node.children()]
    assert len(children) >= 4, children  # node process, gunicorn master, 2 workers (+tracker)
    started = time.monotonic()
    assert node.stop(sig, timeout=40) == 0, node.log
    assert time.monotonic() - started < 30
    assert wait_gone(children, 10) == []
    log = node.log
    assert "storage closed cleanly" in log, log
    assert "Traceback" not in log, log
    assert port_free(node.port, reuse=True)
    node.start_ready()
    assert "0 points replayed from the WAL" in node.log  # the stop flushed the buffer
    assert node.stats()["buffer_points"] == 0
    for name in ("stop.s0", "stop.s1"):
        got = {r["timestamp"]: r["value"] for r in node.range(name)}
        assert got == {t: v for (s, t), v in model.items() if s == name}


def test_sigterm_under_load_loses_no_acknowledged_write(make_node: NodeFactory) -> None:
    node = make_node({"MEMORY_BUFFER_SIZE": "500"})
    log = PointLog()

    def batch(thread: int, seq: int, rng: random.Random) -> Batch:
        return [{"series": f"term.t{thread}", "timestamp": seq * 20 + j, "value": rng.random()}
                for j in range(20)]

    writers = Writers(node, log, threads=4, make_batch=batch).start()
    node.wait_for_stats(lambda s: s["points_written"] >= 3000, timeout=30, what="load")
    assert node.stop(signal.SIGTERM, timeout=40) == 0, node.log
    writers.stop()
    # a graceful stop answers what is in flight: connections may be refused or closed while
    # idle, but no response is cut off and no request fails with an error status
    bad = {s: n for s, n in log.statuses.items() if s not in (201, "ConnectionError")}
    assert not bad, (bad, log.errors[:5])
    node.start_ready()
    report = log.verify(node)
    assert not report["missing"] and not report["wrong"] and not report["phantom"], report
    assert report["acked"] >= 3000


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_writers_every_ack_is_readable(make_node: NodeFactory) -> None:
    """8 threads x 200 requests, single points and batches, to own, shared and contended series."""
    node = make_node({"MEMORY_BUFFER_SIZE": "500", "HTTP_THREADS": "4"})
    threads, per_thread = 8, 200
    last_contended: dict[tuple[int, int], float] = {}
    lock = threading.Lock()

    def batch(thread: int, seq: int, rng: random.Random) -> Batch:
        value = float(thread * 1_000_000 + seq)
        if seq % 3 == 0:  # a single point to this thread's own series
            return [{"series": f"cc.own{thread}", "timestamp": seq, "value": value}]
        points = [{"series": f"cc.own{thread}", "timestamp": seq, "value": value}]
        # the shared series: timestamps disjoint between threads
        points += [{"series": "cc.shared", "timestamp": (seq * 10 + j) * threads + thread,
                    "value": value + j / 100} for j in range(10)]
        # the contended series: every thread writes the same 50 timestamps
        ts = rng.randrange(50)
        points.append({"series": "cc.contended", "timestamp": ts, "value": value})
        with lock:
            last_contended[(thread, ts)] = value
        return points

    log = PointLog()
    reads: list[str] = []
    read_problems: list[Any] = []
    done = threading.Event()

    def reader() -> None:
        """Reads during the load see every point acknowledged before they started."""
        session = requests.Session()
        rng = random.Random(99)
        while not done.is_set():
            name = f"cc.own{rng.randrange(threads)}"
            acked = log.acked_now(name)
            try:
                resp = session.get(node.url(f"/query/range/{name}"), timeout=15)
            except requests.RequestException as exc:
                read_problems.append(repr(exc))
                continue
            if resp.status_code != 200:
                read_problems.append((resp.status_code, resp.text[:200]))
                continue
            got = {r["timestamp"]: r["value"] for r in resp.json()}
            lost = [(ts, v, got.get(ts)) for ts, v in acked.items() if got.get(ts) != v]
            if lost:
                read_problems.append((name, lost[:5]))
            reads.append(name)

    started = time.monotonic()
    readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    writers = Writers(node, log, threads=threads, make_batch=batch, requests_per_thread=per_thread)
    writers.start()
    for t in readers:
        t.start()
    try:
        writers.join(timeout=100)
    finally:
        done.set()
        for t in readers:
            t.join(20)
    elapsed = time.monotonic() - started
    assert log.statuses == {201: threads * per_thread}, (log.statuses, log.errors[:5])
    assert not read_problems, read_problems[:5]
    assert len(reads) >= 10, len(reads)

    def check() -> None:
        own_shared = PointLog()
        own_shared.attempts = {k: v for k, v in log.attempts.items() if k[0] != "cc.contended"}
        report = own_shared.verify(node)
        assert not report["missing"] and not report["wrong"] and not report["phantom"], report
        contended = {r["timestamp"]: r["value"] for r in node.range("cc.contended")}
        written = {ts for (_, ts) in last_contended}
        assert set(contended) == written
        for ts, value in contended.items():
            # some thread's last write of ts: a thread's later write always beats its earlier one
            finals = {v for (t, s), v in last_contended.items() if s == ts}
            assert value in finals, (ts, value, finals)

    check()
    stats = node.stats()
    assert stats["inserts"] == threads * per_thread
    assert stats["flushes"] >= 5, stats
    node.restart()
    check()
    print(f"concurrent writers: {threads * per_thread} requests in {elapsed:.1f} s")


# -- crashes -------------------------------------------------------------------------------


def _crash_workload(make_node: NodeFactory, env: dict[str, str], ready, threads: int = 4,
                    timeout: float = 40.0) -> tuple[CountNode, PointLog, dict[str, Any]]:
    """Write with overwrites until ``ready(stats)``, SIGKILL the process group, restart."""
    node = make_node(env)
    log = PointLog()
    series = [f"crash.s{j}" for j in range(5)]

    def batch(thread: int, seq: int, rng: random.Random) -> Batch:
        points = []
        for j in range(rng.randrange(1, 80)):
            if seq and rng.random() < 0.15:  # overwrite one of this thread's earlier points
                ts = rng.randrange(seq) * 100 * threads + thread
            else:
                ts = (seq * 100 + j) * threads + thread
            points.append({"series": series[ts % len(series)],
                           "timestamp": ts, "value": float(thread * 10**9 + seq * 100 + j)})
        return points

    writers = Writers(node, log, threads=threads, make_batch=batch, seed=11).start()
    try:
        stats = node.wait_for_stats(ready, timeout=timeout, what="crash point", interval=0.2)
    except BaseException:
        writers.stop()
        raise
    node.kill()  # SIGKILL of supervisor, node process, gunicorn master and workers at once
    writers.stop()
    print(f"killed at {stats}")
    node.start_ready()
    return node, log, stats


def _assert_crash_report(node: CountNode, log: PointLog, minimum_acked: int) -> dict[str, Any]:
    report = log.verify(node)
    problems = {k: report[k][:10] for k in ("missing", "wrong", "phantom") if report[k]}
    assert not problems, (problems, {k: len(report[k]) for k in problems}, log.statuses)
    assert_only_acks_and_disconnects(log)
    assert report["acked"] >= minimum_acked, report["acked"]
    print(f"crash check: {report['acked']} acked points, {report['found']} found, "
          f"statuses {dict(log.statuses)}")
    return report


def test_kill_9_with_small_buffer_loses_no_acknowledged_write(make_node: NodeFactory) -> None:
    """Flushes and compactions happen during the load; kill -9 after some compaction."""
    node, log, stats = _crash_workload(
        make_node, {"MEMORY_BUFFER_SIZE": "500"},
        ready=lambda s: s["flushes"] >= 40 and s["blocks"] > 0 and s["buffer_points"] > 0)
    assert "points replayed from the WAL" in node.log
    _assert_crash_report(node, log, minimum_acked=10_000)
    # the recovered node works normally: write, flush, read
    node.insert({"series": "crash.s0", "timestamp": 10**12, "value": 1.0})
    assert node.range("crash.s0", start=10**12) == [{"timestamp": 10**12, "value": 1.0}]


def test_kill_9_with_default_buffer_replays_the_wal(make_node: NodeFactory) -> None:
    node, log, stats = _crash_workload(
        make_node, {"MEMORY_BUFFER_SIZE": None},
        ready=lambda s: s["flushes"] >= 1 and s["buffer_points"] >= 2000)
    replayed = [line for line in node.log.splitlines() if "replayed from the WAL" in line]
    assert replayed and " 0 points replayed" not in replayed[0], replayed
    _assert_crash_report(node, log, minimum_acked=8_000)


def test_repeated_kill_9_while_writing(make_node: NodeFactory) -> None:
    """Three crashes in a row on the same data, each during writes; nothing acked is lost."""
    node = make_node({"MEMORY_BUFFER_SIZE": "300"})
    log = PointLog()

    def batch(thread: int, seq: int, rng: random.Random) -> Batch:
        base = (node.runs * 10**6 + seq * 40) * 2 + thread
        return [{"series": f"rk.s{thread}", "timestamp": base + 2 * j, "value": rng.random()}
                for j in range(40)]

    for _ in range(3):
        target = node.stats()["points_written"] + 2500
        writers = Writers(node, log, threads=2, make_batch=batch).start()
        try:
            node.wait_for_stats(lambda s, target=target: s["points_written"] >= target, timeout=30,
                                what="load")
        finally:
            node.kill()
            writers.stop()
        node.start_ready()
    _assert_crash_report(node, log, minimum_acked=7500)


def test_killing_the_node_process_stops_the_server(make_node: NodeFactory) -> None:
    node = make_node({"REQUEST_TIMEOUT_MS": "500"})
    node.insert({"series": "nk.s", "timestamp": 1, "value": 1.0})
    owner = node.node_process()
    master = node.http_master()
    assert owner.pid != master.pid
    assert any(f.path.endswith("data.mdb") for f in owner.open_files())
    workers = [p.pid for p in master.children()]

    # Slow node (stopped): requests get 503 JSON after REQUEST_TIMEOUT_MS, not a hang.
    owner.send_signal(signal.SIGSTOP)
    try:
        for method, path, kwargs in (
            ("GET", "/health", {}), ("GET", "/ready", {}), ("GET", "/live", {}),
            ("GET", "/stats", {}),
            ("GET", "/query/range/nk.s", {}),
            ("POST", "/insert", {"json": {"series": "nk.s", "timestamp": 2, "value": 2.0}}),
        ):
            started = time.monotonic()
            resp = node.request(method, path, timeout=10, **kwargs)
            elapsed = time.monotonic() - started
            message = assert_503_saying_why(resp)
            assert 0.4 <= elapsed < 3.0, (path, elapsed)
            assert "did not answer" in message or "not accepting" in message, message

        # A request in flight when the node process dies also gets 503, not a hang.
        results: list[Any] = []

        def long_request() -> None:
            started = time.monotonic()
            try:
                r = requests.get(node.url("/query/range/nk.s"), timeout=10)
                results.append((r.status_code, r.headers.get("content-type"), r.text,
                                time.monotonic() - started))
            except requests.RequestException as exc:
                results.append((type(exc).__name__, None, str(exc), time.monotonic() - started))

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.1)
        owner.send_signal(signal.SIGKILL)
    finally:
        try:
            owner.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass
    thread.join(15)
    assert not thread.is_alive()
    status, ctype, text, elapsed = results[0]
    assert status == 503 and ctype.startswith("application/json") and '"error"' in text, results
    assert elapsed < 3.0, results

    # The supervisor notices, stops HTTP and exits non-zero; no child survives it.
    code = node.wait_exit(timeout=40)
    assert code != 0, node.log
    assert code == 1, code
    assert "count-node exited with code -9" in node.log, node.log
    assert wait_gone([master.pid, *workers], 10) == []
    assert port_free(node.port, reuse=True)

    # The data acknowledged before is intact after a restart.
    node.start_ready()
    assert node.range("nk.s") == [{"timestamp": 1, "value": 1.0}]


def test_requests_right_after_node_process_death_are_503_or_refused(make_node: NodeFactory) -> None:
    node = make_node({"REQUEST_TIMEOUT_MS": "300"})
    owner = node.node_process()
    session = requests.Session()
    session.get(node.url("/health"), timeout=5)  # a keep-alive connection to a worker
    owner.kill()
    outcomes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            resp = session.get(node.url("/health"), timeout=10)
            assert_503_saying_why(resp)
            outcomes.append(503)
        except requests.ConnectionError:
            if not outcomes or outcomes[-1] != "refused":
                outcomes.append("refused")
            time.sleep(0.05)
        assert time.monotonic() - started < 3.0
        if not node.running():
            break
    assert node.wait_exit(timeout=40) == 1, node.log
    assert all(o in (503, "refused") for o in outcomes), outcomes
    print(f"after the node process died: {outcomes}")


def test_supervisor_death_takes_its_children_down(node: CountNode) -> None:
    """SIGKILL of count-server alone: PR_SET_PDEATHSIG kills the node process and gunicorn."""
    node.insert({"series": "sd.s", "timestamp": 1, "value": 1.0})
    descendants = [p.pid for p in node.children()]
    assert len(descendants) >= 4
    os.kill(node.pid, signal.SIGKILL)
    node.proc.wait(10)
    survivors = wait_gone(descendants, 15)
    assert survivors == [], [(p, " ".join(psutil.Process(p).cmdline())) for p in survivors]
    assert port_free(node.port, reuse=True)
    node.start_ready()  # same port, same DATA_DIR: nothing holds either
    assert node.range("sd.s") == [{"timestamp": 1, "value": 1.0}]


# -- storage limits ------------------------------------------------------------------------


def test_full_disk_gives_507_and_keeps_serving_reads(make_node: NodeFactory, tmpfs_dir: Path) -> None:
    node = make_node({"MEMORY_BUFFER_SIZE": "2000", "REQUEST_TIMEOUT_MS": "3000"},
                     data_dir=tmpfs_dir)
    rng = np.random.default_rng(9)
    first = [{"series": "full.kept", "timestamp": i, "value": float(i) / 4} for i in range(500)]
    node.insert(first)
    statuses = []
    body = ""
    for i in range(400):
        values = rng.random(1000)
        batch = [{"series": f"full.s{i % 5}", "timestamp": i * 1000 + j, "value": float(v)}
                 for j, v in enumerate(values)]
        try:
            resp = node.insert(batch, expect=None)
        except requests.RequestException as exc:
            statuses.append(type(exc).__name__)
            break
        statuses.append(resp.status_code)
        if resp.status_code != 201:
            body = resp.text
            break
    assert statuses[-1] == 507, (statuses[-3:], body, node.log_tail())
    message = orjson.loads(body)["error"]
    assert "disk full" in message.lower()
    # A probe sees it: /health and /ready are 503 naming the storage (test_health.py
    # follows the recovery once space returns).
    health = node.get("/health")
    assert health.status_code == 503 and health.json()["storage"] == "failing", health.text
    assert any("storage is not writable" in r for r in health.json()["reasons"]), health.text
    refused = batch  # nothing of a refused write is stored
    assert node.range(refused[0]["series"], start=refused[0]["timestamp"],
                      end=refused[-1]["timestamp"]) == []
    # The node stays up: health, stats and reads of earlier data work (also after the
    # background flush has retried for a while).
    time.sleep(2.5)
    assert node.running()
    assert node.get("/live").status_code == 200
    assert node.stats()["series"] >= 2
    assert node.range("full.kept") == [{"timestamp": p["timestamp"], "value": p["value"]} for p in first]
    assert node.aggregate("full.kept", "count") == 500
    # A batch like the refused one is still refused; a single point may fit in pages LMDB
    # freed inside its file, and if it is acknowledged it must be readable.
    assert_json_error(node.insert(batch, expect=None), 507)
    small = node.insert({"series": "full.kept", "timestamp": 10**9, "value": 1.0}, expect=None)
    if small.status_code == 201:
        assert node.range("full.kept", start=10**9, end=10**9) == [
            {"timestamp": 10**9, "value": 1.0}]
    else:
        assert_json_error(small, 507)
    assert node.running()


def test_lmdb_map_grows(make_node: NodeFactory) -> None:
    """LMDB_MAP_SIZE_MB=1 and ~5 MB of points: the map doubles as needed, nothing is lost."""
    node = make_node({"LMDB_MAP_SIZE_MB": "1"})
    before = node.stats()["map_size_bytes"]
    assert before == 1 << 20
    rng = np.random.default_rng(1)
    n_series, per_batch, batches = 4, 10_000, 20  # 200k points: ~5.6 MB in the WAL/segments
    ts = {s: [] for s in range(n_series)}
    val = {s: [] for s in range(n_series)}
    for b in range(batches):
        values = rng.random(per_batch) * 1e6  # random: the codec cannot shrink them much
        points = []
        for j in range(per_batch):
            s = j % n_series
            t = b * per_batch + j
            points.append({"series": f"map.s{s}", "timestamp": t, "value": float(values[j])})
            ts[s].append(t)
            val[s].append(float(values[j]))
        node.insert(orjson.dumps(points))
    after = node.stats()
    assert after["map_size_bytes"] > before, after
    assert after["map_size_bytes"] >= after["file_bytes"] > 4 << 20, after
    assert "LMDB map grown" in node.log

    def check() -> None:
        for s in range(n_series):
            resp = node.get(f"/query/range/map.s{s}")
            assert resp.status_code == 200
            rows = orjson.loads(resp.content)
            assert [r["timestamp"] for r in rows] == ts[s]
            assert [r["value"] for r in rows] == val[s]

    check()
    node.restart()
    check()
    assert node.stats()["map_size_bytes"] > 1 << 20


def test_cluster_without_an_entry_for_this_node_is_refused(tmp_path: Path) -> None:
    """A node must find itself in CLUSTER_NODES; otherwise it would place data on a ring
    that does not contain it."""
    env = {**os.environ, "CLUSTER_ENABLED": "true", "CLUSTER_NODES": "127.0.0.1:1,127.0.0.1:2",
           "DATA_DIR": str(tmp_path / "d"), "BIND_ADDRESS": "127.0.0.1:3"}
    result = subprocess.run([sys.executable, "-m", "count.server"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "CLUSTER_NODES" in result.stderr and "this node" in result.stderr
