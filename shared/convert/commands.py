"""Protobuf <-> the agent's commands and results of shared.commands (part of shared.convert)."""

from __future__ import annotations

import dataclasses

from shared import commands as c
from shared.convert.domain import (
    spec_from_pb,
    spec_to_pb,
    timestamp,
    timestamp_seconds,
    vm_status_from_pb,
    vm_status_to_pb,
)
from shared.convert.mesh import (
    mesh_config_from_pb,
    mesh_config_to_pb,
    mesh_status_from_pb,
    mesh_status_to_pb,
)
from shared.errors import Internal, InvalidArgument
from shared.pb.v1 import agent_pb2 as apb

__all__ = [
    "envelope_from_pb",
    "envelope_to_pb",
    "migration_progress_from_pb",
    "migration_progress_to_pb",
    "migration_stats_from_pb",
    "migration_stats_to_pb",
    "migration_target_from_pb",
    "migration_target_to_pb",
    "result_from_pb",
    "result_to_pb",
]


def migration_target_to_pb(t: c.MigrationTarget) -> apb.MigrationTarget:
    return apb.MigrationTarget(
        libvirt_uri=t.libvirt_uri,
        data_uri=t.data_uri,
        kernel=t.kernel,
        initrd=t.initrd,
        disk=t.disk,
        console_log=t.console_log,
        listen_address=t.listen_address,
    )


def migration_target_from_pb(t: apb.MigrationTarget) -> c.MigrationTarget:
    return c.MigrationTarget(
        libvirt_uri=t.libvirt_uri,
        data_uri=t.data_uri,
        kernel=t.kernel,
        initrd=t.initrd,
        disk=t.disk,
        console_log=t.console_log,
        listen_address=t.listen_address,
    )


def migration_stats_to_pb(s: c.MigrationStats) -> apb.MigrationStats:
    return apb.MigrationStats(
        elapsed_ms=s.elapsed_ms, downtime_ms=s.downtime_ms, memory_bytes=s.memory_bytes
    )


def migration_stats_from_pb(s: apb.MigrationStats) -> c.MigrationStats:
    return c.MigrationStats(
        elapsed_ms=s.elapsed_ms, downtime_ms=s.downtime_ms, memory_bytes=s.memory_bytes
    )


def migration_progress_to_pb(p: c.MigrationProgress) -> apb.MigrationProgress:
    return apb.MigrationProgress(
        vm_id=p.vm_id,
        migration_id=p.migration_id,
        data_total=p.data_total,
        data_processed=p.data_processed,
        data_remaining=p.data_remaining,
        memory_dirty_rate=p.memory_dirty_rate,
        postcopy=p.postcopy,
    )


def migration_progress_from_pb(p: apb.MigrationProgress) -> c.MigrationProgress:
    return c.MigrationProgress(
        vm_id=p.vm_id,
        migration_id=p.migration_id,
        data_total=p.data_total,
        data_processed=p.data_processed,
        data_remaining=p.data_remaining,
        memory_dirty_rate=p.memory_dirty_rate,
        postcopy=p.postcopy,
    )


_POWER_FIELDS: dict[c.PowerAction, str] = {
    c.PowerAction.SUSPEND: "suspend",
    c.PowerAction.RESUME: "resume",
    c.PowerAction.START: "start",
    c.PowerAction.STOP: "stop",
}
_POWER_FROM_FIELD = {v: k for k, v in _POWER_FIELDS.items()}


def envelope_to_pb(envelope: c.Envelope) -> apb.Command:
    """A command with its id and deadline (0 = none) as the wire's `Command`."""
    msg = apb.Command(id=envelope.id)
    if envelope.deadline > 0:
        msg.deadline.CopyFrom(timestamp(envelope.deadline))
    command = envelope.command
    if isinstance(command, c.CreateVM):
        msg.create.CopyFrom(
            apb.CreateVM(
                vm_id=command.vm_id,
                spec=spec_to_pb(command.spec),
                generation=command.generation,
                start_paused=command.start_paused,
                address=command.address,
                gateway=command.gateway,
            )
        )
    elif isinstance(command, c.DeleteVM):
        msg.delete.CopyFrom(
            apb.VMTarget(
                vm_id=command.vm_id,
                name=command.name,
                generation=command.generation,
                address=command.address,
            )
        )
    elif isinstance(command, c.ChangePower):
        target = apb.VMTarget(vm_id=command.vm_id, name=command.name, generation=command.generation)
        getattr(msg, _POWER_FIELDS[command.action]).CopyFrom(target)
    elif isinstance(command, c.ReadConsole):
        msg.read_console.CopyFrom(
            apb.ReadConsole(vm_id=command.vm_id, name=command.name, max_bytes=command.max_bytes)
        )
    elif isinstance(command, c.ApplyMesh):
        msg.mesh_config.CopyFrom(mesh_config_to_pb(command.config))
    elif isinstance(command, c.RotateKey):
        msg.rotate_key.CopyFrom(apb.RotateKey())
    elif isinstance(command, c.PrepareMigration):
        msg.prepare_migration.CopyFrom(
            apb.PrepareMigration(
                vm_id=command.vm_id,
                spec=spec_to_pb(command.spec),
                generation=command.generation,
                address=command.address,
                gateway=command.gateway,
            )
        )
    elif isinstance(command, c.Migrate):
        msg.migrate.CopyFrom(
            apb.MigrateVM(
                vm_id=command.vm_id,
                name=command.name,
                target=migration_target_to_pb(command.target),
                bandwidth_mbit=command.bandwidth_mbit,
                max_downtime_ms=command.max_downtime_ms,
                address=command.address,
                postcopy=command.postcopy,
                generation=command.generation,
                migration_id=command.migration_id,
                mode="" if command.mode == "live" else command.mode,
                shutdown_timeout_s=command.shutdown_timeout_s,
                time_budget_s=command.time_budget_s,
            )
        )
    elif isinstance(command, c.FinishMigration | c.LandMigration):
        which = (
            msg.finish_migration if isinstance(command, c.FinishMigration) else msg.land_migration
        )
        which.CopyFrom(
            apb.CreateVM(
                vm_id=command.vm_id,
                spec=spec_to_pb(command.spec),
                generation=command.generation,
                address=command.address,
                gateway=command.gateway,
                stay_stopped=isinstance(command, c.LandMigration) and command.stay_stopped,
            )
        )
    else:  # pragma: no cover - mypy sees every member of AgentCommand above
        raise Internal(f"no wire form for command {command!r}")
    return msg


def envelope_from_pb(msg: apb.Command) -> c.Envelope:
    """The wire's `Command` as a typed envelope; InvalidArgument when it carries no action
    (e.g. one a newer controller added)."""
    deadline = timestamp_seconds(msg.deadline) if msg.HasField("deadline") else 0.0
    return c.Envelope(id=msg.id, deadline=deadline, command=_command_from_pb(msg))


def _command_from_pb(msg: apb.Command) -> c.AgentCommand:
    action = msg.WhichOneof("action")
    if action is None:
        raise InvalidArgument(f"command {msg.id!r} has no action (from a newer controller?)")
    if action == "create":
        m = msg.create
        return c.CreateVM(
            vm_id=m.vm_id,
            spec=spec_from_pb(m.spec),
            generation=m.generation,
            start_paused=m.start_paused,
            address=m.address,
            gateway=m.gateway,
        )
    if action == "delete":
        t = msg.delete
        return c.DeleteVM(vm_id=t.vm_id, name=t.name, generation=t.generation, address=t.address)
    if action in _POWER_FROM_FIELD:
        t = getattr(msg, action)
        return c.ChangePower(
            vm_id=t.vm_id,
            name=t.name,
            generation=t.generation,
            action=_POWER_FROM_FIELD[action],
        )
    if action == "read_console":
        r = msg.read_console
        return c.ReadConsole(vm_id=r.vm_id, name=r.name, max_bytes=r.max_bytes or 65536)
    if action == "mesh_config":
        return c.ApplyMesh(mesh_config_from_pb(msg.mesh_config))
    if action == "rotate_key":
        return c.RotateKey()
    if action == "prepare_migration":
        p = msg.prepare_migration
        return c.PrepareMigration(
            vm_id=p.vm_id,
            spec=spec_from_pb(p.spec),
            generation=p.generation,
            address=p.address,
            gateway=p.gateway,
        )
    if action == "migrate":
        g = msg.migrate
        return c.Migrate(
            vm_id=g.vm_id,
            name=g.name,
            target=migration_target_from_pb(g.target),
            generation=g.generation,
            migration_id=g.migration_id,
            bandwidth_mbit=g.bandwidth_mbit,
            max_downtime_ms=g.max_downtime_ms,
            address=g.address,
            postcopy=g.postcopy,
            mode=g.mode or "live",
            shutdown_timeout_s=g.shutdown_timeout_s,
            time_budget_s=g.time_budget_s,
        )
    if action in ("finish_migration", "land_migration"):
        f = msg.finish_migration if action == "finish_migration" else msg.land_migration
        kind = c.FinishMigration if action == "finish_migration" else c.LandMigration
        command = kind(
            vm_id=f.vm_id,
            spec=spec_from_pb(f.spec),
            generation=f.generation,
            address=f.address,
            gateway=f.gateway,
        )
        if isinstance(command, c.LandMigration):
            return dataclasses.replace(command, stay_stopped=f.stay_stopped)
        return command
    raise InvalidArgument(f"command {msg.id!r}: unknown action {action!r}")  # pragma: no cover


def result_to_pb(r: c.CommandResult) -> apb.CommandResult:
    msg = apb.CommandResult(command_id=r.command_id, ok=r.error is None, console=r.console)
    if r.error is not None:
        msg.error.CopyFrom(apb.Error(code=r.error.code, message=r.error.message))
    if r.vm is not None:
        msg.vm.CopyFrom(vm_status_to_pb(r.vm))
    if r.mesh is not None:
        msg.mesh.CopyFrom(mesh_status_to_pb(r.mesh))
    if r.migration_target is not None:
        msg.migration_target.CopyFrom(migration_target_to_pb(r.migration_target))
    if r.migration_stats is not None:
        msg.migration_stats.CopyFrom(migration_stats_to_pb(r.migration_stats))
    return msg


def result_from_pb(msg: apb.CommandResult) -> c.CommandResult:
    error = None
    if not msg.ok:
        error = c.CommandError(
            msg.error.code or Internal.code,
            msg.error.message or "the agent reported a failure without a reason",
        )
    return c.CommandResult(
        command_id=msg.command_id,
        error=error,
        vm=vm_status_from_pb(msg.vm) if msg.HasField("vm") else None,
        console=msg.console,
        mesh=mesh_status_from_pb(msg.mesh) if msg.HasField("mesh") else None,
        migration_target=(
            migration_target_from_pb(msg.migration_target)
            if msg.HasField("migration_target")
            else None
        ),
        migration_stats=(
            migration_stats_from_pb(msg.migration_stats)
            if msg.HasField("migration_stats")
            else None
        ),
    )
