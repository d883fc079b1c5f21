"""Scenario scripts for the simulated cluster, in the style of etcd-io/raft's testdata.

A script is a sequence of commands, each followed by a line ``----``, the output it must
give, and a blank line. Lines starting with ``#`` are comments, and so is the rest of a
command line after a `` #``. ``run_script`` executes the commands in order against one
``World`` and ``render`` puts the actual outputs in place of the expected ones, leaving
everything else of the file as it was: a test compares the two texts, and
``COUNT_SCENARIO_REWRITE=1`` writes the actual one back. The world is seeded, so every run
of a script is the same run and every output is exact.

Commands (``N`` is a node's index, ``S`` a series name, ``A``/``B`` lists such as ``1,2``):

    cluster nodes=3 rf=2 seed=1 [SETTING=value ...]
                          build and start a cluster; SETTINGs override the nodes' settings
    tick 5s | tick 250ms  let simulated time pass
    write via=N series=S ts=1..10 [value=1.5] [level=one|quorum|all]
                          one Insert of points at those timestamps (ms); values default to
                          ts/2. Prints ``201 inserted=10`` or the status and error
    read via=N series=S [level=...] [start=MS] [end=MS]
                          a range read: ``200 points=10 ts=1..10 [values=...]``, or the
                          status and error (status 0: the node is down or did not answer)
    count via=N series=S [level=...] [start=MS] [end=MS]   the count aggregation
    partition A | B       cut every link between the two groups, both ways
    oneway A -> B         cut the links from A to B only
    heal                  every link whole again (and no loss, delay or duplication)
    crash N | start N | wipe N | pause N
    resume N [timers-first|reads-first]
                          which the loop does first after the stall (default: the seed picks)
    disk N full|ok        N's storage refuses writes with 507, or takes them again
    skew N -1500ms        N's wall clock (and so the write versions it assigns) that far off
    add N members=1,2,3,4      a new node N listing those members (not started); started
                          with itself and live members listed, it joins the ring
    decommission N        N leaves the ring (POST /cluster/decommission): ``202`` at once
    removenode via=N node=M   M, dead, is taken out (POST /cluster/removenode/M)
    ring node=N           N's topology: its epoch and every member's state, and whether N
                          has exited (a decommissioned node exits 0)
    streaming node=N      N's streaming progress: ranges done of total, points fetched
    restart N [members=1,2,3]  crash N and start it again (listing other members)
    repair via=N          an anti-entropy round now (POST /cluster/repair), in short
    endpoints series=S [via=N]  S's replicas as N places them (default: the first node up)
    hints                 the hinted points each node holds, per target node
    members node=N        N's view of every member: self, alive, syncing, down, unknown
    counters node=N NAME ...    N's cluster counters (those of GET /stats)
    stored node=N series=S [digest]
                          what N's own storage holds of S (white box); ``digest``: and a
                          digest of its points with their write versions
    logs [node=N] [grep=text]   the log lines (INFO and up) written since the last ``logs``
                          with the same filter; the first one shows the whole run so far

Points are shown as ``points=N ts=first..last`` and their values, unless they are the
default ts/2, in runs of consecutive points: ``values=7`` (all 7), ``values=1..4:3,5..6:4``
(3 at ts 1..4, 4 at 5..6); past ``VALUE_RUNS_MAX`` runs, only their number. Nothing printed
depends on where or when the script runs: no paths, no wall-clock times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

from count.messages import (
    Aggregate,
    Decommission,
    Insert,
    Message,
    ReadRange,
    RemoveNode,
    Repair,
)
from count.sim.world import SimNode, World
from count.storage.merge import Columns
from count.storage.writes import TIMESTAMP_MAX_MS

SEPARATOR = "----"
# A client waits this long (simulated) for an answer; past it the command reports none.
ANSWER_WAIT_S = 10.0
# The world runs in steps this long while a client waits for an answer.
ANSWER_STEP_S = 0.01
# Longer lists of values are summed up as a number of runs.
VALUE_RUNS_MAX = 4


class ScenarioError(ValueError):
    """A script that does not parse, a command the language does not have, or bad arguments."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One command of a script: its line (1-based), and where its expected output is."""

    line: int
    command: str
    expected: str
    output_lines: tuple[int, int]  # [first, end) indices of the expected output's lines


# -- reading arguments ---------------------------------------------------------------------

def _args(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words and ``key=value`` words, apart."""
    plain = [w for w in words if "=" not in w]
    named = dict(w.split("=", 1) for w in words if "=" in w)
    return plain, named


def _need(named: dict[str, str], key: str) -> str:
    if key not in named:
        raise ScenarioError(f"missing {key}=")
    return named[key]


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.removesuffix("s"))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def _groups(words: list[str], arrow: str) -> tuple[list[int], list[int]]:
    """``1,2 | 3`` (or ``1 -> 2,3``) as two lists of node indices."""
    left, found, right = " ".join(words).partition(arrow)
    if not found:
        raise ScenarioError(f"expected two groups of nodes around {arrow!r}")
    return _ints(left), _ints(right)


# -- formatting outputs --------------------------------------------------------------------

def _span(stamps: list[int]) -> str:
    return f"{stamps[0]}..{stamps[-1]}" if stamps else "-"


def _runs(stamps: list[int], values: list[float]) -> list[tuple[int, int, float]]:
    """Consecutive points with the same value: (first ts, last ts, value)."""
    runs: list[tuple[int, int, float]] = []
    for ts, value in zip(stamps, values, strict=True):
        if runs and runs[-1][2] == value:
            runs[-1] = (runs[-1][0], ts, value)
        else:
            runs.append((ts, ts, value))
    return runs


def _points(stamps: list[int], values: list[float]) -> str:
    """``points=N ts=first..last`` and, unless they are the default ts/2, the values."""
    text = f"points={len(stamps)} ts={_span(stamps)}"
    if all(value == ts / 2 for ts, value in zip(stamps, values, strict=True)):
        return text
    runs = _runs(stamps, values)
    if len(runs) == 1:
        return f"{text} values={runs[0][2]:g}"
    if len(runs) > VALUE_RUNS_MAX:
        return f"{text} values=({len(runs)} runs)"
    return text + " values=" + ",".join(f"{_span([a, b])}:{v:g}" for a, b, v in runs)


def _digest(cols: Columns) -> str:
    """A short digest of points with their write versions: equal on equal stores."""
    digest = hashlib.sha256()
    for column in (cols.ts, cols.val, cols.ver):
        digest.update(np.ascontiguousarray(column).tobytes())
    return digest.hexdigest()[:12]


def _failure(status: int, body: Any) -> str:
    """A status that is not the success one, with its error message."""
    return f"{status} {body}"


def _name(world: World, address: str) -> str:
    return f"node{world.by_address[address].index}"


class Scenario:
    """One script's world and the commands that act on it (``cmd_<name>``, dashes as
    underscores); each command returns its output, never an empty one."""

    def __init__(self) -> None:
        self.world: World | None = None
        self._token = 0
        self._logs_seen: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        if self.world is not None:
            self.world.close()

    @property
    def w(self) -> World:
        if self.world is None:
            raise ScenarioError("no cluster yet: start with 'cluster nodes=3 rf=2'")
        return self.world

    def run(self, line: str) -> str:
        """Execute one command line; returns its output."""
        words = shlex.split(line, comments=True)
        handler: Callable[[list[str]], str] | None = getattr(
            self, "cmd_" + words[0].replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {words[0]!r}")
        return handler(words[1:])

    def _node(self, text: str) -> SimNode:
        node = self.w.nodes.get(int(text))
        if node is None:
            raise ScenarioError(f"no node {text}")
        return node

    def _ask(self, via: str, msg: Message) -> tuple[int, Any]:
        """Send a client operation to node ``via`` and run the world until it is answered."""
        self._token += 1
        got: list[tuple[int, Any]] = []
        self._node(via).request(self._token, msg, lambda s, b: got.append((s, b)))
        deadline = self.w.now_s + ANSWER_WAIT_S
        while not got and self.w.now_s < deadline:
            self.w.run_until(self.w.now_s + ANSWER_STEP_S)
        return got[0] if got else (0, "no answer")

    @staticmethod
    def _bounds(a: dict[str, str]) -> tuple[int, int]:
        return int(a.get("start", 0)), int(a.get("end", TIMESTAMP_MAX_MS))

    # -- the cluster and time ----------------------------------------------------------

    def cmd_cluster(self, words: list[str]) -> str:
        if self.world is not None:
            raise ScenarioError("one cluster per script")
        _, named = _args(words)
        nodes, rf, seed = (int(named.pop(k, d)) for k, d in (("nodes", 3), ("rf", 2),
                                                               ("seed", 1)))
        self.world = World(seed, nodes, rf, env=named)
        self.world.start()
        return "ok"

    def cmd_tick(self, words: list[str]) -> str:
        self.w.run_until(self.w.now_s + _seconds(words[0]))
        return "ok"

    # -- client operations -------------------------------------------------------------

    def cmd_write(self, words: list[str]) -> str:
        _, a = _args(words)
        low, _, high = _need(a, "ts").partition("..")
        stamps = np.arange(int(low), int(high or low) + 1, dtype=np.int64)
        values = (np.full(len(stamps), float(a["value"])) if "value" in a
                  else stamps.astype(np.float64) / 2)
        msg = Insert([_need(a, "series")], np.zeros(len(stamps), np.uint32), stamps, values,
                     a.get("level"))
        status, body = self._ask(_need(a, "via"), msg)
        return f"201 inserted={body['inserted']}" if status == 201 else _failure(status, body)

    def cmd_read(self, words: list[str]) -> str:
        _, a = _args(words)
        msg = ReadRange(_need(a, "series"), *self._bounds(a), a.get("level"))
        status, body = self._ask(_need(a, "via"), msg)
        if status != 200:
            return _failure(status, body)
        stamps = np.frombuffer(body["ts"], np.int64).tolist()
        values = np.frombuffer(body["val"], np.float64).tolist()
        return f"200 {_points(stamps, values)}"

    def cmd_count(self, words: list[str]) -> str:
        _, a = _args(words)
        msg = Aggregate(_need(a, "series"), *self._bounds(a), "count", None, a.get("level"))
        status, body = self._ask(_need(a, "via"), msg)
        return f"200 {body['value']:g}" if status == 200 else _failure(status, body)

    def cmd_repair(self, words: list[str]) -> str:
        _, a = _args(words)
        status, body = self._ask(_need(a, "via"), Repair())
        if status != 200:
            return _failure(status, body)
        return (f"200 peers={body['peers']} differing={body['ranges_differing']} "
                f"received={body['points_received']} sent={body['points_sent']} "
                f"errors={len(body['errors'])}")

    def cmd_decommission(self, words: list[str]) -> str:
        status, body = self._ask(words[0], Decommission())
        return f"{status}" if status == 202 else _failure(status, body)

    def cmd_removenode(self, words: list[str]) -> str:
        _, a = _args(words)
        status, body = self._ask(_need(a, "via"), RemoveNode(_need(a, "node")))
        return f"{status} epoch={body['epoch']}" if status == 202 else _failure(status, body)

    # -- faults ------------------------------------------------------------------------

    def cmd_partition(self, words: list[str]) -> str:
        left, right = _groups(words, "|")
        self.w.network.cut.update([(x, y) for x in left for y in right]
                                  + [(y, x) for x in left for y in right])
        return "ok"

    def cmd_oneway(self, words: list[str]) -> str:
        left, right = _groups(words, "->")
        self.w.network.cut.update([(x, y) for x in left for y in right])
        return "ok"

    def cmd_heal(self, words: list[str]) -> str:
        self.w.network.heal()
        return "ok"

    def cmd_crash(self, words: list[str]) -> str:
        self._node(words[0]).crash()
        return "ok"

    def cmd_start(self, words: list[str]) -> str:
        self._node(words[0]).start()
        return "ok"

    def cmd_wipe(self, words: list[str]) -> str:
        self._node(words[0]).wipe()
        return "ok"

    def cmd_pause(self, words: list[str]) -> str:
        self._node(words[0]).pause()
        return "ok"

    def cmd_resume(self, words: list[str]) -> str:
        order = words[1] if len(words) > 1 else None
        if order not in (None, "timers-first", "reads-first"):
            raise ScenarioError(f"resume order must be timers-first or reads-first: {order}")
        self._node(words[0]).resume(None if order is None else order == "timers-first")
        return "ok"

    def cmd_disk(self, words: list[str]) -> str:
        if words[1:] not in (["full"], ["ok"]):
            raise ScenarioError("disk N full|ok")
        self._node(words[0]).disk_full = words[1] == "full"
        return "ok"

    def cmd_skew(self, words: list[str]) -> str:
        self._node(words[0]).clock.skew_ms = int(words[1].removesuffix("ms"))
        return "ok"

    def cmd_add(self, words: list[str]) -> str:
        plain, a = _args(words)
        self.w.add_node(int(plain[0]), _ints(_need(a, "members")))
        return "ok"

    def cmd_restart(self, words: list[str]) -> str:
        plain, a = _args(words)
        node = self._node(plain[0])
        node.crash()
        if "members" in a:
            node.config = self.w.node_config(node.index, _ints(a["members"]))
        node.start()
        return "ok"

    # -- looking inside ----------------------------------------------------------------

    def cmd_endpoints(self, words: list[str]) -> str:
        _, a = _args(words)
        node = (self._node(a["via"]) if "via" in a
                else next((n for n in self.w.nodes.values() if n.core is not None), None))
        if node is None or node.core is None:
            return "no node up to ask"
        replicas = node.core.reads.placement.replicas(_need(a, "series"))
        return " ".join(_name(self.w, r) for r in replicas)

    def cmd_hints(self, words: list[str]) -> str:
        lines = []
        for index, node in self.w.nodes.items():
            if node.core is None:
                lines.append(f"node{index}: down")
                continue
            pending = node.core.ctx.hints.pending()
            held = ", ".join(f"{n} for {_name(self.w, t)}" for t, n in sorted(pending.items()))
            lines.append(f"node{index}: {held or 0}")
        return "\n".join(lines)

    def cmd_members(self, words: list[str]) -> str:
        _, a = _args(words)
        node = self._node(_need(a, "node"))
        if node.core is None:
            return f"node{node.index} is down"
        views = node.core.ctx.membership.view(node.clock.monotonic_s())
        return " ".join(f"{_name(self.w, v.address)}="
                        + ("self" if v.is_self else "down" if not v.alive
                           else "alive" if v.state == "normal" else v.state)
                        for v in views)

    def cmd_ring(self, words: list[str]) -> str:
        _, a = _args(words)
        node = self._node(_need(a, "node"))
        if node.core is None:
            return (f"node{node.index} exited {node.exit_code}" if node.exit_code is not None
                    else f"node{node.index} is down")
        ctx = node.core.ctx
        members = " ".join(f"{_name(self.w, m.address)}={m.state}" for m in ctx.topology.members)
        return (f"epoch={ctx.topology.epoch}{'' if ctx.confirmed else ' unconfirmed'} "
                f"{members}")

    def cmd_streaming(self, words: list[str]) -> str:
        _, a = _args(words)
        node = self._node(_need(a, "node"))
        if node.core is None:
            return f"node{node.index} is down"
        p = node.core.streaming.progress()
        if not p["active"]:
            return f"idle streamed_epoch={p['streamed_epoch']}"
        return f"epoch={p['epoch']} ranges={p['ranges_done']}/{p['ranges_total']} points={p['points']}"

    def cmd_counters(self, words: list[str]) -> str:
        names, a = _args(words)
        node = self._node(_need(a, "node"))
        if node.core is None:
            return f"node{node.index} is down"
        counters = node.core.ctx.counters
        return " ".join(f"{name}={counters[name]}" for name in names or sorted(counters))

    def cmd_stored(self, words: list[str]) -> str:
        flags, a = _args(words)
        node = self._node(_need(a, "node"))
        if node.storage is None:
            return f"node{node.index} is down"
        cols = node.storage.read(_need(a, "series"), 0, TIMESTAMP_MAX_MS, 1 << 31)
        shown = _points(cols.ts.tolist(), cols.val.tolist())
        return f"{shown} digest={_digest(cols)}" if "digest" in flags else shown

    def cmd_logs(self, words: list[str]) -> str:
        _, a = _args(words)
        node, grep = a.get("node", ""), a.get("grep", "")
        lines = self.w.logs.lines
        since = self._logs_seen.get((node, grep), 0)
        self._logs_seen[(node, grep)] = len(lines)
        shown = [f"node{n} {level} {message}" for _, n, level, message in lines[since:]
                 if (not node or n == int(node)) and grep in message]
        return "\n".join(shown) if shown else "(none)"


def parse(text: str) -> list[Case]:
    """Every command of a script with its expected output."""
    cases: list[Case] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ScenarioError(f"line {i + 1}: {lines[i]!r} is not followed by {SEPARATOR!r}")
        first = end = i + 2
        while end < len(lines) and lines[end].strip():
            end += 1
        cases.append(Case(i + 1, lines[i], "\n".join(lines[first:end]), (first, end)))
        i = end
    return cases


def run_script(text: str) -> list[tuple[Case, str]]:
    """Run every command of a script in one fresh world: each case with its actual output."""
    scenario = Scenario()
    results: list[tuple[Case, str]] = []
    try:
        for case in parse(text):
            try:
                output = scenario.run(case.command)
            except (ScenarioError, KeyError, ValueError, IndexError) as exc:
                raise ScenarioError(f"line {case.line}: {case.command!r}: {exc}") from exc
            if not output or any(not line.strip() for line in output.splitlines()):
                raise ScenarioError(f"line {case.line}: empty output line in {output!r}")
            results.append((case, output))
    finally:
        scenario.close()
    return results


def render(text: str, results: list[tuple[Case, str]]) -> str:
    """The script with the actual outputs in place of the expected ones, all else kept."""
    lines = text.splitlines()
    for case, output in reversed(results):
        first, end = case.output_lines
        lines[first:end] = output.splitlines()
    return "\n".join(lines) + "\n"
