"""Baseline for the single-point insert benchmark in ``scripts/bench_node.py``.

The floor Count's ``POST /insert`` is compared against: a bare Falcon app whose
handler parses the JSON body, makes ONE ZeroMQ DEALER->ROUTER round trip
(msgpack-encoded) to a separate echo process, and answers 201. It has no
storage, no validation and no routing: only the HTTP stack plus one IPC hop.

Two parts, both started (and stopped) by ``bench_node.py``:

* the echo process, a ROUTER that sends back every message at once::

      python scripts/bench_baseline_app.py tcp://127.0.0.1:5555

* the HTTP app, served by gunicorn with 2 sync workers::

      BENCH_ECHO_ENDPOINT=tcp://127.0.0.1:5555 \\
          gunicorn -w 2 -k sync -b 127.0.0.1:8081 \\
          --chdir scripts bench_baseline_app:app

Each gunicorn worker creates its DEALER socket lazily on its first request,
i.e. after the fork.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import falcon
import msgpack
import orjson
import zmq

ECHO_ENDPOINT_ENV = "BENCH_ECHO_ENDPOINT"
ECHO_REPLY_TIMEOUT_MS = 5_000
ECHO_POLL_INTERVAL_MS = 1_000
ECHO_MAX_LIFETIME_S = 3_600.0


class EchoClient:
    """One DEALER socket per process, created on first use (after fork)."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._socket: zmq.Socket | None = None
        self._owner_pid = -1

    def _connected_socket(self) -> zmq.Socket:
        if self._socket is None or self._owner_pid != os.getpid():
            socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVTIMEO, ECHO_REPLY_TIMEOUT_MS)
            socket.connect(self._endpoint)
            self._socket = socket
            self._owner_pid = os.getpid()
        return self._socket

    def round_trip(self, payload: bytes) -> bytes:
        """Send one message and wait for its echo; drop the socket on timeout."""
        socket = self._connected_socket()
        socket.send(payload)
        try:
            return socket.recv()
        except zmq.Again:
            socket.close()
            self._socket = None
            raise


class InsertResource:
    def __init__(self, echo: EchoClient) -> None:
        self._echo = echo

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        points = orjson.loads(req.bounded_stream.read())
        try:
            self._echo.round_trip(msgpack.packb(points))
        except zmq.Again:
            raise falcon.HTTPServiceUnavailable(description="echo timed out") from None
        inserted = len(points) if isinstance(points, list) else 1
        resp.status = falcon.HTTP_201
        resp.data = orjson.dumps({"inserted": inserted})
        resp.content_type = falcon.MEDIA_JSON


def create_app(echo_endpoint: str) -> falcon.App:
    app = falcon.App()
    app.add_route("/insert", InsertResource(EchoClient(echo_endpoint)))
    return app


def run_echo(endpoint: str, max_lifetime_s: float = ECHO_MAX_LIFETIME_S) -> None:
    """ROUTER that replies to every message immediately, for at most max_lifetime_s."""
    socket: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(endpoint)
    deadline = time.monotonic() + max_lifetime_s
    while time.monotonic() < deadline:
        if socket.poll(ECHO_POLL_INTERVAL_MS):
            socket.send_multipart(socket.recv_multipart())
    socket.close()


app = create_app(os.environ.get(ECHO_ENDPOINT_ENV, "tcp://127.0.0.1:5555"))

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ZMQ_ENDPOINT   (runs the echo process)")
    with contextlib.suppress(KeyboardInterrupt):
        run_echo(sys.argv[1])
