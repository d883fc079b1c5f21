"""count: the operator's command line for a Count node (health, insert, query, series).

It speaks the public HTTP API, so it works against any node. The node is taken from --url,
else COUNT_URL, else http://127.0.0.1:8080. Exit status: 0 success, 1 the node answered with
an error or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0


class CliError(Exception):
    """The request failed; the message says why."""


def _request(base: str, method: str, path: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(
        base.rstrip("/") + path, data=body, method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def cmd_health(args: argparse.Namespace) -> None:
    _print(_request(args.url, "GET", "/health"))


def cmd_insert(args: argparse.Namespace) -> None:
    if args.file is not None:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        with stream:
            body = stream.read()
    else:
        if args.series is None or args.value is None:
            raise CliError("give SERIES and VALUE (and optionally --timestamp), or --file")
        timestamp = args.timestamp if args.timestamp is not None else int(time.time() * 1000)
        body = json.dumps({"series": args.series, "timestamp": timestamp,
                           "value": args.value}).encode()
    _print(_request(args.url, "POST", "/insert", body))


def _range_query(args: argparse.Namespace) -> str:
    params = {"start": args.start, "end": args.end}
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def cmd_query(args: argparse.Namespace) -> None:
    series = urllib.parse.quote(args.series, safe="/:")
    query = _range_query(args)
    if args.aggregation is None:
        _print(_request(args.url, "GET", f"/query/range/{series}?{query}"))
        return
    query += f"&aggregation={urllib.parse.quote(args.aggregation)}"
    if args.interval is not None:
        query += f"&interval={args.interval}"
    _print(_request(args.url, "GET", f"/query/aggregated/{series}?{query}"))


def cmd_series(args: argparse.Namespace) -> None:
    query = urllib.parse.urlencode({"prefix": args.prefix, "limit": args.limit})
    _print(_request(args.url, "GET", f"/series?{query}"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="count", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("COUNT_URL", DEFAULT_URL),
                        help=f"node to talk to (default: $COUNT_URL or {DEFAULT_URL})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="show the node's health").set_defaults(run=cmd_health)
    insert = sub.add_parser("insert", help="insert a point, or a JSON file of points")
    insert.add_argument("series", nargs="?")
    insert.add_argument("value", nargs="?", type=float)
    insert.add_argument("--timestamp", type=int, help="Unix ms (default: now)")
    insert.add_argument("--file", help="JSON point or array of points; '-' for stdin")
    insert.set_defaults(run=cmd_insert)
    query = sub.add_parser("query", help="read a range, or an aggregate with --aggregation")
    query.add_argument("series")
    query.add_argument("--start", type=int)
    query.add_argument("--end", type=int)
    query.add_argument("--aggregation", choices=("sum", "mean", "avg", "min", "max", "count"))
    query.add_argument("--interval", type=int, help="bucket width in ms (with --aggregation)")
    query.set_defaults(run=cmd_query)
    series = sub.add_parser("series", help="list series names")
    series.add_argument("--prefix", default="")
    series.add_argument("--limit", type=int, default=1000)
    series.set_defaults(run=cmd_series)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CliError as exc:
        sys.stderr.write(f"count: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
