"""The way to one peer: a REQ socket with one message in flight (the ZeroMQ guide's Lazy Pirate).

Operations for a peer queue up while a message is in flight and leave together in the next
one, so a busy coordinator sends one message per peer per round trip however many writes it
is coordinating (coalescing). A message that gets no reply within its deadline is sent again
on a fresh socket, a bounded number of times; then each of its operations fails with 503.
Replica writes carry their write version, so a message that arrives twice changes nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from count.cluster.tcp import configure
from count.cluster.wire import OPS_PER_MESSAGE_MAX, WireError, pack_ops, unpack_results

log = logging.getLogger("count.cluster")

Callback = Callable[[int, Any], None]
# Operations waiting for one peer; past this a new one fails at once (the peer is too slow).
QUEUE_OPS_MAX = 16_384
# A message stops taking operations once their points reach this (bounds one message).
MESSAGE_POINTS_MAX = 1_000_000


def _points(args: dict[str, Any]) -> int:
    stamps = args.get("ts")
    return len(stamps) // 8 if isinstance(stamps, bytes) else 0


class PeerChannel:
    def __init__(self, context: zmq.Context, sender: str, address: str, endpoint: str,
                 timeout_ms: int, retries: int) -> None:
        self.context = context
        self.sender = sender
        self.address = address
        self.endpoint = endpoint
        self.timeout_s = timeout_ms / 1000
        self.retries = retries
        self.queue: deque[tuple[str, dict[str, Any], Callback]] = deque()
        self.inflight: list[tuple[str, dict[str, Any], Callback]] = []
        self._frame = b""
        self._sent_at = 0.0
        self._attempts = 0
        self.sock: zmq.Socket | None = None
        self.messages = 0
        self.failures = 0
        self.timeouts = 0

    def _open(self) -> zmq.Socket:
        if self.sock is None:
            self.sock = configure(self.context.socket(zmq.REQ))
            self.sock.connect(self.endpoint)
        return self.sock

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def submit(self, op: str, args: dict[str, Any], callback: Callback) -> None:
        """Queue an operation; its callback runs exactly once, with the peer's result or 503."""
        if len(self.queue) >= QUEUE_OPS_MAX:
            _call(callback, 503, f"node {self.address} has {QUEUE_OPS_MAX} operations queued")
            return
        self.queue.append((op, args, callback))

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.queue)

    def pump(self, now_s: float) -> None:
        """Send the next message if none is in flight; retry or fail one that timed out."""
        if self.inflight and now_s - self._sent_at >= self.timeout_s:
            self.timeouts += 1
            self._reset()
            if self._attempts > self.retries:
                # The peer is gone or stuck: what is queued behind this message would only
                # wait out the same deadlines, so it fails now too.
                self.fail_all(f"node {self.address} did not answer {self._attempts} "
                              f"attempts of {self.timeout_s * 1000:.0f} ms")
            else:
                self._send(now_s)
        if not self.inflight and self.queue:
            points = 0
            while self.queue and len(self.inflight) < OPS_PER_MESSAGE_MAX and (
                    points < MESSAGE_POINTS_MAX or not self.inflight):
                item = self.queue.popleft()
                points += _points(item[1])
                self.inflight.append(item)
            self._frame = pack_ops(self.sender, [(op, args) for op, args, _ in self.inflight])
            self._attempts = 0
            self._send(now_s)

    def _send(self, now_s: float) -> None:
        self._attempts += 1
        self._sent_at = now_s
        try:
            self._open().send(self._frame, zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            self._reset()  # retried by pump when the deadline passes
        self.messages += 1

    def next_deadline_s(self) -> float | None:
        return self._sent_at + self.timeout_s if self.inflight else None

    def receive(self) -> None:
        """Take the reply of the message in flight and run its operations' callbacks."""
        assert self.sock is not None
        try:
            frame = self.sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        inflight, self.inflight = self.inflight, []
        try:
            results = unpack_results(frame.buffer, len(inflight))
        except WireError as exc:
            self._reset()
            log.error("Replication to node %s failed: %s", self.address, exc)
            for _, _, callback in inflight:
                _call(callback, 503, f"bad reply from node {self.address}: {exc}")
            return
        for (_, _, callback), (status, body) in zip(inflight, results, strict=True):
            _call(callback, status, body)

    def _fail_inflight(self, reason: str) -> None:
        self.failures += 1
        inflight, self.inflight = self.inflight, []
        for _, _, callback in inflight:
            _call(callback, 503, reason)

    def fail_all(self, reason: str) -> None:
        """The peer is down: fail everything queued or in flight now, not at the deadline."""
        self._reset()
        queued = list(self.queue)
        self.queue.clear()
        if self.inflight:
            self._fail_inflight(reason)
        for _, _, callback in queued:
            _call(callback, 503, reason)

    def close(self) -> None:
        self._reset()


def _call(callback: Callback, status: int, body: Any) -> None:
    try:
        callback(status, body)
    except Exception:
        log.exception("A peer reply callback failed")
