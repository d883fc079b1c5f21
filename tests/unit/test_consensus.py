"""Unit tests for count.cluster.consensus: the acceptor's promises and their durability, one
proposal driven by answers, and a simulated network of acceptors and competing proposers
(loss, duplication, reordering, proposer crashes, acceptor restarts) checked for safety."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.cluster.consensus import NO_BALLOT, Acceptor, Ballot, Promise, Proposal, ballot_from_wire
from count.cluster.topology import Member, Topology, TopologyError


def base(n: int = 3, epoch: int = 3) -> Topology:
    """A committed topology of ``n`` normal voters v0.. at ``epoch``."""
    return Topology(epoch, tuple(Member(f"v{i}", i, "normal") for i in range(n)))


def value(i: int, current: Topology | None = None) -> Topology:
    """Proposer ``i``'s change: node new{i} joins (each proposer's value is different)."""
    return (current or base()).join(f"new{i}", 100 + i)


class Disk:
    """An acceptor's durable record, in memory."""

    def __init__(self) -> None:
        self.stored: bytes | None = None
        self.saves = 0

    def save(self, data: bytes) -> None:
        self.stored = data
        self.saves += 1


def same_state(a: Acceptor, b: Acceptor) -> bool:
    return (a.epoch, a.promised, a.accepted) == (b.epoch, b.promised, b.accepted)


# --- acceptor ---------------------------------------------------------------------------

def test_prepare_promises_a_higher_ballot_and_refuses_lower_or_equal():
    cur, disk = base(), Disk()
    acc = Acceptor(None, disk.save)
    assert acc.promised == NO_BALLOT and acc.accepted is None
    first = acc.prepare(cur, 4, (2, "a"))
    assert first == Promise(True, (2, "a"), None)
    for ballot in [(1, "z"), (2, "a"), (2, "0"), (0, "")]:
        refused = acc.prepare(cur, 4, ballot)
        assert not refused.ok and refused.promised == (2, "a") and refused.current is None
    higher = acc.prepare(cur, 4, (2, "b"))  # same round, higher address
    assert higher.ok and acc.promised == (2, "b")


def test_accept_refuses_below_the_promise_and_takes_equal_or_higher():
    cur, disk = base(), Disk()
    acc = Acceptor(None, disk.save)
    acc.prepare(cur, 4, (5, "b"))
    refused = acc.accept(cur, (5, "a"), value(0))
    assert not refused.ok and refused.promised == (5, "b") and acc.accepted is None
    assert acc.accept(cur, (5, "b"), value(1)) == Promise(True, (5, "b"))
    assert acc.accepted == ((5, "b"), value(1))
    # an accept above the promise is taken without a prepare, and raises the promise
    assert acc.accept(cur, (6, "a"), value(2)).ok
    assert acc.promised == (6, "a") and acc.accepted == ((6, "a"), value(2))
    # a prepare then reports the accepted value
    promise = acc.prepare(cur, 4, (7, "a"))
    assert promise.ok and promise.accepted == ((6, "a"), value(2))


def test_acceptor_votes_only_on_the_epoch_after_its_committed_one():
    cur, disk = base(epoch=3), Disk()
    acc = Acceptor(None, disk.save)
    for epoch in (3, 2, 0):  # already chosen: the refusal carries the committed topology
        refused = acc.prepare(cur, epoch, (9, "a"))
        assert not refused.ok and refused.current == cur
    refused = acc.accept(cur, (9, "a"), cur)
    assert not refused.ok and refused.current == cur
    for epoch in (5, 9):  # this node is behind: no current to offer
        refused = acc.prepare(cur, epoch, (9, "a"))
        assert not refused.ok and refused.current is None
    later = base(epoch=5).join("x", 50)  # epoch 6
    assert not acc.accept(cur, (9, "a"), later).ok
    assert disk.saves == 0 and acc.promised == NO_BALLOT and acc.accepted is None
    assert acc.prepare(cur, 4, (1, "a")).ok


def test_acceptor_starts_afresh_on_the_next_epoch():
    disk = Disk()
    acc = Acceptor(None, disk.save)
    acc.prepare(base(epoch=3), 4, (8, "a"))
    acc.accept(base(epoch=3), (8, "a"), value(0))
    committed = value(0)  # epoch 4 chosen and committed
    promise = acc.prepare(committed, 5, (1, "b"))  # a lower ballot is fine for a new epoch
    assert promise.ok and promise.accepted is None
    assert acc.epoch == 5 and acc.promised == (1, "b")


def test_acceptor_persists_before_answering():
    """Every answer that changes state is preceded by a save of exactly that state."""
    cur, disk = base(), Disk()
    acc = Acceptor(None, disk.save)
    steps = [lambda: acc.prepare(cur, 4, (3, "a")),
             lambda: acc.accept(cur, (3, "a"), value(0)),
             lambda: acc.prepare(cur, 4, (4, "b")),
             lambda: acc.accept(cur, (4, "b"), value(0))]
    for step in steps:
        saves = disk.saves
        assert step().ok
        assert disk.saves == saves + 1
        restored = Acceptor(disk.stored, Disk().save)
        assert same_state(restored, acc)
    assert restored.accepted == ((4, "b"), value(0)) and restored.epoch == 4


@pytest.mark.parametrize("phase", ["prepare", "accept"])
def test_no_answer_when_the_save_fails(phase):
    cur = base()

    def broken(_: bytes) -> None:
        raise OSError("disk full")

    acc = Acceptor(None, broken)
    with pytest.raises(OSError):
        if phase == "prepare":
            acc.prepare(cur, 4, (1, "a"))
        else:
            acc.accept(cur, (1, "a"), value(0))


def test_a_restored_acceptor_keeps_its_promise_and_accepted_value():
    cur, disk = base(), Disk()
    acc = Acceptor(None, disk.save)
    acc.prepare(cur, 4, (3, "a"))
    acc.accept(cur, (3, "a"), value(1))
    acc.prepare(cur, 4, (5, "c"))
    again = Acceptor(disk.stored, disk.save)
    assert again.epoch == 4 and again.promised == (5, "c")
    assert not again.prepare(cur, 4, (4, "z")).ok
    assert not again.accept(cur, (4, "z"), value(2)).ok
    promise = again.prepare(cur, 4, (6, "a"))
    assert promise.ok and promise.accepted == ((3, "a"), value(1))
    assert Acceptor(b"", disk.save).promised == NO_BALLOT  # nothing stored yet


def test_promise_and_ballot_wire():
    full = Promise(True, (3, "a"), ((2, "b"), value(0)), base())
    for promise in (full, Promise(False, (0, "")), Promise(True, (1, "x"), None, None)):
        body = msgpack.unpackb(msgpack.packb(promise.to_wire()))
        assert Promise.from_wire(body) == promise
    for bad in (None, [], {"ok": 1, "promised": [1, "a"]}, {"ok": True},
                {"ok": True, "promised": [-1, "a"]}, {"ok": True, "promised": [1, 2]},
                {"ok": True, "promised": [True, "a"]}, {"ok": True, "promised": [1, "a", 2]},
                {"ok": True, "promised": [1, "a"], "current": [1, [["b", 1, "x"]]]}):
        with pytest.raises(TopologyError):
            Promise.from_wire(bad)
    assert ballot_from_wire((4, "a")) == (4, "a")


# --- one proposal -----------------------------------------------------------------------

class Recorder:
    """A proposal's send and done callbacks, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.done: list[tuple[Topology | None, Ballot, str]] = []

    def send(self, phase: str, voter: str) -> None:
        self.sent.append((phase, voter))

    def finish(self, chosen: Topology | None, highest: Ballot, why: str) -> None:
        self.done.append((chosen, highest, why))


def proposal(voters: list[str], ballot: Ballot = (1, "p"), own: Topology | None = None
             ) -> tuple[Proposal, Recorder]:
    rec = Recorder()
    p = Proposal(voters, ballot, own or value(0), rec.send, rec.finish)
    p.start()
    return p, rec


V3 = ["v0", "v1", "v2"]
V5 = ["v0", "v1", "v2", "v3", "v4"]


def test_proposal_chooses_its_value_once_a_majority_accepts():
    p, rec = proposal(V3)
    assert rec.sent == [("prepare", v) for v in V3] and p.majority == 2
    p.answer("prepare", "v0", Promise(True, (1, "p")))
    assert p.phase == "prepare"
    p.answer("prepare", "v2", Promise(True, (1, "p")))
    assert p.phase == "accept"
    assert rec.sent[3:] == [("accept", v) for v in V3]
    p.answer("accept", "v1", Promise(True, (1, "p")))
    assert rec.done == []
    p.answer("accept", "v0", Promise(True, (1, "p")))
    assert rec.done == [(value(0), (1, "p"), "")] and p.finished
    p.answer("accept", "v2", Promise(True, (1, "p")))
    p.failed("accept", "v2", "late")
    assert len(rec.done) == 1


def test_proposal_completes_the_highest_ballot_value_accepted_before():
    p, rec = proposal(V5, ballot=(9, "p"), own=value(0))
    p.answer("prepare", "v0", Promise(True, (9, "p"), ((3, "a"), value(1))))
    p.answer("prepare", "v1", Promise(True, (9, "p")))
    p.answer("prepare", "v2", Promise(True, (9, "p"), ((5, "b"), value(2))))
    assert p.phase == "accept" and p.value == value(2)
    for v in ("v3", "v4", "v0"):
        p.answer("accept", v, Promise(True, (9, "p")))
    assert rec.done == [(value(2), (9, "p"), "")]


def test_proposal_gives_up_with_the_highest_ballot_when_a_majority_refuses():
    p, rec = proposal(V3, ballot=(2, "p"))
    p.answer("prepare", "v0", Promise(False, (7, "z")))
    assert rec.done == []
    p.answer("prepare", "v1", Promise(False, (4, "q")))
    assert len(rec.done) == 1
    chosen, highest, why = rec.done[0]
    assert chosen is None and highest == (7, "z")
    assert "1 of 3 voters could still agree, 2 needed" in why
    assert "v0: promised a higher ballot" in why
    p.answer("prepare", "v2", Promise(True, (2, "p")))
    assert len(rec.done) == 1 and p.phase == "prepare"


def test_proposal_refused_in_the_accept_phase():
    p, rec = proposal(V3, ballot=(2, "p"))
    p.answer("prepare", "v0", Promise(True, (2, "p")))
    p.answer("prepare", "v1", Promise(True, (2, "p")))
    p.answer("accept", "v0", Promise(False, (3, "x")))
    p.failed("accept", "v1", "timed out")
    assert len(rec.done) == 1
    chosen, highest, why = rec.done[0]
    assert chosen is None and highest == (3, "x") and "v1: timed out" in why


def test_proposal_with_a_dead_minority_still_chooses():
    p, rec = proposal(V5, ballot=(1, "p"))
    p.failed("prepare", "v3", "connection refused")
    p.failed("prepare", "v4", "connection refused")
    for v in ("v0", "v1", "v2"):
        p.answer("prepare", v, Promise(True, (1, "p")))
    assert p.phase == "accept"
    p.failed("accept", "v3", "connection refused")
    p.failed("accept", "v4", "connection refused")
    for v in ("v2", "v0"):
        p.answer("accept", v, Promise(True, (1, "p")))
    assert rec.done == []
    p.answer("accept", "v1", Promise(True, (1, "p")))
    assert rec.done == [(value(0), (1, "p"), "")]


def test_proposal_with_a_dead_majority_gives_up():
    p, rec = proposal(V3)
    p.failed("prepare", "v1", "connection refused")
    p.failed("prepare", "v2", "connection refused")
    assert rec.done and rec.done[0][0] is None and rec.done[0][1] == (1, "p")


def test_proposal_stops_when_the_epoch_is_already_chosen():
    p, rec = proposal(V3)
    p.answer("prepare", "v0", Promise(False, (0, ""), current=value(5)))
    assert len(rec.done) == 1
    chosen, _, why = rec.done[0]
    assert chosen is None and "epoch 4 is already chosen" in why


def test_proposal_behind_voter_is_reported_as_such():
    p, rec = proposal(V3, ballot=(3, "p"))
    p.answer("prepare", "v0", Promise(False, (1, "x")))
    p.answer("prepare", "v1", Promise(False, (1, "x")))
    assert rec.done[0][0] is None and "cannot vote on this epoch yet" in rec.done[0][2]
    assert rec.done[0][1] == (3, "p")  # its own ballot was the highest seen


def test_proposal_ignores_duplicate_stale_and_unknown_answers():
    p, rec = proposal(V3)
    p.answer("prepare", "v0", Promise(True, (1, "p")))
    p.answer("prepare", "v0", Promise(True, (1, "p")))  # a duplicate is one vote
    p.failed("prepare", "v0", "timed out")  # and a voter that answered cannot then fail
    p.answer("accept", "v1", Promise(True, (1, "p")))  # not the phase it is in
    assert p.phase == "prepare" and rec.done == []
    p.answer("prepare", "v1", Promise(True, (1, "p")))
    assert p.phase == "accept"
    p.answer("prepare", "v2", Promise(True, (1, "p"), ((0, "z"), value(3))))  # late prepare
    assert p.value == value(0)
    p.answer("accept", "v2", Promise(True, (1, "p")))
    p.answer("accept", "v2", Promise(True, (1, "p")))
    assert rec.done == []


# --- a simulated network ------------------------------------------------------------------

@dataclass
class Proposer:
    address: str
    own: Topology
    crash_after: int | None  # stops after sending this many accepts
    attempts_max: int
    round: int = 0
    attempts: int = 0
    accepts_sent: int = 0
    crashed: bool = False
    proposal: Proposal | None = None
    results: list[tuple[Ballot, Topology | None, str]] = field(default_factory=list)


class Network:
    """N acceptors and some proposers; every message goes through one queue, delivered in an
    order, lost or duplicated as ``rng`` decides. A lost message times out at the sender."""

    def __init__(self, rng: random.Random, voters: int, proposers: int, loss: float,
                 dup: float, crash: float, restart: float, commit: float) -> None:
        self.rng = rng
        self.loss, self.dup, self.restart, self.commit = loss, dup, restart, commit
        self.current = base(voters)
        self.voters = self.current.voters()
        self.majority = len(self.voters) // 2 + 1
        self.disks = {v: Disk() for v in self.voters}
        self.acceptors = {v: Acceptor(None, self.disks[v].save) for v in self.voters}
        self.committed = {v: self.current for v in self.voters}
        self.proposers = [
            Proposer(f"p{i}", value(i, self.current),
                     rng.randrange(len(self.voters) + 1) if rng.random() < crash else None,
                     attempts_max=rng.randint(1, 5))
            for i in range(proposers)]
        self.queue: list[tuple] = [("start", p) for p in self.proposers]
        self.accepted: list[tuple[str, Ballot, Topology]] = []  # every accept answered ok

    def run(self, steps_max: int = 20_000) -> None:
        steps = 0
        while self.queue and steps < steps_max:
            steps += 1
            if self.rng.random() < self.restart:  # an acceptor restarts from its disk
                v = self.rng.choice(self.voters)
                self.acceptors[v] = Acceptor(self.disks[v].stored, self.disks[v].save)
            msg = self.queue.pop(self.rng.randrange(len(self.queue)))
            if msg[0] != "start" and self.rng.random() < self.dup:
                self.queue.append(msg)
            self.deliver(msg)
        assert not self.queue, "the simulation did not settle"

    def post(self, msg: tuple, proposer: Proposer, proposal: Proposal, phase: str, voter: str
             ) -> None:
        if self.rng.random() < self.loss:
            self.queue.append(("timeout", proposer, proposal, phase, voter))
        else:
            self.queue.append(msg)

    def begin(self, p: Proposer) -> None:
        p.attempts += 1
        p.round += 1
        ballot = (p.round, p.address)

        def send(phase: str, voter: str) -> None:
            if p.crashed:
                return
            if phase == "accept" and p.crash_after is not None:
                if p.accepts_sent >= p.crash_after:
                    p.crashed = True
                    return
                p.accepts_sent += 1
            self.post(("ask", p, proposal, phase, voter, ballot, proposal.value),
                      p, proposal, phase, voter)

        def done(chosen: Topology | None, highest: Ballot, why: str) -> None:
            p.results.append((ballot, chosen, why))
            p.proposal = None
            p.round = max(p.round, highest[0])
            if chosen is not None:
                if self.rng.random() < self.commit:
                    for v in self.voters:
                        if self.rng.random() >= self.loss:
                            self.queue.append(("commit", v, chosen))
            elif "already chosen" not in why and p.attempts < p.attempts_max:
                self.queue.append(("start", p))

        proposal = Proposal(self.voters, ballot, p.own, send, done)
        p.proposal = proposal
        proposal.start()

    def deliver(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "start":
            if not msg[1].crashed:
                self.begin(msg[1])
        elif kind == "commit":
            _, v, chosen = msg
            if chosen.epoch > self.committed[v].epoch:
                self.committed[v] = chosen
        elif kind == "ask":
            _, p, proposal, phase, voter, ballot, val = msg
            acc, cur = self.acceptors[voter], self.committed[voter]
            if phase == "prepare":
                promise = acc.prepare(cur, val.epoch, ballot)
            else:
                promise = acc.accept(cur, ballot, val)
                if promise.ok:
                    self.accepted.append((voter, ballot, val))
            # answers cross the wire as msgpack
            body = msgpack.unpackb(msgpack.packb(promise.to_wire()))
            self.post(("answer", p, proposal, phase, voter, body), p, proposal, phase, voter)
        elif kind == "answer":
            _, p, proposal, phase, voter, body = msg
            if not p.crashed and p.proposal is proposal:
                proposal.answer(phase, voter, Promise.from_wire(body))
        elif kind == "timeout":
            _, p, proposal, phase, voter = msg
            if not p.crashed and p.proposal is proposal:
                proposal.failed(phase, voter, "timed out")

    # -- what must hold ------------------------------------------------------------------

    def chosen_by_acceptors(self) -> dict[Ballot, Topology]:
        """Ballots a majority of acceptors accepted at, with the value."""
        voters: dict[Ballot, set[str]] = {}
        values: dict[Ballot, set[Topology]] = {}
        for voter, ballot, val in self.accepted:
            voters.setdefault(ballot, set()).add(voter)
            values.setdefault(ballot, set()).add(val)
        for ballot, vals in values.items():
            assert len(vals) == 1, f"two values accepted at ballot {ballot}"
        return {b: next(iter(values[b])) for b, vs in voters.items() if len(vs) >= self.majority}

    def check_safety(self) -> Topology | None:
        """At most one value is chosen for the epoch, and whatever completes chooses it."""
        by_acceptors = self.chosen_by_acceptors()
        reported = [(ballot, chosen) for p in self.proposers for ballot, chosen, _ in p.results
                    if chosen is not None]
        if by_acceptors:
            first = min(by_acceptors)
            chosen = by_acceptors[first]
            # once a majority accepted a value, every later accept carries that value
            for voter, ballot, val in self.accepted:
                if ballot >= first:
                    assert val == chosen, (voter, ballot, val.digest(), chosen.digest())
        else:
            chosen = None
            assert not reported, "a proposal completed without a majority accepting"
        for ballot, val in reported:
            assert ballot in by_acceptors
            assert val == chosen, "two values chosen for one epoch"
        assert len({v.digest() for v in by_acceptors.values()}) <= 1
        for cur in self.committed.values():
            assert cur == self.current or cur == chosen
        return chosen


def simulate(seed: int, voters: int, proposers: int, loss: float, dup: float, crash: float,
             restart: float, commit: float) -> Network:
    net = Network(random.Random(seed), voters, proposers, loss, dup, crash, restart, commit)
    net.run()
    net.check_safety()
    return net


@given(seed=st.integers(0, 2 ** 32), voters=st.sampled_from([1, 2, 3, 4, 5]),
       proposers=st.integers(1, 4), loss=st.sampled_from([0.0, 0.1, 0.3]),
       dup=st.sampled_from([0.0, 0.2]), crash=st.sampled_from([0.0, 0.5]),
       restart=st.sampled_from([0.0, 0.05]), commit=st.sampled_from([0.0, 1.0]))
@settings(max_examples=150, deadline=None, derandomize=True)
def test_simulated_network_is_safe(seed, voters, proposers, loss, dup, crash, restart, commit):
    """Whatever the interleaving, loss, duplication and crashes: one value per epoch."""
    simulate(seed, voters, proposers, loss, dup, crash, restart, commit)


def test_seeded_runs_are_safe_and_cover_the_interesting_cases():
    """Over many seeded runs: always safe, and the runs do reach the cases that matter (a
    value chosen, a proposer completing someone else's value, a proposer crashing after a
    majority accepted, proposals that give up)."""
    chose = adopted = orphaned = gave_up = 0
    for seed in range(300):
        rng = random.Random(seed)
        net = simulate(seed, rng.choice([3, 5]), rng.randint(2, 4), rng.choice([0.0, 0.2]),
                       rng.choice([0.0, 0.2]), 0.5, rng.choice([0.0, 0.05]), 0.0)
        chosen = net.check_safety()
        results = [(p, c) for p in net.proposers for _, c, _ in p.results]
        chose += chosen is not None
        adopted += any(c is not None and c != p.own for p, c in results)
        gave_up += any(c is None for _, c in results)
        # chosen by the acceptors, but not by any proposal that reported
        orphaned += chosen is not None and all(c is None for _, c in results)
    assert chose > 150 and adopted > 20 and gave_up > 20 and orphaned > 0, \
        (chose, adopted, gave_up, orphaned)


def test_without_faults_a_lone_proposer_chooses_its_value():
    for seed in range(20):
        net = simulate(seed, 5, 1, 0.0, 0.0, 0.0, 0.0, 0.0)
        p = net.proposers[0]
        assert [(b, c) for b, c, _ in p.results] == [((1, "p0"), p.own)]


def test_a_later_proposer_completes_an_accepted_value_of_a_crashed_one():
    """p0 has a majority accept its value and crashes before hearing so; p1, wanting a
    different change, completes p0's value instead of its own."""
    cur = base(5)
    disks = {v: Disk() for v in cur.voters()}
    acceptors = {v: Acceptor(None, disks[v].save) for v in cur.voters()}
    first, second = value(0, cur), value(1, cur)
    for v in cur.voters():
        assert acceptors[v].prepare(cur, 4, (1, "p0")).ok
    for v in ("v0", "v1", "v2"):  # a majority accepts; p0 crashes before the rest
        assert acceptors[v].accept(cur, (1, "p0"), first).ok
    # v1 restarts from its disk before p1 comes along
    acceptors["v1"] = Acceptor(disks["v1"].stored, disks["v1"].save)

    rec = Recorder()
    p1 = Proposal(cur.voters(), (2, "p1"), second, rec.send, rec.finish)
    p1.start()
    # only v1, v3 and v4 answer the prepare: one of them (v1) accepted p0's value
    for v in ("v3", "v4", "v1"):
        p1.answer("prepare", v, acceptors[v].prepare(cur, 4, (2, "p1")))
    assert p1.phase == "accept" and p1.value == first
    for v in ("v4", "v3", "v0"):
        p1.answer("accept", v, acceptors[v].accept(cur, (2, "p1"), p1.value))
    assert rec.done == [(first, (2, "p1"), "")]
