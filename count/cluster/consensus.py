"""Agreeing the next epoch: single-decree Paxos per epoch among the current voters.

Epoch ``e + 1`` is a value that the voters of epoch ``e`` (its normal and leaving members)
choose once: a proposer picks a ballot (round, its address), gathers promises from a
majority (``Prepare``), proposes the highest-ballot value any of them had accepted, or its
own if none had, and the value is chosen once a majority has stored it (``Accept``). A
proposer that crashed after a majority accepted leaves the value to be completed by the
next proposer, whatever change that one wanted; so no two rings exist for one epoch, and a
change survives the crash of whoever proposed it. The chosen value is then sent to every
member (``Commit``), and heartbeats carry each node's epoch so that any node that missed it
fetches it from one that has it.

``Acceptor`` is one node's durable side (it persists before it answers); ``Proposal`` is one
attempt, driven by the answers it is given. Neither does I/O: the caller sends and persists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from count.cluster.topology import Topology, TopologyError

Ballot = tuple[int, str]  # (round, proposer address): totally ordered, unique per proposer
NO_BALLOT: Ballot = (0, "")


def ballot_from_wire(obj: Any) -> Ballot:
    if (not isinstance(obj, list | tuple) or len(obj) != 2 or type(obj[0]) is not int
            or obj[0] < 0 or not isinstance(obj[1], str)):
        raise TopologyError("malformed ballot")
    return (obj[0], obj[1])


@dataclass
class Promise:
    """An acceptor's answer to a prepare or an accept."""

    ok: bool
    promised: Ballot  # the highest ballot it has promised
    accepted: tuple[Ballot, Topology] | None = None  # prepare: what it accepted before
    current: Topology | None = None  # set when its committed epoch is at or past the one asked

    def to_wire(self) -> dict[str, Any]:
        return {"ok": self.ok, "promised": list(self.promised),
                "accepted": None if self.accepted is None
                else [list(self.accepted[0]), self.accepted[1].to_wire()],
                "current": None if self.current is None else self.current.to_wire()}

    @classmethod
    def from_wire(cls, body: Any) -> Promise:
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            raise TopologyError("malformed promise")
        accepted = body.get("accepted")
        current = body.get("current")
        return cls(body["ok"], ballot_from_wire(body.get("promised")),
                   None if accepted is None else (ballot_from_wire(accepted[0]),
                                                  Topology.from_wire(accepted[1])),
                   None if current is None else Topology.from_wire(current))


class Acceptor:
    """What this node promised and accepted for the epoch after its committed one."""

    def __init__(self, stored: bytes | None, save: Callable[[bytes], None]) -> None:
        self._save = save
        self.epoch = 0
        self.promised: Ballot = NO_BALLOT
        self.accepted: tuple[Ballot, Topology] | None = None
        if stored:
            epoch, promised, accepted = msgpack.unpackb(stored)
            self.epoch, self.promised = epoch, ballot_from_wire(promised)
            if accepted is not None:
                self.accepted = (ballot_from_wire(accepted[0]), Topology.from_wire(accepted[1]))

    def _for(self, current: Topology, epoch: int) -> Promise | None:
        """None if ``epoch`` is the one this node votes on now; else the refusal."""
        if epoch <= current.epoch:
            return Promise(False, self.promised, current=current)
        if epoch > current.epoch + 1:  # this node is behind: it cannot vote yet
            return Promise(False, self.promised)
        if self.epoch != epoch:
            self.epoch, self.promised, self.accepted = epoch, NO_BALLOT, None
        return None

    def prepare(self, current: Topology, epoch: int, ballot: Ballot) -> Promise:
        refused = self._for(current, epoch)
        if refused is not None:
            return refused
        if ballot <= self.promised:
            return Promise(False, self.promised)
        self.promised = ballot
        self._persist()
        return Promise(True, ballot, self.accepted)

    def accept(self, current: Topology, ballot: Ballot, value: Topology) -> Promise:
        refused = self._for(current, value.epoch)
        if refused is not None:
            return refused
        if ballot < self.promised:
            return Promise(False, self.promised)
        self.promised, self.accepted = ballot, (ballot, value)
        self._persist()
        return Promise(True, ballot)

    def _persist(self) -> None:
        accepted = None if self.accepted is None else [list(self.accepted[0]),
                                                       self.accepted[1].to_wire()]
        self._save(msgpack.packb([self.epoch, list(self.promised), accepted]))


class Proposal:
    """One attempt to choose epoch ``value.epoch``: prepare, then accept, at one ballot.

    ``send(phase, voter)`` sends the phase's message to a voter and feeds its answer to
    ``answer`` (or ``failed``); ``done(chosen, highest)`` runs once: the value chosen (this
    proposal's or an earlier accepted one it completed), or None with the highest ballot
    seen, for a retry above it.
    """

    def __init__(self, voters: list[str], ballot: Ballot, value: Topology,
                 send: Callable[[str, str], None],
                 done: Callable[[Topology | None, Ballot, str], None]) -> None:
        assert voters, "a proposal needs voters"
        self.voters = list(voters)
        self.majority = len(voters) // 2 + 1
        self.ballot = ballot
        self.value = value
        self._send = send
        self._done = done
        self.phase = "prepare"
        self._yes: set[str] = set()
        self._no: set[str] = set()
        self._highest = ballot
        self._best: tuple[Ballot, Topology] | None = None
        self._why: list[str] = []
        self.finished = False

    def start(self) -> None:
        self._send_all()

    def _send_all(self) -> None:
        """This phase's message to every voter (an answer may end the proposal meanwhile:
        a voter known to be down is refused at once)."""
        phase = self.phase
        for voter in self.voters:
            if self.finished or self.phase != phase:
                return
            self._send(phase, voter)

    def answer(self, phase: str, voter: str, promise: Promise) -> None:
        if self.finished or phase != self.phase or voter in self._yes | self._no:
            return
        if promise.current is not None and promise.current.epoch >= self.value.epoch:
            self._finish(None, f"epoch {self.value.epoch} is already chosen")
            return
        self._highest = max(self._highest, promise.promised)
        if not promise.ok:
            self._refused(voter, "promised a higher ballot" if promise.promised > self.ballot
                          else "cannot vote on this epoch yet")
            return
        self._yes.add(voter)
        if promise.accepted is not None and (self._best is None
                                             or promise.accepted[0] > self._best[0]):
            self._best = promise.accepted
        if len(self._yes) < self.majority:
            return
        if self.phase == "prepare":
            if self._best is not None:
                self.value = self._best[1]
            self.phase, self._yes, self._no = "accept", set(), set()
            self._send_all()
        else:
            self._finish(self.value, "")

    def failed(self, phase: str, voter: str, why: str) -> None:
        if not self.finished and phase == self.phase and voter not in self._yes | self._no:
            self._refused(voter, why)

    def _refused(self, voter: str, why: str) -> None:
        self._no.add(voter)
        self._why.append(f"{voter}: {why}")
        if len(self.voters) - len(self._no) < self.majority:
            self._finish(None, f"{len(self.voters) - len(self._no)} of {len(self.voters)} "
                               f"voters could still agree, {self.majority} needed ("
                               + "; ".join(self._why[:3]) + ")")

    def _finish(self, chosen: Topology | None, why: str) -> None:
        self.finished = True
        self._done(chosen, self._highest, why)
