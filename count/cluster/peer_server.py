"""The replica port: a ROUTER that other nodes' REQ sockets send operations to."""

from __future__ import annotations

import logging

import zmq

from count.cluster.tcp import configure
from count.cluster.wire import Op, Result, WireError, pack_results, unpack_ops

log = logging.getLogger("count.cluster")

# Messages taken per turn; the rest wait for the next turn (bounds one turn's work).
MESSAGES_PER_TURN_MAX = 64


class PeerServer:
    def __init__(self, context: zmq.Context, endpoint: str, message_bytes_max: int) -> None:
        self.sock = configure(context.socket(zmq.ROUTER))
        self.sock.setsockopt(zmq.MAXMSGSIZE, message_bytes_max)
        self.sock.bind(endpoint)
        self.rejected = 0

    def drain(self) -> list[tuple[bytes, str, list[Op]]]:
        """Queued messages: (return envelope, sender address, operations)."""
        messages: list[tuple[bytes, str, list[Op]]] = []
        while len(messages) < MESSAGES_PER_TURN_MAX:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) != 3 or frames[1].bytes:
                self.rejected += 1
                continue
            identity = frames[0].bytes
            try:
                sender, ops = unpack_ops(frames[2].buffer)
            except WireError as exc:
                self.rejected += 1
                log.warning("Rejected a malformed message from a peer: %s", exc)
                # REQ waits for a reply; answer so the sender is not stuck until its deadline.
                self.sock.send_multipart([identity, b"", pack_results([])])
                continue
            messages.append((identity, sender, ops))
        return messages

    def reply(self, identity: bytes, results: list[Result]) -> None:
        try:
            self.sock.send_multipart([identity, b"", pack_results(results)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("Could not answer a peer: %s", exc)

    def close(self) -> None:
        self.sock.close(linger=0)
