"""`novacron node drain`: start the drain, then follow it on the node until it ends, a line
per VM as it moves (or cannot)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cli.commands import Context, _emit_one
from shared.pb.v1 import types_pb2 as pb

POLL_S = 1.0


def node_drain(
    ctx: Context, args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep
) -> int:
    node = ctx.client.drain(args.node, args.parallel, args.cold)
    drain = node.drain
    if ctx.fmt == "table":
        n = len(drain.queued) + len(drain.active)
        ctx.out.write(
            f"draining {args.node} (cordoned): {n} VM{'' if n == 1 else 's'} to move, "
            f"{args.parallel} at a time{', cold' if args.cold else ''}\n"
        )
    said: set[str] = set()
    _report(ctx, drain, said)
    while not args.no_wait and not drain.HasField("finished_at"):
        sleep(POLL_S)
        drain = ctx.client.get_node(args.node).drain
        _report(ctx, drain, said)
    if ctx.fmt != "table":
        return _emit_one(ctx, ctx.client.get_node(args.node), lambda: "")
    if drain.HasField("finished_at"):
        took = (
            drain.finished_at.ToDatetime().timestamp() - drain.started_at.ToDatetime().timestamp()
        )
        ctx.out.write(
            f"{args.node} drained in {took:.1f}s: {len(drain.moved)} moved, "
            f"{len(drain.failed)} did not\n"
        )
    else:
        ctx.out.write(f"follow it with: novacron node show {args.node}\n")
    return 1 if drain.failed else 0


def _report(ctx: Context, drain: pb.Drain, said: set[str]) -> None:
    if ctx.fmt != "table":
        return
    for name, target in sorted(drain.moved.items()):
        if f"moved {name}" not in said:
            said.add(f"moved {name}")
            ctx.out.write(f"{name}: moved to {target}\n")
    for name, why in sorted(drain.failed.items()):
        if f"failed {name}" not in said:
            said.add(f"failed {name}")
            ctx.out.write(f"{name}: not moved: {why}\n")
    for name in drain.active:
        if f"moving {name}" not in said:
            said.add(f"moving {name}")
            ctx.out.write(f"{name}: moving\n")
