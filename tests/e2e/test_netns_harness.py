"""The network-namespace harness (tests/e2e/netns.py) with plain processes, not count-server.

Each node runs a tiny TCP server on 0.0.0.0:8080 that answers ``node<i>``, so every probe
also proves *which* node it reached.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.netns import (
    CLUSTER_IFNAME,
    NetnsNetwork,
    cleanup_stale,
    make_netns,  # noqa: F401 - fixture
    netns_available,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(netns_available() is not None,
                       reason=f"netns harness unavailable: {netns_available()}"),
]

PORT = 8080
PROBE_TIMEOUT_S = 1.5

SERVER = """
import socket, sys
name = sys.argv[1].encode()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[2])))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(name + b"\\n")
"""


def start_servers(net: NetnsNetwork, port: int = PORT) -> list[subprocess.Popen[bytes]]:
    procs = [net.popen(i, [sys.executable, "-c", SERVER, f"node{i}", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in net.nodes]
    for i in net.nodes:
        wait_reachable_from_test(net, i, port)
    return procs


def reach_from_test(net: NetnsNetwork, i: int, port: int = PORT,
                    timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Node i's answer over the client network, or None."""
    try:
        with socket.create_connection((net.client_ip(i), port), timeout=timeout) as sock:
            return sock.makefile("rb").readline().decode().strip()
    except OSError:
        return None


def wait_reachable_from_test(net: NetnsNetwork, i: int, port: int = PORT, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reach_from_test(net, i, port, timeout=0.5) == f"node{i}":
            return
        time.sleep(0.05)
    raise AssertionError(f"node {i} not reachable on {net.client_ip(i)}:{port} within {timeout} s")


def assert_reaches(net: NetnsNetwork, src: int, dst: int, timeout: float = 5.0) -> None:
    """src reaches dst's cluster IP (retried briefly: re-plugged ports need an ARP round)."""
    deadline = time.monotonic() + timeout
    while True:
        ok, reply = net.tcp_probe(src, net.cluster_ip(dst), PORT, timeout=PROBE_TIMEOUT_S)
        if ok and reply == f"node{dst}":
            return
        assert time.monotonic() < deadline, f"node {src} cannot reach node {dst}: {reply}"
        time.sleep(0.1)


def assert_cut(net: NetnsNetwork, src: int, dst: int, ip: str | None = None) -> None:
    """src cannot connect to dst (cluster IP by default), and fails in bounded time."""
    ip = ip or net.cluster_ip(dst)
    started = time.monotonic()
    ok, reply = net.tcp_probe(src, ip, PORT, timeout=PROBE_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert not ok, f"node {src} still reaches node {dst} at {ip}: {reply}"
    assert elapsed < PROBE_TIMEOUT_S + 3.0, elapsed


def assert_all_cut(net: NetnsNetwork, pairs: list[tuple[int, int]]) -> None:
    """assert_cut for every (src, dst) pair, probed concurrently (each probe waits)."""
    with ThreadPoolExecutor(len(pairs)) as pool:
        for future in [pool.submit(assert_cut, net, a, b) for a, b in pairs]:
            future.result()


def listing() -> list[str]:
    """``ip netns list`` and ``ip -o link`` of the root namespace, one entry a line."""
    out = ""
    for argv in (["ip", "netns", "list"], ["ip", "-o", "link"]):
        out += subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout
    return out.splitlines()


def leftovers(net: NetnsNetwork) -> list[str]:
    return [line for line in listing() if net.base in line]


def test_reachability_isolate_heal_destroy() -> None:
    net = NetnsNetwork(3)
    try:
        net.create()
        assert net.base and leftovers(net), "nothing was created"
        assert net.cluster_ip(2) == f"10.{net.x}.1.2" and net.client_ip(3) == f"10.{net.x}.2.3"
        assert net.command_in(1, ["true"]) == ["ip", "netns", "exec", net.ns(1), "true"]
        procs = start_servers(net)  # the same port on every node

        # The test reaches every node over the client network.
        for i in net.nodes:
            assert reach_from_test(net, i) == f"node{i}"
        # Nodes reach each other over the cluster network, in both directions.
        assert_reaches(net, 1, 2)
        assert_reaches(net, 2, 1)
        assert_reaches(net, 1, 3)
        assert_reaches(net, 3, 2)
        # ... but not over the client network (isolated bridge ports), and not the
        # cluster network from the root namespace.
        assert_cut(net, 1, 2, ip=net.client_ip(2))

        # Isolate node 3.
        net.isolate(3)
        assert net.placement()[3] is None
        assert_all_cut(net, [(1, 3), (3, 1), (3, 2), (2, 3)])
        assert reach_from_test(net, 3) == "node3"  # the client network still works
        assert_reaches(net, 1, 2)
        assert_reaches(net, 2, 1)
        # The cut is invisible inside node 3: its cluster interface keeps carrier and address.
        link = net.run_in(3, ["ip", "-o", "addr", "show", "dev", CLUSTER_IFNAME]).stdout
        assert net.cluster_ip(3) in link
        state = net.run_in(3, ["ip", "-o", "link", "show", "dev", CLUSTER_IFNAME]).stdout
        assert "LOWER_UP" in state and "NO-CARRIER" not in state, state

        net.isolate(3)  # idempotent
        net.heal(3)
        assert_reaches(net, 1, 3)
        assert_reaches(net, 3, 1)
        assert_reaches(net, 3, 2)
        net.heal(3)

        assert all(p.poll() is None for p in procs)
        # A process started behind the harness's back in a namespace is killed too.
        stray = subprocess.Popen(net.command_in(2, [sys.executable, "-c", "import time; time.sleep(600)"]),
                                 start_new_session=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while stray.pid not in net.pids(2):
            assert time.monotonic() < deadline, "stray process never entered namespace 2"
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        net.destroy()
        destroy_s = time.monotonic() - started
    assert destroy_s < 10, destroy_s
    assert all(p.poll() is not None for p in procs), "a server survived destroy"
    assert stray.wait(5) is not None
    assert leftovers(net) == []
    net.destroy()  # idempotent
    assert leftovers(net) == []


def test_partition_and_heal_all(make_netns) -> None:  # noqa: F811 - fixture
    net = make_netns(3)
    start_servers(net)
    net.partition([[1, 2], [3]])
    assert_reaches(net, 1, 2)
    assert_reaches(net, 2, 1)
    assert_all_cut(net, [(1, 3), (3, 1), (2, 3), (3, 2)])
    for i in net.nodes:
        assert reach_from_test(net, i) == f"node{i}"

    # Regroup: node 1 alone (not in any group is the same as isolated), 2 with 3.
    net.partition([[2, 3]])
    assert net.placement()[1] is None
    assert_reaches(net, 2, 3)
    assert_reaches(net, 3, 2)
    assert_all_cut(net, [(1, 2), (1, 3), (2, 1), (3, 1)])

    net.heal_all()
    for a in net.nodes:
        for b in net.nodes:
            if a != b:
                assert_reaches(net, a, b)
    assert not [line for line in leftovers(net) if f"{net.base}bp" in line]

    with pytest.raises(ValueError):
        net.partition([[1, 2], [2, 3]])
    with pytest.raises(ValueError):
        net.isolate(4)


def test_two_networks_coexist(make_netns) -> None:  # noqa: F811 - fixture
    """Harnesses never collide: separate names and subnets, the same port on both."""
    a, b = make_netns(2), make_netns(2)
    assert a.base != b.base and a.x != b.x
    start_servers(a)
    start_servers(b)
    assert_reaches(a, 1, 2)
    assert_reaches(b, 2, 1)


def test_count_env_and_url() -> None:
    net = NetnsNetwork(3)
    net.x = 123  # addresses only; nothing is created
    assert net.count_env(2) == {
        "NODE_ID": "2",
        "CLUSTER_ENABLED": "true",
        "CLUSTER_NODES": "10.123.1.1:8080,10.123.1.2:8080,10.123.1.3:8080",
        "BIND_ADDRESS": "0.0.0.0:8080",
    }
    assert net.count_env(1, 2, port=9000)["CLUSTER_NODES"] == "10.123.1.1:9000,10.123.1.2:9000"
    assert net.url(3) == "http://10.123.2.3:8080"
    assert net.url(1, port=9000) == "http://10.123.2.1:9000"
    net.destroy()  # never created: a no-op


def test_stale_harness_is_cleaned_up() -> None:
    """A harness whose owner died (SIGKILL, no atexit) is removed by the next create."""
    script = (
        "import os, sys, time\n"
        "from tests.e2e.netns import NetnsNetwork\n"
        "net = NetnsNetwork(2); net.create()\n"
        "net.popen(1, [sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(net.base, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             start_new_session=True, cwd=REPO_ROOT)
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 20)
        assert ready, "the owner process did not create its network within 20 s"
        base = owner.stdout.readline().strip()
        assert base.startswith("cnt"), base
    finally:
        owner.kill()
        owner.wait(5)
    # Its namespace process dies with it (PDEATHSIG) but the namespaces stay behind...
    assert any(line.startswith(f"{base}n1") for line in listing())
    assert base in cleanup_stale()
    assert not [line for line in listing() if base in line]
