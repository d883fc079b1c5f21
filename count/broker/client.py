"""The HTTP worker's side of the broker: one DEALER socket per thread to the node process.

Each thread has at most one request in flight, so a worker's requests in flight are bounded
by its thread count. A request that gets no reply by its deadline raises Unavailable and the
socket is closed and reopened (the ZeroMQ guide's Lazy Pirate), so a late reply can never be
taken for the answer to a later request. Sockets are created lazily in the process that uses
them, never before gunicorn forks.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import zmq

from count.broker.protocol import ProtocolError, pack_request, unpack_reply
from count.errors import Unavailable, error_for_status
from count.messages import Message

SEND_HWM_MESSAGES = 16


class NodeClient:
    def __init__(self, endpoint: str, timeout_ms: int) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._context: zmq.Context[Any] | None = None
        self._context_pid = 0
        self._lock = threading.Lock()

    def _ctx(self) -> zmq.Context[Any]:
        with self._lock:
            if self._context is None or self._context_pid != os.getpid():
                self._context = zmq.Context()
                self._context_pid = os.getpid()
            return self._context

    def _socket(self) -> zmq.Socket[bytes]:
        sock = getattr(self._local, "sock", None)
        if sock is None or getattr(self._local, "pid", 0) != os.getpid():
            sock = self._ctx().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM_MESSAGES)
            sock.connect(self.endpoint)
            self._local.sock = sock
            self._local.pid = os.getpid()
        return sock  # type: ignore[no-any-return]  # thread-local attributes are untyped

    def _reset(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
        self._local.sock = None

    def call(self, msg: Message, timeout_ms: int | None = None) -> Any:
        """Send one operation and wait for its reply; raise a CountError for error replies."""
        budget_ms = timeout_ms or self.timeout_ms
        deadline = time.monotonic() + budget_ms / 1000
        req_id = next(self._ids)
        sock = self._socket()
        try:
            sock.send(pack_request(req_id, int(time.time() * 1000) + budget_ms, msg.TAG,
                                   msg.to_wire()), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._reset()
            raise Unavailable("the node process is not accepting requests (queue full)") from None
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset()
                raise Unavailable(
                    f"the node process did not answer within {budget_ms} ms "
                    "(it is down or overloaded); retry later")
            try:
                reply = unpack_reply(sock.recv(copy=False).bytes)
            except ProtocolError as exc:
                self._reset()
                raise Unavailable(f"bad reply from the node process: {exc}") from None
            if reply.req_id != req_id:
                continue  # a reply to an earlier request of this socket; not ours
            if reply.status >= 300:
                raise error_for_status(reply.status, str(reply.body))
            return reply.body
