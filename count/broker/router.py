"""The node process's ROUTER socket for its HTTP workers: drain requests, send replies.

Each turn of the node process drains what is queued (bounded by requests and points) so
that every insert in the turn shares one commit, and drops requests whose deadline has
passed (their worker has already answered 503). Replies may be sent later than the turn that
received the request (a replicated write waits for its peers).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from count.broker.protocol import ProtocolError, Request, pack_reply, unpack_request

log = logging.getLogger("count.broker")

GROUP_REQUESTS_MAX = 256
# A group stops growing once its inserts hold this many points (bounds one commit's size).
GROUP_POINTS_MAX = 1_000_000
RECEIVE_HWM_MESSAGES = 4096


class Router:
    def __init__(self, context: zmq.Context[Any], endpoint: str, message_bytes_max: int) -> None:
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM_MESSAGES)
        self.sock.setsockopt(zmq.MAXMSGSIZE, message_bytes_max)
        self.sock.bind(endpoint)
        self.dropped_late = 0
        self.rejected = 0

    def drain(self) -> list[tuple[bytes, Request]]:
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

    def reply(self, identity: bytes, req_id: int, status: int, body: object) -> None:
        try:
            self.sock.send_multipart([identity, pack_reply(req_id, status, body)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("Could not answer an HTTP worker: %s", exc)

    def close(self) -> None:
        self.sock.close()
