"""`novacron events`: the controller's event feed (alerts, node conditions, migrations,
failovers, audited requests) through WatchEvents.

Without `--watch` the recent events are printed (a table, or `{"items": [...]}` for -o
json) and the command ends; with it, each new event is printed as it happens, one line each
(-o json: one JSON object per line, JSON Lines), until interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import grpc

from cli import args as types
from cli.commands import Context
from cli.parser_util import Subparsers
from cli.parser_util import sub as _sub
from cli.render import dump, list_data, safe, table, to_data
from shared.pb.v1 import edge_api_pb2 as api

EXAMPLES = """\
  novacron events
  novacron events -w
  novacron events --kind alert -o json
  novacron events -w --kind alert.firing --kind node.condition -n 0
"""


def add_events_command(top: Subparsers) -> None:
    p = _sub(
        top,
        "events",
        "recent controller events (alerts firing/resolved, node conditions, migration and "
        "failover phases, audited requests); -w follows new ones",
        EXAMPLES,
        events,
    )
    p.add_argument(
        "-w", "--watch", action="store_true",
        help="keep printing new events as they happen (Ctrl-C ends)",
    )  # fmt: skip
    p.add_argument(
        "--kind", action="append", default=[], metavar="KIND",
        help="only these kinds or prefixes (alert, alert.firing, node, migration, vm); "
        "repeat or separate with commas",
    )  # fmt: skip
    p.add_argument(
        "-n", "--replay", type=types.non_negative_u32, default=None, metavar="N",
        help="how many recent events first (default 100; -n 0 with -w: only new ones)",
    )  # fmt: skip


def request_of(args: argparse.Namespace) -> api.WatchEventsRequest:
    kinds = [k.strip() for given in args.kind for k in given.split(",") if k.strip()]
    request = api.WatchEventsRequest(follow=args.watch, kinds=kinds)
    if args.replay is not None:
        request.replay = args.replay
    return request


def events(ctx: Context, args: argparse.Namespace) -> int:
    request = request_of(args)
    timeout = None if args.watch else ctx.client.timeout
    stream = ctx.client.watch_events(request, timeout)
    received: list[api.ControllerEvent] = []
    try:
        for event in stream:
            if args.watch:
                ctx.out.write(line(event, ctx.fmt))
                ctx.out.flush()
            else:
                received.append(event)
    except grpc.RpcError as err:
        raise ctx.client.to_cli_error(err, timeout or 0.0) from None
    if args.watch:
        return 0
    if ctx.fmt != "table":
        ctx.out.write(dump(list_data(received), ctx.fmt))
    elif not received:
        ctx.err.write("No events.\n")
    else:
        ctx.out.write(table(HEADERS, [row(e) for e in received]))
    return 0


HEADERS = ("TIME", "SEVERITY", "KIND", "SUBJECT", "MESSAGE")


def _time(event: api.ControllerEvent) -> str:
    at = dt.datetime.fromtimestamp(event.at.ToNanoseconds() / 1e9, dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def row(event: api.ControllerEvent) -> list[str]:
    return [_time(event), event.severity, event.kind, event.subject, event.message]


def line(event: api.ControllerEvent, fmt: str) -> str:
    """One event as printed by --watch."""
    data: Any = to_data(event)
    if fmt == "json":
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
    if fmt == "yaml":
        return "---\n" + dump(data, "yaml")
    time_, severity, kind, subject, message = (safe(c) for c in row(event))
    return f"{time_}  {severity:<8}  {kind:<18}  {subject:<20}  {message}\n"
