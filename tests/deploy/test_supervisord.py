"""compose/supervisord.conf, run for real: three nodes, an OOM-style kill, a clean stop.

One test, in the order an operator meets these: supervisord starts the three nodes and they
form a healthy cluster; a point is written to every replica; SIGKILL of one node's whole
process group (what the OOM killer does) is an unexpected exit that supervisord answers
by starting the node again, and the cluster heals with the point readable through the
restarted node; ``supervisorctl stop`` is a clean stop (exit status 0, not a kill); and
``supervisorctl shutdown`` stops the rest cleanly and leaves no process behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.deploy.supervisord import Supervisord, program

pytestmark = [pytest.mark.e2e, pytest.mark.deploy, pytest.mark.timeout(300)]

START_TIMEOUT_S = 90.0  # three nodes sharing two cores, each past supervisord's startsecs
HEAL_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 120.0  # two clean stops; each takes seconds on an empty store
POINT = {"timestamp": 1640995200000, "value": 45.0}


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Supervisord]:
    sup = Supervisord(tmp_path / "state")
    try:
        yield sup
    finally:
        sup.cleanup()


def series_on(sup: Supervisord, via: int, replica: int) -> str:
    """A series name whose replicas include node ``replica`` (asked of node ``via``)."""
    for n in range(200):
        name = f"deploy.sv.{n}"
        resp = requests.get(f"http://{sup.addresses[via]}/cluster/endpoints/{name}", timeout=10)
        assert resp.status_code == 200, resp.text
        if replica in resp.json()["replicas"]:
            return name
    raise AssertionError(f"no series among 200 names has node {replica} as a replica")


def test_supervisord_restarts_a_killed_node_and_stops_cleanly(supervisord: Supervisord) -> None:
    sup = supervisord
    sup.start()
    pids = {i: sup.wait_running(i, START_TIMEOUT_S) for i in (1, 2, 3)}
    sup.wait_healthy((1, 2, 3), 3, START_TIMEOUT_S)

    # A point on every replica of a series that node 2 holds.
    name = series_on(sup, via=1, replica=2)
    resp = requests.post(f"http://{sup.addresses[1]}/insert", params={"consistency": "all"},
                         json={"series": name, **POINT}, timeout=10)
    assert resp.status_code == 201, resp.text

    # kill -9 of node 2's whole process group: supervisord sees an unexpected exit and
    # starts a new count-server on the same data directory.
    sup.kill_group(pids[2])
    new_pid = sup.wait_running(2, HEAL_TIMEOUT_S, not_pid=pids[2])
    assert new_pid != pids[2]
    assert re.search(r"exited: count-node-2 \(terminated by SIGKILL; not expected\)", sup.log()), \
        sup.tails()
    sup.wait_healthy((1, 2, 3), 3, HEAL_TIMEOUT_S)
    resp = requests.get(f"http://{sup.addresses[2]}/query/range/{name}", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == [POINT]
    # The other two kept their processes: only node 2 was restarted.
    assert sup.info(1)["pid"] == pids[1] and sup.info(3)["pid"] == pids[3]

    # supervisorctl stop: SIGTERM to count-server, which drains and exits 0.
    stop = sup.ctl("stop", program(3))
    assert stop.returncode == 0 and "count-node-3: stopped" in stop.stdout, (stop, sup.tails())
    status = sup.ctl("status", program(3))
    assert re.match(r"count-node-3\s+STOPPED\b", status.stdout), (status, sup.tails())
    info = sup.info(3)
    assert info["statename"] == "STOPPED" and info["exitstatus"] == 0, info
    assert "stopped: count-node-3 (exit status 0)" in sup.log(), sup.tails()
    assert re.search(r"Node 3 stopped \(exit 0;", sup.log(program(3))), sup.tails()
    assert sup.group_members(pids[3]) == [], sup.group_members(pids[3])
    # The others see it gone; two of three alive is a majority, so writes still succeed.
    sup.wait_health((1, 2), "degraded", 2, HEAL_TIMEOUT_S)
    resp = requests.post(f"http://{sup.addresses[2]}/insert",
                         json={"series": name, "timestamp": POINT["timestamp"] + 1, "value": 1.0},
                         timeout=10)
    assert resp.status_code == 201, resp.text

    # supervisorctl shutdown: the other two stop cleanly, supervisord exits, nothing is left.
    shutdown = sup.ctl("shutdown")
    assert shutdown.returncode == 0, shutdown
    assert sup.wait_exit(SHUTDOWN_TIMEOUT_S) == 0, sup.tails()
    log = sup.log()
    for i in (1, 2):
        assert f"stopped: count-node-{i} (exit status 0)" in log, sup.tails()
        assert re.search(rf"Node {i} stopped \(exit 0;", sup.log(program(i))), sup.tails()
    assert sup.live_processes() == [], sup.live_processes()

