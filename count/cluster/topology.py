"""The ring as cluster state: a versioned record of the members and their states.

Every node holds one committed ``Topology`` durably. Epoch 1 is CLUSTER_NODES itself, every
member ``normal`` (the first members must list the same nodes, as a new Cassandra cluster's
seeds must); every later epoch is a change agreed by a majority of the voters of the one
before it (``count/cluster/consensus.py``), so no two rings exist for one epoch. A member's
tokens are a function of its address (``ring.Ring``), so its identity is its address and
node id, both in the record.

States, as Cassandra names them:
    joining  streams the ranges it will own; gets the writes for them; serves no reads yet
    normal   owns its ranges
    leaving  streams its ranges away (decommission); owns them until it has left
    removing is dead and being replaced from the surviving replicas (removenode)
    left     gone; kept in the record so that a node that left knows it, and is refused
             if it comes back with its old data

At most one member is joining or leaving at a time: a change while one is in flight is
refused with a message naming it (``Busy``), and the joiner or operator tries again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

STATES = ("joining", "normal", "leaving", "removing", "left")
CHANGING = ("joining", "leaving", "removing")
# A record names at most this many members (left ones included; the oldest left go first).
MEMBERS_MAX = 256
ADDRESS_CHARS_MAX = 256


class TopologyError(ValueError):
    """A change that cannot be made to this topology (the message says why)."""


class Busy(TopologyError):
    """Another change is in flight."""


@dataclass(frozen=True)
class Member:
    address: str
    node_id: int | str
    state: str
    since: int = 0  # the epoch that gave it this state (the oldest left go first)

    def to_wire(self) -> list[Any]:
        return [self.address, self.node_id, self.state, self.since]


@dataclass(frozen=True)
class Topology:
    epoch: int
    members: tuple[Member, ...]  # sorted by address

    def __post_init__(self) -> None:
        assert self.epoch >= 0, self.epoch
        addresses = [m.address for m in self.members]
        assert addresses == sorted(set(addresses)), addresses
        assert all(m.state in STATES for m in self.members), self.members
        assert len([m for m in self.members if m.state in CHANGING]) <= 1

    @classmethod
    def initial(cls, addresses: list[str], node_ids: dict[str, int | str]) -> Topology:
        """Epoch 1 from CLUSTER_NODES: every listed member normal (named by its address
        until its node id is known)."""
        return cls(1, tuple(Member(a, node_ids.get(a, a), "normal") for a in sorted(addresses)))

    def with_ids(self, node_ids: dict[str, int | str]) -> Topology:
        """The same record with the node ids learned since (the digest does not change)."""
        return replace(self, members=tuple(replace(m, node_id=node_ids.get(m.address, m.node_id))
                                           for m in self.members))

    # -- who is what ---------------------------------------------------------------------

    def member(self, address: str) -> Member | None:
        return next((m for m in self.members if m.address == address), None)

    def state(self, address: str) -> str | None:
        m = self.member(address)
        return None if m is None else m.state

    def owners(self) -> list[str]:
        """The current ring: members that own ranges (normal, leaving, removing)."""
        return [m.address for m in self.members if m.state in ("normal", "leaving", "removing")]

    def future(self) -> list[str]:
        """The ring once the change in flight is done (normal and joining)."""
        return [m.address for m in self.members if m.state in ("normal", "joining")]

    def voters(self) -> list[str]:
        """Members whose majority agrees the next epoch and counts for writes: the owners.
        A joining member is not counted, so adding one never raises the majority needed."""
        return self.owners()

    def active(self) -> list[str]:
        """Everyone not left: the members this node talks to."""
        return [m.address for m in self.members if m.state != "left"]

    def changing(self) -> Member | None:
        """The member joining, leaving or being removed, if a change is in flight."""
        return next((m for m in self.members if m.state in CHANGING), None)

    def find(self, who: str) -> Member | None:
        """A member by node id (as operators name it) or address."""
        return next((m for m in self.members if str(m.node_id) == who or m.address == who),
                    None)

    def digest(self) -> str:
        """Short hex hash of the epoch and each member's address and state: two nodes at one
        epoch must have equal digests. Node ids are left out: members of the first epoch
        learn each other's from heartbeats, so their records may differ only there."""
        spec = [self.epoch, [[m.address, m.state] for m in self.members]]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    # -- changes (each gives the next epoch) -------------------------------------------------

    def _next(self, members: list[Member]) -> Topology:
        members.sort(key=lambda m: m.address)
        left = sorted((m for m in members if m.state == "left"), key=lambda m: m.since)
        while len(members) > MEMBERS_MAX and left:
            members.remove(left.pop(0))
        if len(members) > MEMBERS_MAX:
            raise TopologyError(f"a cluster has at most {MEMBERS_MAX} members")
        return Topology(self.epoch + 1, tuple(members))

    def _idle(self) -> None:
        busy = self.changing()
        if busy is not None:
            verb = {"joining": "joining", "leaving": "leaving", "removing": "being removed"}
            raise Busy(f"a change is in progress: node {busy.node_id} ({busy.address}) is "
                       f"{verb[busy.state]}; try again once it has finished")

    def join(self, address: str, node_id: int | str) -> Topology:
        """``address`` joins (a node that left may come back, with a new store)."""
        current = self.member(address)
        if current is not None and current.state != "left":
            raise TopologyError(f"{address} is already a member ({current.state})")
        self._idle()
        clash = next((m for m in self.members
                      if str(m.node_id) == str(node_id) and m.state != "left"), None)
        if clash is not None:
            raise TopologyError(f"NODE_ID {node_id} is already used by {clash.address}")
        others = [m for m in self.members if m.address != address]
        return self._next([*others, Member(address, node_id, "joining", self.epoch + 1)])

    def leave(self, address: str, removed: bool = False) -> Topology:
        """``address`` starts leaving (decommission), or, dead, being removed (removenode):
        its ranges go to the others. A joiner's join is called off instead: it owns nothing
        yet."""
        current = self.member(address)
        if current is None or current.state == "left":
            raise TopologyError(f"{address} is not a member")
        if current.state == "joining":
            return self._set(address, "left")
        if current.state in ("leaving", "removing"):
            raise TopologyError(f"{address} is already {current.state}")
        self._idle()
        if len(self.owners()) <= 1:
            raise TopologyError("the last member cannot leave")
        return self._set(address, "removing" if removed else "leaving")

    def finish(self) -> Topology:
        """The change in flight is done: a joiner becomes normal, a leaver left."""
        busy = self.changing()
        if busy is None:
            raise TopologyError("no change is in progress")
        return self._set(busy.address, "normal" if busy.state == "joining" else "left")

    def _set(self, address: str, state: str) -> Topology:
        return self._next([replace(m, state=state, since=self.epoch + 1)
                           if m.address == address else m for m in self.members])

    # -- wire ----------------------------------------------------------------------------

    def to_wire(self) -> list[Any]:
        return [self.epoch, [m.to_wire() for m in self.members]]

    @classmethod
    def from_wire(cls, obj: Any) -> Topology:
        """Check and decode ``to_wire`` output; TopologyError on anything else."""
        try:
            epoch, members = obj
            if type(epoch) is not int or epoch < 0 or not isinstance(members, list):
                raise TopologyError("malformed topology")
            if len(members) > MEMBERS_MAX:
                raise TopologyError("malformed topology: too many members")
            decoded = []
            for member in members:
                if not isinstance(member, list | tuple) or len(member) != 4:
                    raise TopologyError("malformed topology member")
                address, node_id, state, since = member
                if (not isinstance(address, str) or not 0 < len(address) <= ADDRESS_CHARS_MAX
                        or state not in STATES or type(since) is not int
                        or not 0 <= since <= epoch
                        or not (type(node_id) is int or isinstance(node_id, str))):
                    raise TopologyError("malformed topology member")
                decoded.append(Member(address, node_id, state, since))
            addresses = [m.address for m in decoded]
            if addresses != sorted(set(addresses)):
                raise TopologyError("malformed topology: members unsorted or repeated")
            if len([m for m in decoded if m.state in CHANGING]) > 1:
                raise TopologyError("malformed topology: more than one change in flight")
            return cls(epoch, tuple(decoded))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TopologyError):
                raise
            raise TopologyError(f"malformed topology ({exc})") from None
