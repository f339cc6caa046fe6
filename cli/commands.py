"""One function per command: call the controller through EdgeClient, print in the chosen format."""

from __future__ import annotations

import argparse
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeVar

import grpc
from google.protobuf.message import Message

from cli import migration_watch, placement, progress
from cli.client import EdgeClient
from cli.migration_progress import MigrationProgress
from cli.migration_views import migration_describe, migration_table
from cli.render import dump, list_data, to_data
from cli.views import (
    failover_outcomes,
    node_describe,
    node_table,
    orphan_table,
    status_describe,
    vm_describe,
    vm_table,
)
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb

R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class Context:
    client: EdgeClient
    fmt: str
    out: TextIO
    err: TextIO
    now: float


Handler = Callable[[Context, argparse.Namespace], int]


def _emit_one(ctx: Context, message: Message, as_table: Callable[[], str]) -> int:
    ctx.out.write(as_table() if ctx.fmt == "table" else dump(to_data(message), ctx.fmt))
    return 0


def _emit_list(
    ctx: Context, messages: Sequence[Message], as_table: Callable[[], str], what: str
) -> int:
    if ctx.fmt != "table":
        ctx.out.write(dump(list_data(messages), ctx.fmt))
    elif not messages:
        ctx.err.write(f"No {what} found.\n")
    else:
        ctx.out.write(as_table())
    return 0


# -- status / nodes ----------------------------------------------------------------------------


def status(ctx: Context, args: argparse.Namespace) -> int:
    st = ctx.client.status()
    return _emit_one(ctx, st, lambda: status_describe(st))


def node_list(ctx: Context, args: argparse.Namespace) -> int:
    nodes = ctx.client.list_nodes()
    return _emit_list(ctx, nodes, lambda: node_table(nodes, ctx.now), "nodes")


def node_show(ctx: Context, args: argparse.Namespace) -> int:
    node = ctx.client.get_node(args.node)
    return _emit_one(ctx, node, lambda: node_describe(node, ctx.now))


# -- VMs ---------------------------------------------------------------------------------------


def vm_deploy(ctx: Context, args: argparse.Namespace) -> int:
    request_id = args.request_id or str(uuid.uuid4())
    names = [args.name] if args.count == 1 else [f"{args.name}-{i + 1}" for i in range(args.count)]
    constraints = placement.constraints(args)
    specs = []
    for name in names:
        spec = pb.VMSpec(
            name=name,
            image=args.image,
            vcpus=args.vcpus,
            memory_mib=args.memory_mib,
            labels=dict(args.labels),
            bandwidth_mbps=args.bandwidth_mbps,
        )
        if constraints.ByteSize():
            spec.placement.CopyFrom(constraints)
        if args.replace_after is not None:
            spec.disconnect.replace_after_s = args.replace_after
        if args.stop_after is not None:
            spec.disconnect.stop_after_s = args.stop_after
        specs.append(spec)
    what = args.name if args.count == 1 else f"{names[0]}..{names[-1]}"
    # On stderr so stdout stays clean for -o json; the id makes a retry idempotent.
    ctx.err.write(f"deploying {what} (request_id {request_id})\n")
    if args.count == 1:
        single = api.DeployVMRequest(
            spec=specs[0], request_id=request_id, timeout_seconds=args.wait_timeout
        )
        vm = _await_deploy(ctx, *ctx.client.deploy_future(single), what, request_id)
        if vm is None:
            return 130
        return _emit_one(
            ctx, vm, lambda: vm_table([vm], ctx.now) + f"placement: {vm.placement_reason}\n"
        )
    batch = api.DeployVMsRequest(
        specs=specs, request_id=request_id, timeout_seconds=args.wait_timeout
    )
    result = _await_deploy(ctx, *ctx.client.deploy_many_future(batch), what, request_id)
    if result is None:
        return 130
    vms = list(result.vms)
    _emit_list(ctx, vms, lambda: vm_table(vms, ctx.now) + f"plan: {result.plan}\n", "VMs")
    failed = [vm.spec.name for vm in vms if vm.state != pb.VM_STATE_RUNNING]
    if failed:
        ctx.err.write(f"not running: {', '.join(failed)} (see `novacron vm show NAME`)\n")
        return 1
    return 0


def _await_deploy(
    ctx: Context, future: grpc.Future[R], deadline: float, what: str, request_id: str
) -> R | None:
    """The deploy's result, with a spinner on a terminal; None when interrupted (^C)."""
    try:
        progress.wait(future, f"waiting for {what} to run", ctx.err)
        return ctx.client.deploy_result(future, deadline)
    except KeyboardInterrupt:
        future.cancel()
        ctx.err.write(
            f"\ninterrupted: the controller may still deploy {what}; "
            f"re-run with --request-id {request_id} to wait for the same deployment\n"
        )
        return None


_OFFLINE_WORD = {"cold": "off (it booted on the target)", "snapshot": "paused"}


def vm_migrate(ctx: Context, args: argparse.Namespace) -> int:
    request = api.MigrateVMRequest(
        name_or_id=args.vm,
        target_node_id=args.target,
        bandwidth_mbit=args.bandwidth_mbit,
        max_downtime_ms=args.max_downtime_ms,
        timeout_seconds=args.wait_timeout,
        postcopy=args.postcopy,
        reason=args.reason,
        priority=args.priority,
        mode=args.mode,
    )
    future, deadline = ctx.client.migrate_future(request)
    try:
        if ctx.fmt == "table":  # -o json/yaml: only the result
            _migration_progress(ctx, args.vm, future, deadline)
        report = ctx.client.deploy_result(future, deadline)
    except KeyboardInterrupt:
        ctx.err.write(
            f"\ninterrupted: the migration of {args.vm} goes on in the controller; "
            f"`novacron vm show {args.vm}` shows where it runs\n"
        )
        return 130

    def as_table() -> str:
        vm = report.vm
        if args.mode != "live":
            figures = f"{args.mode}: the guest was {_OFFLINE_WORD[args.mode]} meanwhile"
        elif report.elapsed_ms or not args.postcopy:
            figures = (
                f"guest paused {report.downtime_ms:.0f} ms, {report.memory_bytes / 2**20:.1f} "
                f"MiB of memory sent in {report.elapsed_ms / 1000:.1f} s"
            )
        else:
            figures = "post-copy: libvirt reports no pause or memory figures"
        lines = [
            f"{vm.spec.name} migrated {report.source_node_id} -> {vm.node_id} "
            f"in {report.total_ms / 1000:.1f} s ({figures})",
        ]
        if vm.address:
            lines.append(f"address {vm.address} now routed to {vm.node_id}")
        if report.target_reason and report.target_reason != "requested":
            lines.append(f"target chosen by placement: {report.target_reason}")
        return "\n".join(lines) + "\n"

    return _emit_one(ctx, report, as_table)


def _migration_progress(
    ctx: Context, vm: str, future: grpc.Future[api.MigrateVMResponse], deadline: float
) -> None:
    """Follow the migration through WatchMigration while MigrateVM runs: a bar redrawn in place
    on a terminal, plain lines otherwise. Without the watch (an older controller answers
    UNIMPLEMENTED, or the stream breaks) the spinner on stderr, as before it existed."""
    bar = MigrationProgress(ctx.out.isatty(), shutil.get_terminal_size().columns)
    watched = migration_watch.follow(
        lambda: ctx.client.watch_migration(vm=vm, timeout=deadline), future, ctx.out, bar
    )
    if not watched:
        progress.wait(future, f"migrating {vm}", ctx.err)


def vm_list(ctx: Context, args: argparse.Namespace) -> int:
    vms = ctx.client.list_vms(args.node or "")
    return _emit_list(ctx, vms, lambda: vm_table(vms, ctx.now), "VMs")


def vm_show(ctx: Context, args: argparse.Namespace) -> int:
    vm = ctx.client.get_vm(args.vm)
    return _emit_one(ctx, vm, lambda: vm_describe(vm, ctx.now))


def vm_suspend(ctx: Context, args: argparse.Namespace) -> int:
    vm = ctx.client.suspend_vm(args.vm)
    return _emit_one(ctx, vm, lambda: vm_table([vm], ctx.now))


def vm_resume(ctx: Context, args: argparse.Namespace) -> int:
    vm = ctx.client.resume_vm(args.vm)
    return _emit_one(ctx, vm, lambda: vm_table([vm], ctx.now))


def vm_delete(ctx: Context, args: argparse.Namespace) -> int:
    vm = ctx.client.delete_vm(args.vm)
    return _emit_one(ctx, vm, lambda: _deletion_line(vm))


def _deletion_line(vm: pb.VM) -> str:
    """A deleted VM is gone from lists, so say what happened rather than print a table row."""
    if vm.state == pb.VM_STATE_DELETING:
        return f"VM {vm.spec.name} ({vm.id[:8]}): deletion pending: {vm.state_reason}\n"
    return f"VM {vm.spec.name} ({vm.id[:8]}) deleted from node {vm.node_id}\n"


def vm_console(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.vm_console(args.vm, args.bytes)
    if ctx.fmt != "table":
        return _emit_one(ctx, resp, lambda: "")
    text = resp.text
    ctx.out.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


# -- placement ---------------------------------------------------------------------------------


def placement_explain(ctx: Context, args: argparse.Namespace) -> int:
    spec = pb.VMSpec(
        name=args.name or "",
        image=args.image,
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        placement=placement.constraints(args),
    )
    decision = ctx.client.recommend(spec, args.k)
    return _emit_one(ctx, decision, lambda: placement.decision_view(decision))


def node_nearest(ctx: Context, args: argparse.Namespace) -> int:
    nodes = ctx.client.nearest(args.location[0], args.location[1], args.n)
    return _emit_list(ctx, nodes, lambda: placement.nearest_view(nodes), "nodes")


def node_cordon(ctx: Context, args: argparse.Namespace) -> int:
    node = ctx.client.cordon(args.node, cordoned=True)
    return _emit_one(ctx, node, lambda: f"node {node.info.node_id} cordoned\n")


def node_uncordon(ctx: Context, args: argparse.Namespace) -> int:
    node = ctx.client.cordon(args.node, cordoned=False)
    return _emit_one(ctx, node, lambda: f"node {node.info.node_id} uncordoned\n")


def node_fail_over(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.fail_over(args.node, node_is_dead=args.node_is_dead)
    return _emit_one(ctx, answer, lambda: failover_outcomes(answer))


def node_rotate_key(ctx: Context, args: argparse.Namespace) -> int:
    node = ctx.client.rotate_mesh_key(args.node)
    key = node.mesh.public_key
    return _emit_one(ctx, node, lambda: f"node {node.info.node_id} rotated: public key {key}\n")


# -- migrations --------------------------------------------------------------------------------


def migration_list(ctx: Context, args: argparse.Namespace) -> int:
    found = ctx.client.list_migrations(args.vm)
    return _emit_list(ctx, found, lambda: migration_table(found, ctx.now), "migrations")


def migration_get(ctx: Context, args: argparse.Namespace) -> int:
    mig = ctx.client.get_migration(args.migration_id, args.vm)
    return _emit_one(ctx, mig, lambda: migration_describe(mig, ctx.now))


# -- orphans -----------------------------------------------------------------------------------


def vm_orphans(ctx: Context, args: argparse.Namespace) -> int:
    orphans = ctx.client.list_orphans()
    return _emit_list(ctx, orphans, lambda: orphan_table(orphans, ctx.now), "orphans")


def vm_adopt(ctx: Context, args: argparse.Namespace) -> int:
    vm = ctx.client.adopt_vm(args.node, args.vm)
    return _emit_one(
        ctx,
        vm,
        lambda: (
            f"VM {vm.spec.name} ({vm.id[:8]}) on node {vm.node_id} adopted: managed from "
            f"now on, at generation {vm.generation}\n"
        ),
    )


def vm_delete_orphan(ctx: Context, args: argparse.Namespace) -> int:
    orphan = ctx.client.delete_orphan(args.node, args.vm)
    vm = orphan.vm
    return _emit_one(
        ctx,
        orphan,
        lambda: f"orphan {vm.name or '-'} ({vm.vm_id[:8]}) destroyed on node {orphan.node_id}\n",
    )
