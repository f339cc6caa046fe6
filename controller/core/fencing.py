"""The controller's one rule for a copy of a VM a node reports: is it the VM, a copy to destroy,
one arriving by migration, or something to leave alone and show?

Generations only grow: every change of where a VM should run (deploy, migration switchover,
re-placement) raises it before the command is sent, so an older copy is provably not the VM.
A copy the controller has no record of is never destroyed on that ground alone: absence of a
record is not deletion (only a tombstone is).
"""

from __future__ import annotations

import enum

from controller.records import MigrationRecord, Tombstone, VMRecord
from shared.domain import DesiredState, VMStatus


class Verdict(enum.StrEnum):
    OURS = "ours"  # the VM itself, where its record says
    ARRIVING = "arriving"  # the target's copy of an active migration
    LEAVING = "leaving"  # the source's copy of an active migration
    STALE = "stale"  # an older generation, a deleted VM: destroy it
    ORPHAN = "orphan"  # no record (or a same-or-newer copy elsewhere): leave it, show it


def judge(
    node_id: str,
    status: VMStatus,
    record: VMRecord | None,
    tombstone: Tombstone | None,
    migration: MigrationRecord | None,
) -> tuple[Verdict, str]:
    """What `status`, reported by `node_id`, is; with the reason for anything but OURS.
    `migration` is the VM's latest migration (active or not)."""
    if record is None:
        if tombstone is not None and status.generation <= tombstone.generation:
            return Verdict.STALE, f"deleted (generation {tombstone.generation})"
        return Verdict.ORPHAN, "the controller has no record of this VM"
    if record.desired is DesiredState.DELETED:
        return Verdict.STALE, "deletion requested"
    if (
        migration is not None
        and not migration.active
        and migration.arrived
        and node_id == migration.target == record.node_id
        and status.generation == migration.from_generation
    ):  # it landed; the node had not yet stamped the new generation on its copy
        return Verdict.OURS, ""
    if (
        migration is not None
        and not migration.active
        and not migration.arrived
        and node_id == migration.target
        and status.generation == migration.to_generation > record.generation
    ):  # given up, then it landed: only that migration gives a copy this generation
        return Verdict.ARRIVING, f"landed late by migration {migration.id}"
    if (
        migration is not None
        and not migration.active
        and not migration.arrived
        and node_id == migration.source == record.node_id
        and status.generation == migration.from_generation
        and record.generation > migration.to_generation
    ):  # given back to its source (the target was lost while landing it), not yet stamped
        return Verdict.OURS, ""
    if migration is not None and migration.active:
        if node_id == migration.target and status.generation in (
            migration.from_generation,
            migration.to_generation,
        ):
            return Verdict.ARRIVING, f"arriving by migration {migration.id}"
        if node_id == migration.source and status.generation == migration.from_generation:
            return Verdict.LEAVING, f"leaving by migration {migration.id}"
    if status.generation < record.generation:
        where = "here" if record.node_id == node_id else f"on {record.node_id}"
        return Verdict.STALE, (
            f"generation {status.generation} is older than the VM's {record.generation} ({where})"
        )
    if record.node_id == node_id and status.generation == record.generation:
        return Verdict.OURS, ""
    if record.node_id == node_id:
        return Verdict.ORPHAN, (
            f"generation {status.generation} is newer than the record's {record.generation}"
        )
    return Verdict.ORPHAN, (
        f"a copy at generation {status.generation} on {node_id}, but the VM lives on "
        f"{record.node_id} at generation {record.generation}"
    )
