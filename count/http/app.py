"""The Falcon application of an HTTP worker."""

from __future__ import annotations

import falcon

from count.broker.client import NodeClient
from count.config import Config
from count.errors import CountError
from count.http import errors, resources
from count.http.metrics_resource import Metrics, NodeCollector
from count.http.request_metrics import RequestMetrics


def create_app(config: Config, client: NodeClient, server_pid: int
               ) -> falcon.App[falcon.Request, falcon.Response]:
    """The app of one worker; ``server_pid`` is count-server's, whose process tree
    ``/metrics`` reports."""
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=[RequestMetrics()])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(CountError, errors.handle_count_error)
    app.set_error_serializer(errors.serialize_http_error)
    args = (config, client)
    app.add_route("/insert", resources.Insert(*args))
    app.add_route("/query/range/{series:path}", resources.RangeQuery(*args))
    app.add_route("/query/aggregated/{series:path}", resources.AggregatedQuery(*args))
    app.add_route("/series", resources.SeriesList(*args))
    app.add_route("/health", resources.Health(*args))
    app.add_route("/ready", resources.Ready(*args))
    app.add_route("/live", resources.Live(*args))
    app.add_route("/stats", resources.Stats(*args))
    app.add_route("/cluster/endpoints/{series:path}", resources.Endpoints(*args))
    app.add_route("/cluster/status", resources.ClusterStatus(*args))
    app.add_route("/cluster/repair", resources.Repair(*args))
    app.add_route("/cluster/decommission", resources.Decommission(*args))
    app.add_route("/cluster/removenode/{node}", resources.RemoveNode(*args))
    app.add_route("/metrics", Metrics(NodeCollector(config, client, server_pid)))
    return app
