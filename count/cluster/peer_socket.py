"""The transport of one ``PeerLink``: a ZeroMQ REQ socket to the peer's replica port.

REQ allows one message in flight and no second send before its reply, which is what the
link's Lazy Pirate wants: a retry, or a new message after the link gave up on one, goes out
on a fresh socket, so a late reply to an abandoned message can never arrive on it.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from count.cluster.tcp import configure

log = logging.getLogger("count.cluster")


class PeerSocket:
    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.context = context
        self.endpoint = endpoint
        self.sock: zmq.Socket[bytes] | None = None
        self.awaiting = False  # a request was sent and its reply not yet read

    def send(self, frame: bytes) -> None:
        if self.awaiting:
            self._reset()
        if self.sock is None:
            self.sock = configure(self.context.socket(zmq.REQ))
            self.sock.connect(self.endpoint)
        try:
            self.sock.send(frame, zmq.NOBLOCK, copy=False)
            self.awaiting = True
        except zmq.ZMQError as exc:
            log.debug("Send to %s failed: %s", self.endpoint, exc)
            self._reset()  # the link retries when its deadline passes

    def receive(self) -> bytes | None:
        """The reply, if one is waiting."""
        if self.sock is None or not self.awaiting:
            return None
        try:
            frame = self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        self.awaiting = False
        return frame

    def _reset(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        self.awaiting = False

    def close(self) -> None:
        self._reset()
