"""The node process's ROUTER loop: receive, group, hand to the coordinator, reply.

Each turn drains what is queued (bounded by requests and points) so that every insert in the
turn shares one commit, drops requests whose deadline has passed (their worker has already
answered 503), and between turns runs bounded background steps. Signal handlers only set a
flag; the loop notices it, answers what is queued, and returns.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import zmq

from count.broker.protocol import ProtocolError, Request, pack_reply, unpack_request

log = logging.getLogger("count.broker")

GROUP_REQUESTS_MAX = 256
# A group stops growing once its inserts hold this many points (bounds one commit's size).
GROUP_POINTS_MAX = 1_000_000
RECEIVE_HWM_MESSAGES = 4096
IDLE_AFTER_S = 1.0
POLL_MAX_MS = 200


class Handler(Protocol):
    def handle(self, requests: list[Request]) -> list[tuple[int, object]]: ...
    def maintain(self, idle: bool) -> bool: ...
    def next_wakeup_s(self) -> float | None: ...


class Router:
    def __init__(self, endpoint: str, handler: Handler, message_bytes_max: int) -> None:
        self.handler = handler
        self.stopping = False
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM_MESSAGES)
        self.sock.setsockopt(zmq.MAXMSGSIZE, message_bytes_max)
        self.sock.bind(endpoint)
        self.dropped_late = 0
        self.rejected = 0

    def _drain(self) -> list[tuple[bytes, Request]]:
        batch: list[tuple[bytes, Request]] = []
        now_ms = int(time.time() * 1000)
        points = 0
        while len(batch) < GROUP_REQUESTS_MAX and points < GROUP_POINTS_MAX:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.rejected += 1
                continue
            identity, payload = frames[0].bytes, frames[1].buffer
            try:
                req = unpack_request(payload)
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("Rejected a malformed broker message: %s", exc)
                continue
            if req.deadline_ms < now_ms:
                self.dropped_late += 1
                continue
            batch.append((identity, req))
            stamps = req.args.get("ts")
            if isinstance(stamps, bytes):
                points += len(stamps) // 8
        return batch

    def run(self) -> None:
        last_request = time.monotonic()
        more_work = False
        while not self.stopping:
            timeout_ms = 0 if more_work else POLL_MAX_MS
            wake = self.handler.next_wakeup_s()
            if wake is not None:
                timeout_ms = min(timeout_ms, int(wake * 1000))
            if self.sock.poll(timeout_ms, zmq.POLLIN):
                self.serve_queued()
                last_request = time.monotonic()
            idle = time.monotonic() - last_request >= IDLE_AFTER_S
            more_work = self.handler.maintain(idle)
        self.serve_queued()

    def serve_queued(self) -> None:
        batch = self._drain()
        if not batch:
            return
        results = self.handler.handle([req for _, req in batch])
        for (identity, req), (status, body) in zip(batch, results, strict=True):
            self.sock.send_multipart([identity, pack_reply(req.req_id, status, body)])

    def close(self) -> None:
        self.sock.close()
        self.context.term()
