"""The HTTP resources: parse and validate, make one broker call, render the reply."""

from __future__ import annotations

import re

import falcon
import numpy as np
import orjson

from count import messages as op
from count.broker.client import NodeClient
from count.config import Config
from count.errors import BadRequest, CountError, PayloadTooLarge
from count.http.jsonout import render_objects, render_points
from count.http.points import check_series_name, parse_points
from count.storage.writes import TIMESTAMP_MAX_MS

_INTEGER_RE = re.compile(r"-?[0-9]{1,20}")


def _json(resp: falcon.Response, payload: object, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(payload)


def _int_param(req: falcon.Request, name: str, default: int | None, low: int, high: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"query parameter {name!r} is required")
        return default
    if not _INTEGER_RE.fullmatch(raw):
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name!r} must be {low}..{high}")
    return value


def _time_range(req: falcon.Request) -> tuple[int, int]:
    start = _int_param(req, "start", 0, 0, TIMESTAMP_MAX_MS)
    end = _int_param(req, "end", TIMESTAMP_MAX_MS, 0, TIMESTAMP_MAX_MS)
    if end < start:
        raise BadRequest("end must not be before start")
    return start, end


def read_body(req: falcon.Request, body_bytes_max: int) -> bytes:
    """The request body, refusing one over the limit before reading it when it is declared."""
    declared = req.content_length
    if declared is not None and declared > body_bytes_max:
        raise PayloadTooLarge(
            f"body of {declared} bytes is over the limit of {body_bytes_max} (MAX_BODY_BYTES)")
    # With Content-Length read exactly that; without it (chunked) read at most one byte
    # past the limit, so an oversized body is refused all the same.
    body = req.stream.read(declared if declared is not None else body_bytes_max + 1)
    if len(body) > body_bytes_max:
        raise PayloadTooLarge(f"body is over the limit of {body_bytes_max} bytes (MAX_BODY_BYTES)")
    return body


CONSISTENCY_HEADER = "X-Count-Consistency"
# GET /live waits at most this long for the node process (less if REQUEST_TIMEOUT_MS is).
LIVE_TIMEOUT_MS = 1000
# A membership change is answered once a majority has agreed it (several round trips, and
# retries when two proposals meet).
CHANGE_TIMEOUT_MS = 30_000
# POST /cluster/repair waits for a whole anti-entropy round; bounded all the same.
REPAIR_TIMEOUT_MS = 600_000


def _consistency(req: falcon.Request) -> str | None:
    """The request's consistency level (query parameter, else header), if it names one;
    the node checks it."""
    level = req.get_param("consistency") or req.get_header(CONSISTENCY_HEADER)
    return None if level is None else level.strip().lower()


class Base:
    def __init__(self, config: Config, client: NodeClient) -> None:
        self.config = config
        self.client = client

    def _series(self, series: str) -> str:
        return check_series_name(series, self.config.max_series_name_length)


class Insert(Base):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req, self.config.max_body_bytes)
        cols = parse_points(body, self.config.max_batch_points, self.config.max_series_name_length)
        result = self.client.call(op.Insert(cols.names, cols.idx, cols.ts, cols.val,
                                         _consistency(req)))
        _json(resp, result, falcon.HTTP_201)


class RangeQuery(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, series: str) -> None:
        start, end = _time_range(req)
        reply = self.client.call(op.ReadRange(self._series(series), start, end,
                                           _consistency(req)))
        ts = np.frombuffer(reply["ts"], np.int64)
        val = np.frombuffer(reply["val"], np.float64)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = render_points(ts, val)


class AggregatedQuery(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, series: str) -> None:
        start, end = _time_range(req)
        aggregation = req.get_param("aggregation")
        if aggregation is None:
            raise BadRequest("query parameter 'aggregation' is required "
                             "(sum, mean, avg, min, max or count)")
        interval = None
        if req.get_param("interval") is not None:
            interval = _int_param(req, "interval", None, 1, TIMESTAMP_MAX_MS)
        reply = self.client.call(op.Aggregate(self._series(series), start, end, aggregation,
                                           interval, _consistency(req)))
        if interval is None:
            _json(resp, reply["value"])
            return
        resp.content_type = falcon.MEDIA_JSON
        resp.data = render_objects([
            ("timestamp", np.frombuffer(reply["ts"], np.int64)),
            ("value", np.frombuffer(reply["val"], np.float64)),
            ("count", np.frombuffer(reply["count"], np.int64)),
        ])


class SeriesList(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        prefix = req.get_param("prefix") or ""
        if len(prefix) > self.config.max_series_name_length:
            raise BadRequest("prefix is longer than the longest series name")
        limit = _int_param(req, "limit", 1000, 1, 100_000)
        _json(resp, self.client.call(op.ListSeries(prefix, limit)))


class _Probe(Base):
    """A probe (/health, /ready, /live): 200 or 503 with the same JSON body, which says why.

    The node judges (``count/cluster/health.py``); this only maps its verdict to a status.
    When the node process does not answer, the body has the same shape, with the reason.
    """

    OPERATION: type[op.Message]
    FAILED: str  # the status a node process that does not answer gets
    OK: tuple[str, ...]  # the statuses answered with 200

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            body = self.client.call(self.OPERATION(), timeout_ms=self.timeout_ms())
        except CountError as exc:
            body = {"status": self.FAILED, "node_id": self.config.node_id,
                    "reasons": [f"node process: {exc}"]}
        _json(resp, body, falcon.HTTP_200 if body.get("status") in self.OK else falcon.HTTP_503)

    def timeout_ms(self) -> int | None:
        return None


class Health(_Probe):
    OPERATION = op.Health
    FAILED = "unhealthy"
    OK = ("healthy", "degraded")


class Ready(_Probe):
    OPERATION = op.Readiness
    FAILED = "not_ready"
    OK = ("ready",)


class Live(_Probe):
    """Cheap: the node process answers from its loop with no work at all; the deadline is
    at most LIVE_TIMEOUT_MS, so that a liveness probe (Kubernetes' default timeout is 1 s)
    fails on a stuck node rather than hanging with it."""

    OPERATION = op.Live
    FAILED = "not_live"
    OK = ("live",)

    def timeout_ms(self) -> int | None:
        return min(self.config.request_timeout_ms, LIVE_TIMEOUT_MS)


class Stats(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, self.client.call(op.Stats()))


class Endpoints(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, series: str) -> None:
        _json(resp, self.client.call(op.Endpoints(self._series(series))))


class ClusterStatus(Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, self.client.call(op.ClusterStatus()))


class Repair(Base):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, self.client.call(op.Repair(), timeout_ms=REPAIR_TIMEOUT_MS))


class Decommission(Base):
    """POST /cluster/decommission: 202 at once; the node exits 0 once its ranges moved."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, self.client.call(op.Decommission(), timeout_ms=CHANGE_TIMEOUT_MS),
              falcon.HTTP_202)


class RemoveNode(Base):
    """POST /cluster/removenode/{node}: a dead member out (by NODE_ID or address); 202
    once it is being removed."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, node: str) -> None:
        _json(resp, self.client.call(op.RemoveNode(node), timeout_ms=CHANGE_TIMEOUT_MS),
              falcon.HTTP_202)
