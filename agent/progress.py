"""Live-migration progress on the source: poll the hypervisor's job stats while a migration
runs and hand each reading to the session (which sends it up as `migration_progress`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import structlog

from shared.commands import MigrationProgress
from shared.errors import NovaCronError

log = structlog.get_logger(__name__)

PROGRESS_INTERVAL_S = 0.5

ProgressSink = Callable[[MigrationProgress], None]
"""Called on the event loop with each reading; must not block."""

ProgressSource = Callable[[str], MigrationProgress | None]
"""Blocking (`Hypervisor.migration_progress`): called off the event loop."""


async def watch_migration(
    job: asyncio.Future[None],
    source: ProgressSource,
    emit: ProgressSink,
    vm_id: str,
    migration_id: str,
    interval_s: float = PROGRESS_INTERVAL_S,
) -> None:
    """Until `job` (the running migration) ends: every `interval_s` read the job's figures and
    emit them. When it ends well, emit one last reading with nothing remaining. Never raises for
    the job's own outcome (its awaiter sees that) nor for a failed reading (logged)."""
    last: MigrationProgress | None = None
    while True:
        done, _ = await asyncio.wait({job}, timeout=interval_s)
        if done:
            break
        try:
            reading = await asyncio.to_thread(source, vm_id)
        except NovaCronError as exc:
            log.debug("migration progress unreadable", vm_id=vm_id, error=str(exc))
            continue
        if reading is None or job.done():  # no job (yet), or the reading came after the end
            continue
        last = replace(reading, vm_id=vm_id, migration_id=migration_id)
        _emit(emit, last)
    if job.cancelled() or job.exception() is not None:
        return
    if last is None:
        last = MigrationProgress(vm_id, migration_id, 0, 0, 0)
    total = max(last.data_total, last.data_processed)
    final = replace(last, data_total=total, data_processed=total, data_remaining=0)
    _emit(emit, replace(final, memory_dirty_rate=0))


def _emit(emit: ProgressSink, progress: MigrationProgress) -> None:
    try:
        emit(progress)
    except Exception:  # a broken sink must not break the migration
        log.exception("migration progress not sent", vm_id=progress.vm_id)
