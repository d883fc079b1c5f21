"""The replica port: a ROUTER that other nodes' REQ sockets send messages to."""

from __future__ import annotations

import logging
from typing import Any

import zmq

from count.cluster.tcp import configure

log = logging.getLogger("count.cluster")

# Messages taken per turn; the rest wait for the next turn (bounds one turn's work).
MESSAGES_PER_TURN_MAX = 64


class PeerServer:
    def __init__(self, context: zmq.Context[Any], endpoint: str, message_bytes_max: int) -> None:
        self.sock = configure(context.socket(zmq.ROUTER))
        self.sock.setsockopt(zmq.MAXMSGSIZE, message_bytes_max)
        self.sock.bind(endpoint)
        self.rejected = 0

    def drain(self) -> list[tuple[bytes, bytes]]:
        """Queued messages: (return envelope, frame)."""
        messages: list[tuple[bytes, bytes]] = []
        while len(messages) < MESSAGES_PER_TURN_MAX:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 3 or frames[1]:
                self.rejected += 1
                continue
            messages.append((frames[0], frames[2]))
        return messages

    def reply(self, identity: bytes, frame: bytes) -> None:
        try:
            self.sock.send_multipart([identity, b"", frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("Could not answer a peer: %s", exc)

    def close(self) -> None:
        self.sock.close(linger=0)
