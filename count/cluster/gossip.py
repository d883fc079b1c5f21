"""Gossip transport: this node's heartbeat on a PUB socket, every peer's on one SUB socket."""

from __future__ import annotations

import logging
from typing import Any

import zmq

from count.cluster.membership import HEARTBEAT_BYTES_MAX
from count.cluster.tcp import configure

log = logging.getLogger("count.cluster")

# Heartbeats taken per turn (a few per peer; the rest wait).
RECEIVE_PER_TURN_MAX = 1024
LEAVING_LINGER_MS = 500


class Gossip:
    def __init__(self, context: zmq.Context[Any], bind_endpoint: str, peer_endpoints: list[str]) -> None:
        self.pub = configure(context.socket(zmq.PUB))
        self.pub.setsockopt(zmq.SNDHWM, 16)
        self.pub.bind(bind_endpoint)
        self.sub = configure(context.socket(zmq.SUB))
        self.sub.setsockopt(zmq.RCVHWM, 256)
        self.sub.setsockopt(zmq.MAXMSGSIZE, HEARTBEAT_BYTES_MAX)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._connected: set[str] = set()
        self.connect(peer_endpoints)

    def connect(self, peer_endpoints: list[str]) -> None:
        """Listen to exactly these peers (the topology changed)."""
        wanted = set(peer_endpoints)
        for endpoint in sorted(self._connected - wanted):
            self.sub.disconnect(endpoint)
        for endpoint in sorted(wanted - self._connected):
            self.sub.connect(endpoint)
        self._connected = wanted

    def publish(self, frame: bytes) -> None:
        try:
            self.pub.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("Heartbeat not published: %s", exc)

    def receive(self) -> list[bytes]:
        frames: list[bytes] = []
        while len(frames) < RECEIVE_PER_TURN_MAX:
            try:
                frames.append(self.sub.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        return frames

    def close(self) -> None:
        self.pub.close(linger=LEAVING_LINGER_MS)  # let the "leaving" heartbeat go out
        self.sub.close(linger=0)
