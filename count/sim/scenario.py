"""Scenario scripts for the simulated cluster, in the style of etcd-io/raft's testdata.

A script is a sequence of commands, each followed by a line ``----`` and the output it must
give, then a blank line; lines starting with ``#`` are comments. ``run_script`` executes the
commands against one ``World`` and returns the script with the actual outputs, so a test
compares it with the file (and ``COUNT_SCENARIO_REWRITE=1`` writes it back). Every run of a
script is the same run: the world is seeded.

Commands (``N`` is a node's index, ``S`` a series name):

    cluster nodes=3 rf=2 seed=1 [SETTING=value ...]   build and start a cluster
    tick 5s                       let simulated time pass
    write via=N series=S ts=1..10 [value=1.5] [level=quorum]
                                  one insert of points at ts 1..10 ms (value: ts/2)
    read via=N series=S [level=one]      a range read: status, points, first..last ts
    count via=N series=S [level=one]     the count aggregation
    partition 3 | 1,2             cut every link between the two groups (both ways)
    oneway 3 -> 1,2               cut the links from 3 to 1 and 2 only
    heal                          every link whole again
    crash N | start N | wipe N | pause N | disk N full|ok
    resume N [timers-first|reads-first]  (default: the seed picks)
    add N members=1,2,3,4         a new node N listing those members (not started)
    restart N members=1,2,3,4     crash N, start it again listing those members
    repair via=N                  an anti-entropy round now (POST /cluster/repair)
    endpoints series=S            the replicas of S (as node 1 places it)
    hints                         hinted points each node holds
    stored node=N series=S        what N's own storage holds of S
    logs [node=N] [grep=text]     log lines written since the last ``logs`` with the same
                                  filter
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import numpy as np

from count.messages import Aggregate, Insert, Message, ReadRange, Repair
from count.sim.world import World
from count.storage.writes import TIMESTAMP_MAX_MS

SEPARATOR = "----"
# A client waits this long (simulated) for an answer before the command reports none.
ANSWER_WAIT_S = 10.0


class ScenarioError(ValueError):
    """A command the language does not have, or bad arguments to one."""


def _args(words: list[str]) -> tuple[list[str], dict[str, str]]:
    plain = [w for w in words if "=" not in w]
    named = dict(w.split("=", 1) for w in words if "=" in w)
    return plain, named


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _span(stamps: list[int]) -> str:
    return f"{stamps[0]}..{stamps[-1]}" if stamps else "-"


class Scenario:
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
        words = shlex.split(line)
        handler: Callable[[list[str]], str] | None = getattr(
            self, "cmd_" + words[0].replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {words[0]!r}")
        return handler(words[1:])

    # -- helpers -----------------------------------------------------------------------

    def _ask(self, via: int, msg: Message) -> tuple[int, Any]:
        """Send a client operation to node ``via`` and run until it is answered."""
        self._token += 1
        got: list[tuple[int, Any]] = []
        self.w.nodes[via].request(self._token, msg, lambda s, b: got.append((s, b)))
        deadline = self.w.now_s + ANSWER_WAIT_S
        while not got and self.w.now_s < deadline:
            self.w.run_until(self.w.now_s + 0.01)
        return got[0] if got else (0, "no answer")

    @staticmethod
    def _error(status: int, body: Any) -> str:
        return f"{status} {body}"

    # -- commands ----------------------------------------------------------------------

    def cmd_cluster(self, words: list[str]) -> str:
        _, named = _args(words)
        nodes, rf, seed = (int(named.pop(k, d)) for k, d in (("nodes", 3), ("rf", 2),
                                                               ("seed", 1)))
        self.world = World(seed, nodes, rf, env=named)
        self.world.start()
        return "ok"

    def cmd_tick(self, words: list[str]) -> str:
        self.w.run_until(self.w.now_s + _seconds(words[0]))
        return "ok"

    def cmd_write(self, words: list[str]) -> str:
        _, a = _args(words)
        low, _, high = a["ts"].partition("..")
        stamps = np.arange(int(low), int(high or low) + 1, dtype=np.int64)
        values = (np.full(len(stamps), float(a["value"])) if "value" in a
                  else stamps.astype(np.float64) / 2)
        msg = Insert([a["series"]], np.zeros(len(stamps), np.uint32), stamps, values,
                     a.get("level"))
        status, body = self._ask(int(a["via"]), msg)
        if status == 201:
            return f"201 inserted={body['inserted']}"
        return self._error(status, body)

    def cmd_read(self, words: list[str]) -> str:
        _, a = _args(words)
        msg = ReadRange(a["series"], 0, TIMESTAMP_MAX_MS, a.get("level"))
        status, body = self._ask(int(a["via"]), msg)
        if status != 200:
            return self._error(status, body)
        stamps = np.frombuffer(body["ts"], np.int64).tolist()
        values = np.frombuffer(body["val"], np.float64).tolist()
        distinct = sorted(set(values))
        shown = (f" values={','.join(f'{v:g}' for v in distinct)}"
                 if 0 < len(distinct) <= 4 else "")
        return f"200 points={len(stamps)} ts={_span(stamps)}{shown}"

    def cmd_count(self, words: list[str]) -> str:
        _, a = _args(words)
        msg = Aggregate(a["series"], 0, TIMESTAMP_MAX_MS, "count", None, a.get("level"))
        status, body = self._ask(int(a["via"]), msg)
        return f"200 {body['value']:g}" if status == 200 else self._error(status, body)

    def cmd_partition(self, words: list[str]) -> str:
        left, _, right = " ".join(words).partition("|")
        a, b = _ints(left.replace(" ", "")), _ints(right.replace(" ", ""))
        self.w.network.cut.update([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])
        return "ok"

    def cmd_oneway(self, words: list[str]) -> str:
        left, _, right = " ".join(words).partition("->")
        a, b = _ints(left.replace(" ", "")), _ints(right.replace(" ", ""))
        self.w.network.cut.update([(x, y) for x in a for y in b])
        return "ok"

    def cmd_heal(self, words: list[str]) -> str:
        self.w.network.heal()
        return "ok"

    def _node_action(self, words: list[str], action: str) -> str:
        getattr(self.w.nodes[int(words[0])], action)()
        return "ok"

    def cmd_crash(self, words: list[str]) -> str:
        return self._node_action(words, "crash")

    def cmd_start(self, words: list[str]) -> str:
        return self._node_action(words, "start")

    def cmd_wipe(self, words: list[str]) -> str:
        return self._node_action(words, "wipe")

    def cmd_pause(self, words: list[str]) -> str:
        return self._node_action(words, "pause")

    def cmd_resume(self, words: list[str]) -> str:
        """``resume N [timers-first|reads-first]``: which the loop does first after the stall."""
        order = words[1] if len(words) > 1 else None
        self.w.nodes[int(words[0])].resume(None if order is None else order == "timers-first")
        return "ok"

    def cmd_disk(self, words: list[str]) -> str:
        self.w.nodes[int(words[0])].disk_full = words[1] == "full"
        return "ok"

    def cmd_add(self, words: list[str]) -> str:
        plain, a = _args(words)
        self.w.add_node(int(plain[0]), _ints(a["members"]))
        return "ok"

    def cmd_restart(self, words: list[str]) -> str:
        plain, a = _args(words)
        index = int(plain[0])
        node = self.w.nodes[index]
        node.crash()
        if "members" in a:
            node.config = self.w.node_config(index, _ints(a["members"]))
        node.start()
        return "ok"

    def cmd_repair(self, words: list[str]) -> str:
        _, a = _args(words)
        status, body = self._ask(int(a["via"]), Repair())
        if status != 200:
            return self._error(status, body)
        return (f"200 peers={body['peers']} differing={body['ranges_differing']} "
                f"received={body['points_received']} sent={body['points_sent']} "
                f"errors={len(body['errors'])}")

    def cmd_endpoints(self, words: list[str]) -> str:
        _, a = _args(words)
        core = next(n.core for n in self.w.nodes.values() if n.core is not None)
        assert core is not None
        replicas = core.reads.placement.replicas(a["series"])
        return " ".join(f"node{self.w.by_address[r].index}" for r in replicas)

    def cmd_hints(self, words: list[str]) -> str:
        held = []
        for index, node in self.w.nodes.items():
            pending = sum(node.core.ctx.hints.pending().values()) if node.core else "-"
            held.append(f"node{index}={pending}")
        return " ".join(held)

    def cmd_stored(self, words: list[str]) -> str:
        _, a = _args(words)
        node = self.w.nodes[int(a["node"])]
        if node.storage is None:
            return f"node{node.index} is down"
        cols = node.storage.read(a["series"], 0, TIMESTAMP_MAX_MS, 1 << 31)
        return f"points={len(cols)} ts={_span(cols.ts.tolist())}"

    def cmd_logs(self, words: list[str]) -> str:
        _, a = _args(words)
        key = (a.get("node", ""), a.get("grep", ""))
        lines = self.w.logs.lines[self._logs_seen.get(key, 0):]
        self._logs_seen[key] = len(self.w.logs.lines)
        node = int(a["node"]) if "node" in a else None
        shown = [f"node{n} {level} {message}" for _, n, level, message in lines
                 if (node is None or n == node) and a.get("grep", "") in message]
        return "\n".join(shown) if shown else "(none)"


def parse(text: str) -> list[tuple[list[str], str, str]]:
    """(comment lines before it, command, expected output) for each command of a script."""
    blocks: list[tuple[list[str], str, str]] = []
    lines = text.splitlines()
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            if line.strip():
                comments.append(line)
            i += 1
            continue
        command = line
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ScenarioError(f"line {i + 1}: {command!r} is not followed by {SEPARATOR!r}")
        i += 2
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append((comments, command, "\n".join(expected)))
        comments = []
    return blocks


def run_script(text: str) -> str:
    """The script with every command's actual output in place of the expected one."""
    scenario = Scenario()
    out: list[str] = []
    try:
        for comments, command, _ in parse(text):
            out.extend(comments)
            out.extend([command, SEPARATOR, scenario.run(command), ""])
    finally:
        scenario.close()
    return "\n".join(out)
