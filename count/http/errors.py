"""One JSON error shape for every failure: ``{"error": "message a person can act on"}``."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import orjson

from count.errors import CountError

log = logging.getLogger("count.http")


def _status_line(code: int) -> str:
    return str(falcon.code_to_http_status(code))


def handle_count_error(req: falcon.Request, resp: falcon.Response, exc: CountError,
                       params: dict[str, Any]) -> None:
    resp.status = _status_line(exc.status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": str(exc)})
    if exc.status >= 500 and exc.status != 507:
        log.warning("%s %s failed: %d %s", req.method, req.path, exc.status, exc)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception,
                      params: dict[str, Any]) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("%s %s failed with an internal error", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": "internal error; see the node's log"})


def serialize_http_error(req: falcon.Request, resp: falcon.Response,
                         exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404 route, 405 method, ...) in the same JSON shape."""
    message = exc.description or exc.title
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": message})
