"""count: the operator's command line for a Count node (health, insert, query, series, cluster).

It speaks the public HTTP API, so it works against any node; the cluster commands (endpoints,
status, repair) answer from the node asked, as nodetool's do. The node is taken from --url,
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
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
# POST /cluster/repair waits for a whole anti-entropy round (the node bounds it at 600 s).
REPAIR_TIMEOUT_S = 660.0


class CliError(Exception):
    """The request failed; the message says why."""


def _request(base: str, method: str, path: str, body: bytes | None = None,
             timeout_s: float = TIMEOUT_S) -> Any:
    request = urllib.request.Request(
        base.rstrip("/") + path, data=body, method=method,
        headers={"Content-Type": "application/json"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
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


def cmd_endpoints(args: argparse.Namespace) -> None:
    series = urllib.parse.quote(args.series, safe="/:")
    reply = _request(args.url, "GET", f"/cluster/endpoints/{series}")
    if args.json:
        _print(reply)
    else:
        replicas = ", ".join(str(node) for node in reply.get("replicas") or [])
        sys.stdout.write(f"{reply.get('series')}: {replicas}\n")


def human_bytes(value: Any) -> str:
    """1536 -> '1.5 KiB'; '-' when unknown."""
    if not isinstance(value, (int, float)):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _age(value: Any) -> str:
    return f"{value:.1f} s" if isinstance(value, (int, float)) else "-"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                   + "\n" for row in rows)


def format_status(status: dict[str, Any]) -> str:
    """A nodetool-status-like table of GET /cluster/status."""
    members = status.get("members") or []
    up = sum(1 for m in members if m.get("alive"))
    lines = [(f"Cluster: {status.get('status')}, {up} of {len(members)} nodes up, "
              f"replication factor {status.get('replication_factor')}, "
              f"ring {status.get('ring')}\n")]
    rows = [("", "State", "Node", "Address", "Points", "Bytes", "Hints", "Heartbeat")]
    for m in members:
        state = "Up" if m.get("alive") else "Down"
        if m.get("state") not in (None, "normal"):
            state += f" ({m['state']})"
        rows.append(("*" if m.get("self") else "", state, str(m.get("node_id")),
                     str(m.get("address")), _count(m.get("points")), human_bytes(m.get("bytes")),
                     _count(m.get("hints_pending")), _age(m.get("heartbeat_age_s"))))
    lines.append(_table(rows))
    lines.append(f"* = the node that answered (node {status.get('node_id')}, "
                 f"{status.get('address')}); heartbeat = age of its last heartbeat from each peer\n")
    return "".join(lines)


def cmd_status(args: argparse.Namespace) -> None:
    status = _request(args.url, "GET", "/cluster/status")
    if args.json:
        _print(status)
    else:
        sys.stdout.write(format_status(status))


def format_repair(report: dict[str, Any]) -> str:
    peers = report.get("peers") or []
    if not peers:
        head = "Repair: no live peer shares ranges with this node; nothing compared"
    else:
        head = f"Repair with node{'s' if len(peers) > 1 else ''} {', '.join(map(str, peers))}"
    return (f"{head} ({report.get('duration_ms')} ms)\n"
            f"  ranges compared:  {_count(report.get('ranges_compared'))}, "
            f"differing: {_count(report.get('ranges_differing'))}\n"
            f"  series differing: {_count(report.get('series_differing'))}\n"
            f"  points received:  {_count(report.get('points_received'))}\n"
            f"  points sent:      {_count(report.get('points_sent'))}\n"
            f"  errors:           {len(report.get('errors') or [])}\n")


def cmd_repair(args: argparse.Namespace) -> None:
    report = _request(args.url, "POST", "/cluster/repair", timeout_s=REPAIR_TIMEOUT_S)
    if args.json:
        _print(report)
    else:
        sys.stdout.write(format_repair(report))
    errors = report.get("errors") or []
    if errors:
        for error in errors:
            sys.stderr.write(f"count: repair: {error}\n")
        raise CliError(f"repair finished with {len(errors)} error{'s' if len(errors) > 1 else ''}")


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
    endpoints = sub.add_parser("endpoints", help="the nodes that hold a series (cluster)")
    endpoints.add_argument("series")
    endpoints.add_argument("--json", action="store_true", help="print the node's JSON reply")
    endpoints.set_defaults(run=cmd_endpoints)
    status = sub.add_parser("status", help="the cluster's members, as this node sees them")
    status.add_argument("--json", action="store_true", help="print the node's JSON reply")
    status.set_defaults(run=cmd_status)
    repair = sub.add_parser("repair", help="run an anti-entropy round now; exit 1 on errors")
    repair.add_argument("--json", action="store_true", help="print the node's JSON report")
    repair.set_defaults(run=cmd_repair)
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
