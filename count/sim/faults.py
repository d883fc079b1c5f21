"""Seeded fault schedules for the simulated cluster.

Each kind of fault is drawn a few times in the fault window (from FAULTS_FROM_S to the
heal), with a seeded start, length and target; at the heal every fault ends: links are
whole again, stopped nodes are restarted, paused ones resume, disks have room. Clock skew
is the exception: clocks stay as they drifted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from count.messages import Decommission, Message, RemoveNode
from count.sim.world import SimNode, World

KINDS = ("loss", "delay", "duplicate", "reorder", "partition", "oneway", "bridge", "crash",
         "pause", "wipe", "skew", "disk")
FAULTS_FROM_S = 2.0
# Occurrences of each kind in one run (a wipe loses a disk: one per run, see the checker).
OCCURRENCES = {"wipe": (1, 1)}
DEFAULT_OCCURRENCES = (1, 2)
DURATION_S = (2.0, 12.0)
PAUSE_S = (3.0, 10.0)
SKEW_MS_MAX = 5_000


def parse_kinds(text: str, known: tuple[str, ...] = KINDS, what: str = "fault kinds"
                ) -> tuple[str, ...]:
    """``all``, ``none`` or a comma-separated list of ``known`` kinds (ValueError naming a
    bad one)."""
    if text.strip() in ("all", ""):
        return known if text.strip() == "all" else ()
    if text.strip() == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(known)}, all")
    return kinds


@dataclass(frozen=True)
class Fault:
    kind: str
    start_s: float
    end_s: float
    nodes: tuple[int, ...]
    detail: str = ""

    def describe(self) -> str:
        who = ",".join(map(str, self.nodes))
        return f"{self.start_s:7.2f}-{self.end_s:7.2f} {self.kind} {who} {self.detail}".rstrip()


def schedule(rng: random.Random, kinds: tuple[str, ...], nodes: int,
             heal_s: float) -> list[Fault]:
    """The faults of one run, in start order."""
    faults: list[Fault] = []
    ids = list(range(1, nodes + 1))
    for kind in kinds:
        low, high = OCCURRENCES.get(kind, DEFAULT_OCCURRENCES)
        for _ in range(rng.randint(low, high)):
            start = rng.uniform(FAULTS_FROM_S, max(FAULTS_FROM_S, heal_s - 2.0))
            length = rng.uniform(*(PAUSE_S if kind == "pause" else DURATION_S))
            end = min(start + length, heal_s)
            faults.append(_draw(rng, kind, start, end, ids))
    faults.sort(key=lambda f: (f.start_s, f.kind))
    return faults


def _draw(rng: random.Random, kind: str, start: float, end: float, ids: list[int]) -> Fault:
    if kind in ("loss", "duplicate"):
        return Fault(kind, start, end, (), f"p={rng.uniform(0.05, 0.3):.2f}")
    if kind == "delay":
        return Fault(kind, start, end, (), f"max={rng.uniform(0.1, 1.5):.2f}s")
    if kind == "reorder":
        return Fault(kind, start, end, (), f"jitter={rng.uniform(0.01, 0.2):.3f}s")
    if kind == "partition":  # a minority cut off from the majority
        minority = rng.sample(ids, rng.randint(1, max(1, (len(ids) - 1) // 2)))
        return Fault(kind, start, end, tuple(sorted(minority)))
    if kind == "oneway":  # one node hears the others but they do not hear it
        return Fault(kind, start, end, (rng.choice(ids),))
    if kind == "bridge":  # two halves that only one node (the first) sees both of
        bridge, *rest = rng.sample(ids, len(ids))
        return Fault(kind, start, end, (bridge, *rest[:len(rest) // 2]))
    if kind == "skew":
        return Fault(kind, start, start, (rng.choice(ids),),
                     f"{rng.randint(-SKEW_MS_MAX, SKEW_MS_MAX)}ms")
    return Fault(kind, start, end, (rng.choice(ids),))  # crash, pause, wipe, disk


def _cuts(fault: Fault, ids: list[int]) -> list[tuple[int, int]]:
    """The (from, to) links a partition fault cuts."""
    if fault.kind == "partition":
        side = set(fault.nodes)
        return [(a, b) for a in ids for b in ids if (a in side) != (b in side)]
    if fault.kind == "oneway":
        (node,) = fault.nodes
        return [(node, b) for b in ids if b != node]
    bridge, *half = fault.nodes
    one, other = set(half), set(ids) - set(half) - {bridge}
    return [(a, b) for a in ids for b in ids if (a in one and b in other) or (a in other and b in one)]


def inject(world: World, faults: list[Fault]) -> None:
    """Put every fault's start and end on the world's event queue."""
    for fault in faults:
        begin, end = _actions(world, fault)
        world.at(fault.start_s, _traced(world, fault, "begin", begin))
        world.at(fault.end_s, _traced(world, fault, "end", end))


def _traced(world: World, fault: Fault, phase: str,
            action: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        world.trace("fault", phase, fault.describe())
        action()
    return run


def _actions(world: World, fault: Fault) -> tuple[Callable[[], None], Callable[[], None]]:
    net = world.network
    ids = list(world.nodes)
    nodes: list[SimNode] = [world.nodes[i] for i in fault.nodes]
    value = float(fault.detail.split("=")[1].rstrip("s")) if "=" in fault.detail else 0.0

    def setter(name: str, to: float) -> Callable[[], None]:
        return lambda: setattr(net, name, to)

    if fault.kind == "loss":
        return setter("loss", value), setter("loss", 0.0)
    if fault.kind == "duplicate":
        return setter("duplicate", value), setter("duplicate", 0.0)
    if fault.kind == "delay":
        return setter("delay_s", value), setter("delay_s", 0.0)
    if fault.kind == "reorder":
        return setter("reorder_s", value), setter("reorder_s", 0.0)
    if fault.kind in ("partition", "oneway", "bridge"):
        cuts = _cuts(fault, ids)
        return (lambda: net.cut.update(cuts)), (lambda: net.cut.subtract(cuts))
    node = nodes[0]
    if fault.kind == "crash":
        return node.crash, lambda: _restart(node)
    if fault.kind == "wipe":
        return node.wipe, lambda: _restart(node)
    if fault.kind == "pause":
        return node.pause, node.resume
    if fault.kind == "disk":
        return (lambda: setattr(node, "disk_full", True)), (lambda: setattr(node, "disk_full",
                                                                            False))
    assert fault.kind == "skew", fault.kind
    skew_ms = int(fault.detail.rstrip("ms"))
    return (lambda: setattr(node.clock, "skew_ms", skew_ms)), (lambda: None)


def _restart(node: SimNode) -> None:
    """Start a node a fault stopped (not one killed for good, or that left the cluster)."""
    if node.state == "down" and not node.retired and node.exit_code is None:
        node.start()


def heal(world: World) -> None:
    """End every fault now (clock skew stays)."""
    world.trace("heal")
    world.network.heal()
    for node in world.nodes.values():
        node.disk_full = False
        if node.state == "paused":
            node.resume()
        else:
            _restart(node)


# -- membership changes ------------------------------------------------------------------

CHANGES = ("join", "decommission", "removenode")
# A removal is asked for this long after the node was killed (the others must see it down),
# and again every RETRY_S until a member takes it (a partition may cut the asked one off).
REMOVE_AFTER_S = 6.0
RETRY_S = 3.0
CHANGE_TRIES_MAX = 20


def draw_change(rng: random.Random, kinds: tuple[str, ...], nodes: int,
                heal_s: float) -> Fault | None:
    """At most one membership change per run, amid the faults: a new node joins (listing
    itself and one member), one leaves (decommission), or one is killed and removed."""
    kind = rng.choice((None, *kinds))
    if kind is None:
        return None
    start = rng.uniform(FAULTS_FROM_S, max(FAULTS_FROM_S, heal_s / 2))
    if kind == "join":
        return Fault(kind, start, start, (nodes + 1, rng.randint(1, nodes)))
    leaving, via = rng.sample(range(1, nodes + 1), 2)
    return Fault(kind, start, start, (leaving, via))


def inject_change(world: World, change: Fault) -> None:
    """Put a membership change on the world's event queue."""
    subject, other = change.nodes
    if change.kind == "join":
        def join() -> None:
            world.trace("change", change.describe())
            world.add_node(subject, [subject, other]).start()
        world.at(change.start_s, join)
        return
    if change.kind == "removenode":
        def kill() -> None:
            world.trace("change", change.describe())
            node = world.nodes[subject]
            node.retired = True
            node.crash()
        world.at(change.start_s, kill)
    msg: Message = (Decommission() if change.kind == "decommission"
                    else RemoveNode(str(subject)))
    asked = world.nodes[subject if change.kind == "decommission" else other]
    tries = [0]

    def ask() -> None:
        tries[0] += 1

        def answered(status: int, body: object) -> None:
            world.trace("change-answer", change.kind, status)
            if status != 202 and tries[0] < CHANGE_TRIES_MAX:
                world.at(world.now_s + RETRY_S, ask)
        asked.request(-1000 - tries[0], msg, answered)

    delay = REMOVE_AFTER_S if change.kind == "removenode" else 0.0
    world.at(change.start_s + delay, ask)
