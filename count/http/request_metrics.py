"""What each HTTP worker measures of the requests it answers: a Falcon middleware.

Requests are labelled by route template (``/query/range/{series:path}``), never by raw path,
and an unknown method or route is one label value, so the number of time series stays
bounded whatever URLs clients send. The metrics live in ``WORKER_REGISTRY``; under
count-server, prometheus_client's multiprocess mode also writes them to the run's
PROMETHEUS_MULTIPROC_DIR (``count/metrics_dir.py``), where the worker serving ``/metrics``
reads every worker's samples.
"""

from __future__ import annotations

import time

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The label value of a request that matched no route (a 404), and of an unknown method.
UNMATCHED_ROUTE = "unmatched"
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Seconds. Count answers most requests in a millisecond or two; the top buckets catch a
# request waiting on a slow replica (REPLICA_TIMEOUT_MS) or its own deadline.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0)

WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("count_http_requests", "HTTP requests answered, by route template, method "
                   "and status code.", ["route", "method", "status"], registry=WORKER_REGISTRY)
DURATION = Histogram("count_http_request_duration_seconds", "Time from a request's arrival in "
                     "the Falcon app to its response, by route template.", ["route"],
                     buckets=LATENCY_BUCKETS_S, registry=WORKER_REGISTRY)
IN_FLIGHT = Gauge("count_http_requests_in_flight", "Requests the HTTP workers are serving now.",
                  multiprocess_mode="livesum", registry=WORKER_REGISTRY)
REQUEST_BYTES = Counter("count_http_request_bytes", "Bytes of request bodies received (as "
                        "declared by Content-Length), by route template.", ["route"],
                        registry=WORKER_REGISTRY)
RESPONSE_BYTES = Counter("count_http_response_bytes", "Bytes of response bodies sent, by route "
                         "template.", ["route"], registry=WORKER_REGISTRY)


def route_label(req: falcon.Request) -> str:
    """The route template the request matched, or UNMATCHED_ROUTE."""
    return req.uri_template or UNMATCHED_ROUTE


def method_label(req: falcon.Request) -> str:
    return req.method if req.method in METHODS else OTHER_METHOD


class RequestMetrics:
    """Counts, times and sizes every request; Falcon calls ``process_response`` for every
    request whose ``process_request`` ran, errors included."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_start_s = time.perf_counter()
        IN_FLIGHT.inc()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        elapsed_s = time.perf_counter() - req.context.metrics_start_s
        IN_FLIGHT.dec()
        route = route_label(req)
        REQUESTS.labels(route, method_label(req), str(resp.status_code)).inc()
        DURATION.labels(route).observe(elapsed_s)
        if req.content_length:
            REQUEST_BYTES.labels(route).inc(req.content_length)
        body = resp.render_body()
        if body:
            RESPONSE_BYTES.labels(route).inc(len(body))
