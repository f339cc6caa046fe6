"""The spec's performance targets (edge_computing.target_*): targets, not knobs. Nothing is
refused for missing one; a deploy or migration that took longer is logged as a warning, so
an operator sees where the fleet falls short (placement decisions: controller/placement)."""

from __future__ import annotations

from typing import Any

from controller.core.state import Settings
from controller.records import MigrationPhase, MigrationRecord

KEYS = {"provision": "target_provision_time", "migration": "target_migration_time"}


def over_target(log: Any, what: str, seconds: float, settings: Settings, **fields: Any) -> bool:
    """Log `what` ("provision" or "migration") if it took longer than its target."""
    target = settings.target_provision_s if what == "provision" else settings.target_migration_s
    if seconds <= target:
        return False
    log.warning(
        f"{what} over edge_computing.{KEYS[what]}",
        seconds=round(seconds, 3),
        target_s=target,
        **fields,
    )
    return True


def migration_over_target(log: Any, mig: MigrationRecord, settings: Settings) -> bool:
    """A migration that succeeded, logged if it took longer than target_migration_time."""
    if mig.phase is not MigrationPhase.SUCCEEDED or not mig.finished_at:
        return False
    seconds = mig.finished_at - mig.started_at
    return over_target(log, "migration", seconds, settings, migration_id=mig.id, vm=mig.vm_id)
