"""Whether a node is healthy and whether it is ready to serve writes: pure judgements.

``GET /health`` and ``GET /ready`` are what scripts, load balancers and Kubernetes probes
trust, so both are computed here from plain inputs (how many members this node sees alive,
which are down, what its storage says, whether it is still catching up) and nowhere else.

- **health** is ``healthy`` (every member alive, storage writable), ``degraded`` (some
  members down but a majority alive, storage writable) or ``unhealthy`` (fewer than a
  majority alive, or storage not writable). Only ``unhealthy`` is an HTTP 503: a degraded
  node still takes every read and write.
- **ready** means the node would take a write now: a majority alive and storage writable.
  A node that is still catching up (``syncing``: a new or wiped data directory) is ready:
  it coordinates reads and writes correctly (its own copy counts for no read until it has
  caught up, and writes go to it throughout), and catching up waits for every replica peer,
  so a node taken out of rotation while one peer is down would stay out for no gain. The
  body says ``"syncing": true`` so that an operator can still wait for it.

Every judgement carries ``reasons``: one line a person can act on per thing that is wrong.
"""

from __future__ import annotations

import dataclasses

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


@dataclasses.dataclass(frozen=True)
class NodeState:
    """What the judgements are made from."""

    alive: int  # members this node sees alive, itself included
    members: int  # members in CLUSTER_NODES (1 for a single node)
    down: tuple[str, ...]  # the members it sees down, as "node 3 (host:port)"
    storage_problem: str | None  # why storage cannot take a write now, or None
    syncing: bool  # still catching up after a new or wiped data directory


@dataclasses.dataclass(frozen=True)
class Judgement:
    status: str
    reasons: tuple[str, ...]


def has_majority(state: NodeState) -> bool:
    return state.alive > state.members / 2


def _minority_reason(state: NodeState) -> str:
    needed = state.members // 2 + 1
    return (f"network partition: this node sees {state.alive} of {state.members} members "
            f"alive, fewer than a majority ({needed}), so it refuses writes")


def _write_blockers(state: NodeState) -> list[str]:
    """Why this node would refuse a write now: no majority, storage not writable."""
    reasons = [_minority_reason(state)] if not has_majority(state) else []
    if state.storage_problem is not None:
        reasons.append(state.storage_problem)
    return reasons


def health(state: NodeState) -> Judgement:
    """healthy / degraded / unhealthy, with the reasons it is not healthy."""
    reasons = _write_blockers(state)
    if reasons:
        return Judgement(UNHEALTHY, (*reasons, *(f"{m} is down" for m in state.down)))
    if state.down:
        return Judgement(DEGRADED, tuple(f"{m} is down" for m in state.down))
    return Judgement(HEALTHY, ())


def readiness(state: NodeState) -> Judgement:
    """ready / not_ready: would this node take a write now (see the module's notes)."""
    reasons = _write_blockers(state)
    return Judgement("not_ready" if reasons else "ready", tuple(reasons))
