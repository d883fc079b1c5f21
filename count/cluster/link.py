"""The way to one peer, as a state machine: one message in flight (the ZeroMQ guide's Lazy
Pirate), everything else queued and coalesced into the next message.

Operations for a peer queue up while a message is in flight and leave together in the next
one, so a busy coordinator sends one message per peer per round trip however many writes it
is coordinating. A message that gets no reply within its deadline is sent again (the
transport opens a fresh socket for it), a bounded number of times; then each of its
operations, and everything queued behind it, fails with 503. Replica writes carry their
write versions, so a message that arrives twice changes nothing.

No I/O: ``poll`` returns the frame to send, ``receive`` takes the reply's frame, and the
caller passes the time in.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from count.cluster.wire import OPS_PER_MESSAGE_MAX, WireError, pack_request, unpack_reply
from count.failsafe import survive
from count.messages import Message, ReplicaWrite, Reply

log = logging.getLogger("count.cluster")

# Operations waiting for one peer; past this a new one fails at once (the peer is too slow).
QUEUE_OPS_MAX = 16_384
# A message stops taking operations once their points reach this (bounds one message).
MESSAGE_POINTS_MAX = 1_000_000


def _points(op: Message) -> int:
    return op.points() if isinstance(op, ReplicaWrite) else 0


class PeerLink:
    def __init__(self, sender: str, peer: str, timeout_s: float, retries: int) -> None:
        assert timeout_s > 0 and retries >= 0
        self.sender = sender
        self.peer = peer
        self.timeout_s = timeout_s
        self.retries = retries
        self.queue: deque[tuple[Message, Reply]] = deque()
        self.inflight: list[tuple[Message, Reply]] = []
        self._frame = b""
        self._message_id = 0
        self._sent_at_s = 0.0
        self._attempts = 0
        self._due = False  # the frame in flight has to be sent (first attempt or a retry)
        self.messages = 0
        self.failures = 0
        self.timeouts = 0

    def submit(self, op: Message, reply: Reply) -> None:
        """Queue an operation; ``reply`` runs exactly once, with the peer's result or 503."""
        if len(self.queue) >= QUEUE_OPS_MAX:
            _call(reply, 503, f"node {self.peer} has {QUEUE_OPS_MAX} operations queued")
            return
        self.queue.append((op, reply))

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.queue)

    def poll(self, now_s: float) -> tuple[int, bytes] | None:
        """The (message id, frame) to send now, if any: a retry of the message in flight
        whose deadline passed, or the next message of queued operations."""
        if self.inflight and not self._due and now_s - self._sent_at_s >= self.timeout_s:
            self.timeouts += 1
            if self._attempts > self.retries:
                # The peer is gone or stuck: what is queued behind this message would only
                # wait out the same deadlines, so it fails now too.
                self.fail_all(f"node {self.peer} did not answer {self._attempts} "
                              f"attempts of {self.timeout_s * 1000:.0f} ms")
            else:
                self._due = True
        if not self.inflight and self.queue:
            points = 0
            while self.queue and len(self.inflight) < OPS_PER_MESSAGE_MAX and (
                    points < MESSAGE_POINTS_MAX or not self.inflight):
                item = self.queue.popleft()
                points += _points(item[0])
                self.inflight.append(item)
            self._message_id += 1
            self._frame = pack_request(self.sender, self._message_id,
                                       [op for op, _ in self.inflight])
            self._attempts = 0
            self._due = True
        if not self._due:
            return None
        self._due = False
        self._attempts += 1
        self._sent_at_s = now_s
        self.messages += 1
        return self._message_id, self._frame

    def next_deadline_s(self) -> float | None:
        if self._due and self.inflight:
            return self._sent_at_s
        return self._sent_at_s + self.timeout_s if self.inflight else None

    def receive(self, frame: bytes | memoryview) -> None:
        """The peer's reply: run the callbacks of the message in flight if it answers it
        (a late answer to a message given up on is dropped)."""
        try:
            message_id, results = unpack_reply(frame)
        except WireError as exc:
            self._bad_reply(exc)
            return
        if message_id != self._message_id or not self.inflight:
            return
        if len(results) != len(self.inflight):
            self._bad_reply(WireError("peer reply does not answer every operation"))
            return
        inflight, self.inflight = self.inflight, []
        self._due = False
        for (_, reply), (status, body) in zip(inflight, results, strict=True):
            _call(reply, status, body)

    def _bad_reply(self, exc: WireError) -> None:
        log.error("Replication to node %s failed: %s", self.peer, exc)
        inflight, self.inflight = self.inflight, []
        self._due = False
        for _, reply in inflight:
            _call(reply, 503, f"bad reply from node {self.peer}: {exc}")

    def fail_all(self, reason: str) -> None:
        """The peer is down: fail everything queued or in flight now, not at the deadline."""
        queued = list(self.queue)
        self.queue.clear()
        inflight, self.inflight = self.inflight, []
        self._due = False
        if inflight:
            self.failures += 1
        for _, reply in inflight + queued:
            _call(reply, 503, reason)


def _call(reply: Reply, status: int, body: Any) -> None:
    try:
        reply(status, body)
    except Exception:
        survive(log, "A peer reply callback failed")
