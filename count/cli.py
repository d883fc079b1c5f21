"""count: the operator's command line for a Count node (health, insert, query, series, cluster).

It speaks the public HTTP API, so it works against any node; the cluster commands (endpoints,
status, repair) answer from the node asked, as nodetool's do. The node is taken from --url,
else COUNT_URL, else http://127.0.0.1:8080. Output is for people (tables, one line per
item) unless --json is given (before or after the command): then it is the node's JSON
reply, unchanged, for scripts. Exit status: 0 success, 1 the node answered with an error,
could not be reached, or (health, ready, live) is not healthy / ready / live, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from count.progress import Progress

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
# POST /cluster/repair waits for a whole anti-entropy round (the node bounds it at 600 s).
REPAIR_TIMEOUT_S = 660.0
# A membership change is answered once a majority has agreed it; the wait for its end is
# bounded by --timeout.
CHANGE_TIMEOUT_S = 40.0
CHANGE_WAIT_S = 3600.0
# How often a long command asks the node how far it has got.
PROGRESS_POLL_S = 0.5


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


def _probe(base: str, path: str) -> Any:
    """GET a probe (/health, /ready, /live): its body on 200 and on 503 alike (a 503 says
    what is wrong in the same body); CliError if it cannot be had."""
    try:
        with urllib.request.urlopen(base.rstrip("/") + path, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = None
        if exc.code == 503 and isinstance(body, dict) and "status" in body:
            return body
        message = body.get("error", exc.reason) if isinstance(body, dict) else exc.reason
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CliError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _number(value: Any) -> str:
    """A value as JSON writes it (lossless), null as '-'."""
    return "-" if value is None else json.dumps(value)


def format_probe(body: dict[str, Any]) -> str:
    """A probe's body as a two-column table, reasons one per line."""
    rows = [(key, "yes" if value is True else "no" if value is False else str(value))
            for key, value in body.items() if key != "reasons"]
    text = _table(rows)
    reasons = body.get("reasons") or []
    if reasons:
        text += "reasons:\n" + "".join(f"  - {reason}\n" for reason in reasons)
    return text


def _run_probe(args: argparse.Namespace, path: str, good: tuple[str, ...]) -> None:
    body = _probe(args.url, path)
    if args.json:
        _print(body)
    else:
        sys.stdout.write(format_probe(body))
    if body.get("status") not in good:
        raise CliError(f"node {body.get('node_id')} is {body.get('status')}")


def cmd_health(args: argparse.Namespace) -> None:
    _run_probe(args, "/health", ("healthy",))


def cmd_ready(args: argparse.Namespace) -> None:
    _run_probe(args, "/ready", ("ready",))


def cmd_live(args: argparse.Namespace) -> None:
    _run_probe(args, "/live", ("live",))


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
    reply = _request(args.url, "POST", "/insert", body)
    if args.json:
        _print(reply)
    else:
        inserted = reply.get("inserted") if isinstance(reply, dict) else None
        sys.stdout.write(f"inserted {inserted} point{'' if inserted == 1 else 's'}\n")


def _range_query(args: argparse.Namespace) -> str:
    params = {"start": args.start, "end": args.end}
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def _utc(timestamp_ms: Any) -> str:
    """Unix milliseconds as ISO 8601 UTC, for people ('-' if not a timestamp)."""
    if not isinstance(timestamp_ms, int):
        return "-"
    when = datetime.datetime.fromtimestamp(timestamp_ms / 1000, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"


def format_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Points or buckets as a table: the timestamp, its UTC time, then ``columns``."""
    table = [("timestamp", "time (UTC)", *columns)]
    table += [(str(r.get("timestamp")), _utc(r.get("timestamp")),
               *(_number(r.get(c)) for c in columns)) for r in rows]
    return _table(table) + f"({len(rows)} row{'' if len(rows) == 1 else 's'})\n"


def cmd_query(args: argparse.Namespace) -> None:
    series = urllib.parse.quote(args.series, safe="/:")
    query = _range_query(args)
    if args.aggregation is None:
        reply = _request(args.url, "GET", f"/query/range/{series}?{query}")
        columns: tuple[str, ...] = ("value",)
    else:
        query += f"&aggregation={urllib.parse.quote(args.aggregation)}"
        if args.interval is not None:
            query += f"&interval={args.interval}"
        reply = _request(args.url, "GET", f"/query/aggregated/{series}?{query}")
        columns = ("value", "count")
    if args.json:
        _print(reply)
    elif isinstance(reply, list):
        sys.stdout.write(format_rows(reply, columns))
    else:  # one aggregate over the whole range
        sys.stdout.write(f"{args.aggregation}: {_number(reply)}\n")


def cmd_series(args: argparse.Namespace) -> None:
    query = urllib.parse.urlencode({"prefix": args.prefix, "limit": args.limit})
    names = _request(args.url, "GET", f"/series?{query}")
    if args.json:
        _print(names)
    else:
        sys.stdout.write("".join(f"{name}\n" for name in names))


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


def _share(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def _streaming(progress: Any) -> str:
    """A member's streaming: ``12/150 ranges 3.1M pts 510,000/s ETA 20 s`` while it fetches."""
    if not isinstance(progress, dict) or not progress.get("active"):
        return "-"
    eta = progress.get("eta_s")
    return (f"{progress.get('ranges_done')}/{progress.get('ranges_total')} ranges "
            f"{_count(progress.get('points'))} pts {_count(progress.get('points_per_s'))}/s"
            + (f" ETA {eta:.0f} s" if isinstance(eta, (int, float)) else ""))


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                   + "\n" for row in rows)


def format_status(status: dict[str, Any]) -> str:
    """A nodetool-status-like table of GET /cluster/status."""
    members = status.get("members") or []
    up = sum(1 for m in members if m.get("alive"))
    change = status.get("change")
    lines = [(f"Cluster: {status.get('status')}, {up} of {len(members)} nodes up, "
              f"replication factor {status.get('replication_factor')}, "
              f"epoch {status.get('epoch')}, ring {status.get('ring')}\n")]
    if change:
        lines.append(f"Change in flight: node {change.get('node_id')} {change.get('state')}\n")
    rows = [("", "State", "Ring", "Node", "Address", "Owns", "Points", "Bytes", "Hints",
             "Heartbeat", "Streaming")]
    for m in members:
        state = "Up" if m.get("alive") else "Down"
        if m.get("state") not in (None, "normal"):
            state += f" ({m['state']})"
        rows.append(("*" if m.get("self") else "", state, str(m.get("ring_state", "-")),
                     str(m.get("node_id")), str(m.get("address")), _share(m.get("ownership")),
                     _count(m.get("points")), human_bytes(m.get("bytes")),
                     _count(m.get("hints_pending")), _age(m.get("heartbeat_age_s")),
                     _streaming(m.get("streaming"))))
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


def _repair_with_progress(url: str) -> Any:
    """POST /cluster/repair, showing the round's progress (from /stats) on stderr while it
    runs: a bar on a terminal, a line now and then otherwise."""
    outcome: dict[str, Any] = {}

    def post() -> None:
        try:
            outcome["report"] = _request(url, "POST", "/cluster/repair",
                                         timeout_s=REPAIR_TIMEOUT_S)
        except CliError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=post, name="repair", daemon=True)
    started = time.monotonic()
    worker.start()
    progress = Progress(sys.stderr, "repair", "ranges")
    while True:
        worker.join(PROGRESS_POLL_S)
        if not worker.is_alive():
            break
        try:
            ae = _request(url, "GET", "/stats").get("anti_entropy", {})
        except CliError:
            continue  # the answer to the POST says what went wrong
        if ae.get("running"):
            progress.update(ae.get("ranges_done", 0), ae.get("ranges_total", 0),
                            time.monotonic() - started)
    progress.finish()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


def cmd_repair(args: argparse.Namespace) -> None:
    if args.json:
        report = _request(args.url, "POST", "/cluster/repair", timeout_s=REPAIR_TIMEOUT_S)
        _print(report)
    else:
        report = _repair_with_progress(args.url)
        sys.stdout.write(format_repair(report))
    errors = report.get("errors") or []
    if errors:
        for error in errors:
            sys.stderr.write(f"count: repair: {error}\n")
        raise CliError(f"repair finished with {len(errors)} error{'s' if len(errors) > 1 else ''}")


def _change_progress(status: dict[str, Any]) -> tuple[int, int]:
    """How far the membership change in flight has got: owners-to-be that have fetched
    their new ranges (their streamed epoch is the current one), of all of them."""
    epoch = status.get("epoch")
    change = status.get("change") or {}
    members = [m for m in status.get("members") or []
               if m.get("ring_state") in ("normal", "joining")
               and m.get("node_id") != change.get("node_id")]
    done = sum(1 for m in members if (m.get("streaming") or {}).get("streamed_epoch") == epoch)
    return done, len(members)


def _wait_for_change(url: str, what: str, finished: Callable[[dict[str, Any] | None], bool],
                     timeout_s: float) -> None:
    """Poll GET /cluster/status until ``finished`` (given None once the node stops
    answering), showing the members that have fetched their ranges."""
    progress = Progress(sys.stderr, what, "members streamed")
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            try:
                status: dict[str, Any] | None = _request(url, "GET", "/cluster/status")
            except CliError:
                status = None
            if finished(status):
                return
            if status is not None:
                progress.update(*_change_progress(status), time.monotonic() - started)
            time.sleep(PROGRESS_POLL_S)
    finally:
        progress.finish()
    raise CliError(f"{what} has not finished after {timeout_s:.0f} s; it goes on: "
                   "`count status` shows how far it has got")


def cmd_decommission(args: argparse.Namespace) -> None:
    reply = _request(args.url, "POST", "/cluster/decommission", timeout_s=CHANGE_TIMEOUT_S)
    if args.json:
        _print(reply)
    else:
        sys.stdout.write(f"Node {reply.get('decommissioning')} is leaving: its ranges stream "
                         "to their new owners, then it exits 0\n")
    if args.wait:
        # The node stops answering once it has left (count-server exits 0).
        _wait_for_change(args.url, "decommission", lambda status: status is None,
                         args.timeout)
        if not args.json:
            sys.stdout.write(f"Node {reply.get('decommissioning')} decommissioned\n")


def cmd_removenode(args: argparse.Namespace) -> None:
    node = urllib.parse.quote(args.node, safe="")
    reply = _request(args.url, "POST", f"/cluster/removenode/{node}",
                     timeout_s=CHANGE_TIMEOUT_S)
    if args.json:
        _print(reply)
    else:
        sys.stdout.write(f"Node {reply.get('removing')} is being removed (epoch "
                         f"{reply.get('epoch')}): its ranges are fetched from the surviving "
                         "replicas\n")

    def gone(status: dict[str, Any] | None) -> bool:
        if status is None:
            raise CliError(f"{args.url} stopped answering; the removal goes on without it")
        return not any(str(m.get("node_id")) == str(reply.get("removing"))
                       and m.get("ring_state") == "removing" for m in status["members"])

    if args.wait:
        _wait_for_change(args.url, "removenode", gone, args.timeout)
        if not args.json:
            sys.stdout.write(f"Node {reply.get('removing')} removed\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="count", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 success; 1 the node answered with "
                                            "an error, could not be reached, or is not "
                                            "healthy/ready/live; 2 bad usage")
    parser.add_argument("--url", default=os.environ.get("COUNT_URL") or DEFAULT_URL,
                        help=f"node to talk to (default: $COUNT_URL or {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true",
                        help="print the node's JSON reply (for scripts) instead of a table")
    # --json after the command too; SUPPRESS keeps a --json given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the node's JSON reply (for scripts) instead of a table")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[common])

    command("health", "the node's health: exit 0 healthy, 1 degraded or unhealthy"
            ).set_defaults(run=cmd_health)
    command("ready", "whether the node would take a write now: exit 0 ready, 1 not"
            ).set_defaults(run=cmd_ready)
    command("live", "whether the node serves and its node process answers: exit 0 or 1"
            ).set_defaults(run=cmd_live)
    insert = command("insert", "insert a point, or a JSON file of points")
    insert.add_argument("series", nargs="?")
    insert.add_argument("value", nargs="?", type=float)
    insert.add_argument("--timestamp", type=int, help="Unix ms (default: now)")
    insert.add_argument("--file", help="JSON point or array of points; '-' for stdin")
    insert.set_defaults(run=cmd_insert)
    query = command("query", "read a range, or an aggregate with --aggregation")
    query.add_argument("series")
    query.add_argument("--start", type=int)
    query.add_argument("--end", type=int)
    query.add_argument("--aggregation", choices=("sum", "mean", "avg", "min", "max", "count"))
    query.add_argument("--interval", type=int, help="bucket width in ms (with --aggregation)")
    query.set_defaults(run=cmd_query)
    series = command("series", "list series names")
    series.add_argument("--prefix", default="")
    series.add_argument("--limit", type=int, default=1000)
    series.set_defaults(run=cmd_series)
    endpoints = command("endpoints", "the nodes that hold a series (cluster)")
    endpoints.add_argument("series")
    endpoints.set_defaults(run=cmd_endpoints)
    status = command("status", "the cluster's members, as this node sees them")
    status.set_defaults(run=cmd_status)
    repair = command("repair", "run an anti-entropy round now; exit 1 on errors")
    repair.set_defaults(run=cmd_repair)
    decommission = command("decommission", "this node (--url) leaves the cluster: its ranges "
                           "stream to their new owners, then it exits 0")
    decommission.set_defaults(run=cmd_decommission)
    removenode = command("removenode", "take a dead node out (by NODE_ID or address); its "
                         "ranges are re-replicated from the surviving replicas")
    removenode.add_argument("node")
    removenode.set_defaults(run=cmd_removenode)
    for change in (decommission, removenode):
        change.add_argument("--no-wait", dest="wait", action="store_false",
                            help="return once the change is under way")
        change.add_argument("--timeout", type=float, default=CHANGE_WAIT_S,
                            help=f"seconds to wait for the end (default {CHANGE_WAIT_S:.0f})")
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
