"""A network of Linux network namespaces, one per node, whose links a test can cut for real.

Topology of one ``NetnsNetwork(size)`` (every name carries a random suffix, ``cnt<sfx>``,
so parallel or leftover harnesses never collide; interface names stay <= 15 chars)::

    root namespace (the test)                      node i: namespace cnt<sfx>n<i>
      bridge cnt<sfx>bc  "cluster" 10.X.1.0/24  <-- veth cnt<sfx>c<i> == cluster0 10.X.1.i
      bridge cnt<sfx>bk  "client"  10.X.2.0/24  <-- veth cnt<sfx>k<i> == client0  10.X.2.i
             10.X.2.254 (the test's address)

* Nodes talk to each other over the cluster bridge; they are configured with cluster IPs.
  The root namespace has no address there, so the test cannot (and need not) use them.
* The test talks to every node over the client bridge. Its node ports are "isolated"
  bridge ports: a node reaches the test (10.X.2.254) but no other node over the client
  network, so the cluster network is the only path between nodes and cutting it is real.
* Nodes have no default route: they reach nothing but these two subnets.

Cutting links (``isolate``, ``partition``) only re-plugs the root-side ends of the cluster
veths (``ip link set <veth> nomaster`` / ``master <bridge>``). The veth itself stays up, so
inside the node's namespace ``cluster0`` keeps its carrier, address and routes: the code
under test sees nothing, its packets are silently lost, as when a switch port dies
upstream. Connects time out (or fail with EHOSTUNREACH once ARP gives up, after ~3 s).

Processes started with ``popen`` run in their own session (``start_new_session=True``) and
die with the test runner (PR_SET_PDEATHSIG); ``destroy`` SIGKILLs their process groups and
every other process left in the namespaces, then removes namespaces, veths and bridges.
It is idempotent and registered with ``atexit``; a harness whose owner died without
cleaning up (SIGKILL) is removed by the next ``create`` (see ``cleanup_stale``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import psutil
import pytest

from tests.e2e.conftest import _ALL_PGIDS, CountNode, _die_with_test_runner, _killpg

NAME_PREFIX = "cnt"
DEFAULT_PORT = 8080
# Marker files (owner pid) of live harnesses, and the lock serialising subnet choice.
STATE_DIR = Path("/tmp/count-netns")
IP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 10.0

CLUSTER_IFNAME = "cluster0"  # names of the two interfaces inside a node's namespace
CLIENT_IFNAME = "client0"


class NetnsError(RuntimeError):
    pass


def _run(argv: Sequence[str], check: bool = True, timeout: float = IP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    """Names of the links of the root namespace (without the ``@peer`` part)."""
    names = []
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise subnet/suffix choice between harnesses (other pytest processes included)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _disable_ipv6(dev: str) -> None:
    """Keep router solicitations etc. off the bridges (best effort)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")


@functools.cache
def netns_available() -> str | None:
    """None if this machine can run the harness, else why not (for ``pytest.skip``)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    base = f"{NAME_PREFIX}{random.randrange(16**4):04x}"
    ns, veth, bridge = f"{base}pn", f"{base}pv", f"{base}pb"
    try:
        steps = [
            ["ip", "netns", "add", ns],
            ["ip", "netns", "exec", ns, "true"],
            ["ip", "link", "add", bridge, "type", "bridge"],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "probe0", "netns", ns],
            ["ip", "link", "set", veth, "master", bridge],
        ]
        for argv in steps:
            try:
                proc = _run(argv, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"`{' '.join(argv)}` failed: {exc}"
            if proc.returncode != 0:
                return f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}"
        return None
    finally:
        for argv in (["ip", "link", "del", veth], ["ip", "link", "del", bridge],
                     ["ip", "netns", "del", ns]):
            with contextlib.suppress(Exception):
                _run(argv, check=False)


def cleanup_stale() -> list[str]:
    """Remove the harnesses whose owner process is gone; return their name prefixes."""
    removed = []
    if not STATE_DIR.is_dir():
        return removed
    for marker in STATE_DIR.glob(f"{NAME_PREFIX}*.json"):
        try:
            info = json.loads(marker.read_text())
            pid, started = int(info["pid"]), float(info["started"])
        except (OSError, ValueError, KeyError):
            continue
        try:
            alive = abs(psutil.Process(pid).create_time() - started) < 1.0
        except psutil.Error:
            alive = False
        if alive:
            continue
        base = marker.stem
        namespaces = [ns for ns in _netns_names() if ns.startswith(base)]
        _remove(base, namespaces)
        marker.unlink(missing_ok=True)
        removed.append(base)
    return removed


def _remove(base: str, namespaces: Sequence[str], pgids: Sequence[int] = ()) -> None:
    """Kill every process in ``namespaces`` (and ``pgids``), then delete them and every
    root-namespace link whose name starts with ``base``."""
    for pgid in pgids:
        _killpg(pgid)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while True:
        pids = [pid for ns in namespaces for pid in _ns_pids(ns)]
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    # Deleting a veth end deletes its peer, even if a process still holds the namespace.
    links = [name for name in _link_names() if name.startswith(base)]
    bridges = [name for name in links if name[len(base):].startswith("b")]
    for name in links:
        if name not in bridges:
            _ip("link", "del", name, check=False)
    for name in bridges:
        _ip("link", "del", name, check=False)
    for ns in namespaces:
        _ip("netns", "del", ns, check=False)


class NetnsNetwork:
    """``size`` nodes, each in its own network namespace; see the module docstring."""

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 99:
            raise ValueError("size must be in 1..99")
        self.size = size
        self.suffix = ""
        self.base = ""
        self.x = 0
        self.created = False
        self._placement: dict[int, str | None] = {}  # node -> bridge its cluster veth is on
        self._extra_bridges: set[str] = set()
        self._procs: list[subprocess.Popen[Any]] = []
        self._pgids: set[int] = set()
        self._lock = threading.Lock()

    # -- names and addresses ---------------------------------------------------------------

    def _check(self, i: int) -> None:
        if not 1 <= i <= self.size:
            raise ValueError(f"node {i} not in 1..{self.size}")

    def ns(self, i: int) -> str:
        self._check(i)
        return f"{self.base}n{i}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(i) for i in self.nodes]

    @property
    def nodes(self) -> range:
        return range(1, self.size + 1)

    @property
    def cluster_bridge(self) -> str:
        return f"{self.base}bc"

    @property
    def client_bridge(self) -> str:
        return f"{self.base}bk"

    def cluster_veth(self, i: int) -> str:
        """Root-namespace end of node i's cluster link (the one isolate re-plugs)."""
        self._check(i)
        return f"{self.base}c{i}"

    def client_veth(self, i: int) -> str:
        self._check(i)
        return f"{self.base}k{i}"

    def cluster_ip(self, i: int) -> str:
        self._check(i)
        return f"10.{self.x}.1.{i}"

    def client_ip(self, i: int) -> str:
        self._check(i)
        return f"10.{self.x}.2.{i}"

    @property
    def host_client_ip(self) -> str:
        """The test's own address on the client network."""
        return f"10.{self.x}.2.254"

    def url(self, i: int, port: int = DEFAULT_PORT) -> str:
        """The URL the test uses to reach node i's server."""
        return f"http://{self.client_ip(i)}:{port}"

    def count_env(self, i: int, size: int | None = None, port: int = DEFAULT_PORT) -> dict[str, str]:
        """Environment overrides for a count-server node i of a ``size``-node cluster
        (default: every node of this network) listening on ``port`` in its namespace."""
        self._check(i)
        size = self.size if size is None else size
        if not 1 <= size <= self.size:
            raise ValueError(f"size must be in 1..{self.size}")
        return {
            "NODE_ID": str(i),
            "CLUSTER_ENABLED": "true",
            "CLUSTER_NODES": ",".join(f"{self.cluster_ip(j)}:{port}" for j in range(1, size + 1)),
            "BIND_ADDRESS": f"0.0.0.0:{port}",
        }

    # -- life ------------------------------------------------------------------------------

    def create(self) -> Self:
        if self.created:
            return self
        reason = netns_available()
        if reason:
            raise NetnsError(reason)
        with contextlib.suppress(Exception):
            cleanup_stale()
        with _state_lock():
            self._choose_names()
            self.created = True
            atexit.register(self.destroy)
            (STATE_DIR / f"{self.base}.json").write_text(json.dumps(
                {"pid": os.getpid(), "started": psutil.Process().create_time(), "size": self.size}))
            try:
                self._build()
            except BaseException:
                self.destroy()
                raise
        return self

    def _choose_names(self) -> None:
        namespaces, links = _netns_names(), _link_names()
        markers = {p.stem for p in STATE_DIR.glob(f"{NAME_PREFIX}*.json")}
        for _ in range(1000):
            base = f"{NAME_PREFIX}{random.randrange(16**4):04x}"
            if base in markers or any(n.startswith(base) for n in (*namespaces, *links)):
                continue
            self.suffix, self.base = base[len(NAME_PREFIX):], base
            break
        else:
            raise NetnsError("no unused name suffix found")
        used = _ip("-o", "-4", "addr", "show", check=False).stdout + \
            _ip("-4", "route", "show", "table", "all", check=False).stdout
        candidates = list(range(100, 251))
        random.shuffle(candidates)
        for x in candidates:
            if f"10.{x}.1." not in used and f"10.{x}.2." not in used:
                self.x = x
                return
        raise NetnsError("no unused 10.X.1.0/24 + 10.X.2.0/24 pair with X in 100..250")

    def _build(self) -> None:
        for bridge in (self.cluster_bridge, self.client_bridge):
            _ip("link", "add", bridge, "type", "bridge")
            _disable_ipv6(bridge)
        _ip("addr", "add", f"{self.host_client_ip}/24", "dev", self.client_bridge)
        for bridge in (self.cluster_bridge, self.client_bridge):
            _ip("link", "set", bridge, "up")
        for i in self.nodes:
            ns = self.ns(i)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for host, peer, bridge, ip in (
                (self.cluster_veth(i), CLUSTER_IFNAME, self.cluster_bridge, self.cluster_ip(i)),
                (self.client_veth(i), CLIENT_IFNAME, self.client_bridge, self.client_ip(i)),
            ):
                _ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
                _disable_ipv6(host)
                _ip("link", "set", host, "master", bridge, "up")
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
            # Nodes must not reach each other over the client network.
            _run(["bridge", "link", "set", "dev", self.client_veth(i), "isolated", "on"])
            self._placement[i] = self.cluster_bridge

    def destroy(self) -> None:
        """Kill every process in the namespaces and remove namespaces, veths and bridges.
        Idempotent; safe on a partly created network."""
        with self._lock:
            if not self.created:
                return
            self.created = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.destroy)
        _remove(self.base, [f"{self.base}n{i}" for i in self.nodes], sorted(self._pgids))
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_TIMEOUT_S)
        for pgid in self._pgids:
            _ALL_PGIDS.discard(pgid)
        self._pgids.clear()
        self._placement.clear()
        self._extra_bridges.clear()
        (STATE_DIR / f"{self.base}.json").unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- processes -------------------------------------------------------------------------

    def command_in(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run in node i's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in node i's namespace, in its own session; killed by ``destroy``."""
        if not self.created:
            raise NetnsError("network not created")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs["start_new_session"] = True
        if threading.current_thread() is threading.main_thread():
            kwargs.setdefault("preexec_fn", _die_with_test_runner)
        proc = subprocess.Popen(self.command_in(i, argv), **kwargs)
        self._procs.append(proc)
        self._pgids.add(proc.pid)  # session leader: pgid == pid
        _ALL_PGIDS.add(proc.pid)
        return proc

    def run_in(self, i: int, argv: Sequence[str], timeout: float = 10.0,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in node i's namespace (bounded by ``timeout``)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.command_in(i, argv), check=False, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True, **kwargs)

    def pids(self, i: int) -> list[int]:
        """Every process currently in node i's namespace."""
        return _ns_pids(self.ns(i))

    def tcp_probe(self, i: int, host: str, port: int, timeout: float = 1.5,
                  send: bytes | None = None) -> tuple[bool, str]:
        """From inside node i: connect to host:port within ``timeout`` s; return
        (connected, first reply line or the error)."""
        script = (
            "import socket, sys\n"
            "host, port, timeout, send = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
            "try:\n"
            "    s = socket.create_connection((host, port), timeout=timeout)\n"
            "except OSError as e:\n"
            "    print(type(e).__name__, e); sys.exit(1)\n"
            "if send:\n"
            "    s.sendall(send.encode())\n"
            "try:\n"
            "    print(s.makefile('rb').readline().decode(errors='replace').strip())\n"
            "except OSError as e:\n"
            "    print('connected; read failed:', e)\n"
        )
        argv = [sys.executable, "-c", script, host, str(port), str(timeout),
                (send or b"").decode()]
        try:
            proc = self.run_in(i, argv, timeout=2 * timeout + 10)
        except subprocess.TimeoutExpired:
            return False, "probe timed out"
        return proc.returncode == 0, (proc.stdout.strip() or proc.stderr.strip())

    # -- cutting links ---------------------------------------------------------------------

    def _plug(self, i: int, bridge: str | None) -> None:
        if self._placement.get(i, self.cluster_bridge) == bridge:
            return
        if bridge is None:
            _ip("link", "set", self.cluster_veth(i), "nomaster")
        else:
            _ip("link", "set", self.cluster_veth(i), "master", bridge)
        self._placement[i] = bridge

    def isolate(self, i: int) -> None:
        """Unplug node i from the cluster network: it reaches nobody and nobody reaches it
        there; its client link (the test's access) is untouched."""
        self._check(i)
        self._plug(i, None)

    def heal(self, i: int) -> None:
        """Plug node i back into the main cluster bridge (undoes isolate/partition for i)."""
        self._check(i)
        self._plug(i, self.cluster_bridge)

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the cluster network: nodes of a group reach each other and no one else.
        Nodes in no group are isolated. ``partition([[1, 2], [3]])``."""
        seen: set[int] = set()
        for group in groups:
            for i in group:
                self._check(i)
                if i in seen:
                    raise ValueError(f"node {i} is in more than one group")
                seen.add(i)
        wanted: dict[int, str | None] = dict.fromkeys(self.nodes)
        for k, group in enumerate(groups):
            bridge = self.cluster_bridge if k == 0 else f"{self.base}bp{k}"
            if k > 0 and bridge not in self._extra_bridges:
                _ip("link", "add", bridge, "type", "bridge")
                self._extra_bridges.add(bridge)
                _disable_ipv6(bridge)
                _ip("link", "set", bridge, "up")
            for i in group:
                wanted[i] = bridge
        for i, bridge in wanted.items():
            self._plug(i, bridge)

    def heal_all(self) -> None:
        """Every node back on the main cluster bridge; partition bridges removed."""
        for i in self.nodes:
            self._plug(i, self.cluster_bridge)
        for bridge in sorted(self._extra_bridges):
            _ip("link", "del", bridge, check=False)
        self._extra_bridges.clear()

    def placement(self) -> dict[int, str | None]:
        """Node -> bridge its cluster link is plugged into (None: isolated)."""
        return dict(self._placement)

    def __repr__(self) -> str:
        return f"NetnsNetwork(size={self.size}, base={self.base!r}, subnets=10.{self.x}.1-2.0/24)"


# -- count-server nodes in namespaces ------------------------------------------------------


class NetnsCountNode(CountNode):
    """A CountNode whose server runs in node ``index``'s namespace, bound to 0.0.0.0:port,
    configured by cluster IPs (``count_env``) and reached by the test on its client IP."""

    def __init__(self, net: NetnsNetwork, index: int, workdir: Path,
                 env: Mapping[str, str | None] | None = None, port: int = DEFAULT_PORT,
                 size: int | None = None, **kwargs: Any) -> None:
        self.net = net
        self.index = index
        overrides: dict[str, str | None] = {**net.count_env(index, size, port), **(env or {})}
        kwargs.setdefault("name", f"n{index}")
        super().__init__(workdir, env=overrides, port=port, **kwargs)

    @property
    def address(self) -> str:
        return f"{self.net.client_ip(self.index)}:{self.port}"

    @property
    def cluster_address(self) -> str:
        return f"{self.net.cluster_ip(self.index)}:{self.port}"

    def command(self) -> list[str]:
        return self.net.command_in(self.index, super().command())

    def isolate(self) -> None:
        self.net.isolate(self.index)

    def heal(self) -> None:
        self.net.heal(self.index)


@pytest.fixture
def make_netns() -> Iterator[Callable[[int], NetnsNetwork]]:
    """``make_netns(size)`` -> a created NetnsNetwork, destroyed at teardown. Skips the test
    when namespaces are unusable. Import it into a test module to use it."""
    reason = netns_available()
    if reason:
        pytest.skip(f"netns harness unavailable: {reason}")
    nets: list[NetnsNetwork] = []

    def make(size: int) -> NetnsNetwork:
        net = NetnsNetwork(size)
        nets.append(net)
        return net.create()

    try:
        yield make
    finally:
        for net in nets:
            net.destroy()
