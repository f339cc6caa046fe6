"""The libvirt driver's live migration: migrateToURI3 (peer-to-peer, the disk overlay
copied, optionally post-copy), and the job's stats while it runs and once it completed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import libvirt
import structlog

from agent.fencing import fence
from agent.hypervisor.base import MigrationProgress, MigrationStats, MigrationTarget
from agent.hypervisor.job_watch import beside
from agent.hypervisor.libvirt_connection import LibvirtConnection, _error_code, _mapped
from agent.hypervisor.migration_xml import _migrated_disks, _migration_problem, _retarget_xml
from agent.hypervisor.postcopy_recovery import (
    WINDOW_WITHOUT_BUDGET_S,
    PostcopyWatch,
    pause_when_stalled,
    resume_postcopy,
)
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NovaCronError,
)

log = structlog.get_logger(__name__)

# live, peer-to-peer (the source's libvirtd drives it), persistent there and gone from here
MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
_MIGRATABLE_STATES = (
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
)


class LibvirtMigration(LibvirtConnection):
    """Live-migrate our domains and report the job's figures."""

    def migrate(
        self,
        vm_id: str,
        target: MigrationTarget,
        bandwidth_mbit: int = 0,
        max_downtime_ms: int = 0,
        *,
        postcopy: bool = False,
        generation: int = 0,
        time_budget_s: float = 0.0,
    ) -> None:
        if bandwidth_mbit < 0 or max_downtime_ms < 0:
            raise InvalidArgument(
                f"migrate {vm_id}: bandwidth_mbit and max_downtime_ms must be >= 0, "
                f"got {bandwidth_mbit} and {max_downtime_ms}"
            )
        if not target.libvirt_uri:
            raise InvalidArgument(f"migrate {vm_id}: the target has no libvirt URI")
        dom = self._require(vm_id)
        with _mapped("migrate", vm_id):
            meta = self._meta(dom)
            state = dom.state()[0]
        if meta is not None and generation > 0:
            fence(meta.generation, generation, f"migrate vm {vm_id}")
        with _mapped("migrate", vm_id):
            if state not in _MIGRATABLE_STATES:
                what = "stopped" if state == libvirt.VIR_DOMAIN_SHUTOFF else "not running"
                raise FailedPrecondition(
                    f"migrate {vm_id}: the vm is {what}; only a running or paused vm can move"
                )
            live_xml = str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
            # the persistent definition may be newer than the live one (see create)
            persist_xml = str(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
        problem = _migration_problem(live_xml) or _migration_problem(persist_xml)
        if problem:
            raise FailedPrecondition(f"migrate {vm_id}: {problem}")
        params: dict[str, str | int] = {
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: _retarget_xml(live_xml, target, generation),
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: _retarget_xml(persist_xml, target, generation),
        }
        if target.data_uri:  # else libvirt uses the destination's migration_host
            params[libvirt.VIR_MIGRATE_PARAM_URI] = target.data_uri
        if target.listen_address:  # the destination's QEMU (and its NBD disk server) bind it
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = target.listen_address
        if bandwidth_mbit > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = _mib_per_s(bandwidth_mbit)
            if postcopy:  # else post-copy pages go uncapped
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = _mib_per_s(bandwidth_mbit)
        flags = MIGRATE_FLAGS | (
            libvirt.VIR_MIGRATE_POSTCOPY if postcopy else libvirt.VIR_MIGRATE_AUTO_CONVERGE
        )
        disks = _migrated_disks(live_xml)
        if disks:  # the destination agent pre-created the overlay on its own base image
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks  # type: ignore[assignment]
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        where = f"{vm_id} to {target.libvirt_uri}"
        switch = PostcopyWatch()
        escalation = _Escalation(max_downtime_ms or QEMU_DEFAULT_DOWNTIME_MS, time_budget_s)
        started = time.monotonic()
        with pause_when_stalled(dom, vm_id, switch) if postcopy else nullcontext():
            try:
                with _mapped("migrate", where):
                    if max_downtime_ms > 0:
                        _set_max_downtime(dom, vm_id, max_downtime_ms)
                    with (
                        _switch_to_postcopy(dom, vm_id, switch, enabled=postcopy),
                        _escalate(dom, vm_id, escalation, enabled=not postcopy),
                    ):
                        dom.migrateToURI3(target.libvirt_uri, params, flags)
            except NovaCronError as err:
                log.warning(
                    "vm_migration_failed", vm_id=vm_id, target=target.libvirt_uri, error=str(err)
                )
                if escalation.aborted.is_set():
                    raise DeadlineExceeded(
                        f"migrate {where}: pre-copy did not converge within its "
                        f"{time_budget_s:g} s budget (pause allowed up to "
                        f"{escalation.downtime_ms} ms); aborted, the vm keeps running here"
                    ) from err
                if not switch.switched.is_set():
                    raise
                window = (
                    max(0.0, started + time_budget_s - time.monotonic())
                    if time_budget_s
                    else WINDOW_WITHOUT_BUDGET_S
                )
                why = resume_postcopy(dom, vm_id, target.libvirt_uri, params, flags, window)
                if why:
                    raise Internal(
                        f"{err}; post-copy had begun: the guest ran on the target, and part of "
                        "its memory is only here, so this node keeps it paused and nothing was "
                        f"undone; resuming it for {window:.0f} s did not work: {why}"
                    ) from err
        self._forget(vm_id)
        log.info(
            "vm_migrated",
            vm_id=vm_id,
            target=target.libvirt_uri,
            bandwidth_mbit=bandwidth_mbit,
            max_downtime_ms=max_downtime_ms,
            postcopy=postcopy,
        )

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        # Only the lookup and the job's own stats: while the job runs, every call that needs
        # the domain (its XML, its state) waits for the whole migration here (libvirt 9.0,
        # QEMU under TCG: 3 s of a 3 s job), which would hide every reading until the end.
        dom = self._lookup_any(vm_id)
        if dom is None:
            return None
        try:
            stats = dom.jobStats(0)
        except libvirt.libvirtError as err:
            if _error_code(err) in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_NO_SUPPORT,  # e.g. libvirt's test driver
                libvirt.VIR_ERR_OPERATION_INVALID,  # e.g. the domain just stopped
            ):
                return None
            raise Internal(f"migration progress {vm_id}: {err.get_error_message() or err}") from err
        postcopy = int(stats.get("memory_postcopy_requests", 0)) > 0
        return _migration_progress(vm_id, stats, postcopy=postcopy)

    def migration_stats(self, vm_id: str) -> MigrationStats | None:
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        try:
            stats = dom.jobStats(flags)
        except libvirt.libvirtError as err:
            if _error_code(err) in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_NO_SUPPORT,  # e.g. libvirt's test driver
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                return None
            raise Internal(f"migration stats {vm_id}: {err.get_error_message() or err}") from err
        return _migration_stats(stats)


POSTCOPY_POLL_S = 0.05


@contextmanager
def _switch_to_postcopy(
    dom: libvirt.virDomain, vm_id: str, state: PostcopyWatch, *, enabled: bool
) -> Iterator[None]:
    """While the body runs the migration job: switch it to post-copy as soon as memory moves.

    From the start, not after a pre-copy pass, so that every page is sent once from the paused
    source and nothing relies on tracking pages dirtied meanwhile (a long pre-copy under TCG
    corrupted busy guests, docs/migration.md). libvirt has no event for "memory started" (the
    iteration event comes after the first pass), so the job is polled."""
    if not enabled:
        yield
        return
    done = threading.Event()

    def switch() -> None:
        while not done.wait(POSTCOPY_POLL_S):
            try:
                stats = dom.jobStats(0)
                if int(stats.get("memory_total", 0)) <= 0:
                    continue  # not started, or still mirroring the disk
                dom.migrateStartPostCopy(0)
            except libvirt.libvirtError as err:
                log.debug("postcopy_not_yet", vm_id=vm_id, error=str(err))
                continue
            # QEMU acts on the request at its next iteration, and only while much is left:
            # a job this close to converging finishes as pre-copy, which is just as sound.
            # Failing after the request, the source's half is kept paused either way.
            state.switched.set()
            log.info("vm_migration_postcopy_requested", vm_id=vm_id)
            return

    with beside(switch, done, f"postcopy-{vm_id}"):
        yield


def _set_max_downtime(dom: libvirt.virDomain, vm_id: str, downtime_ms: int) -> None:
    """The pause to aim for; a driver without the call (libvirt's test driver) migrates, or
    fails to, without it."""
    try:
        dom.migrateSetMaxDowntime(downtime_ms, 0)
    except libvirt.libvirtError as err:
        if _error_code(err) != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        log.warning("max_downtime_not_supported", vm_id=vm_id, error=str(err))


QEMU_DEFAULT_DOWNTIME_MS = 300
DOWNTIME_CAP_MS = 2000  # the most an escalation allows: a pause users notice, but bounded
ESCALATION_STEPS = 6  # the budget's parts: a raise at each, the abort at the end


@dataclass(slots=True)
class _Escalation:
    """A pre-copy's bounded patience: the pause allowed doubles at each sixth of the time
    budget (up to DOWNTIME_CAP_MS), and at the end of it the job is aborted."""

    downtime_ms: int
    budget_s: float
    aborted: threading.Event = field(default_factory=threading.Event)

    def next_downtime_ms(self) -> int:
        return min(DOWNTIME_CAP_MS, max(self.downtime_ms * 2, 1))


@contextmanager
def _escalate(
    dom: libvirt.virDomain, vm_id: str, state: _Escalation, *, enabled: bool
) -> Iterator[None]:
    """While the body runs a pre-copy job: escalate as _Escalation says (0 budget: never).
    Auto-converge (set at the start) throttles the guest's CPU meanwhile if QEMU sees the
    dirty rate outrun the link."""
    if not enabled or state.budget_s <= 0:
        yield
        return
    done = threading.Event()
    step = state.budget_s / ESCALATION_STEPS

    def escalate() -> None:
        for k in range(1, ESCALATION_STEPS + 1):
            if done.wait(step):
                return
            try:
                if k == ESCALATION_STEPS:
                    state.aborted.set()
                    log.warning("vm_migration_aborted", vm_id=vm_id, budget_s=state.budget_s)
                    dom.abortJob()
                    return
                downtime = state.next_downtime_ms()
                dom.migrateSetMaxDowntime(downtime, 0)
                state.downtime_ms = downtime
                log.info("vm_migration_downtime_raised", vm_id=vm_id, downtime_ms=downtime)
            except libvirt.libvirtError as err:  # the job ended meanwhile
                log.debug("escalation_skipped", vm_id=vm_id, error=str(err))

    with beside(escalate, done, f"escalate-{vm_id}"):
        yield


def _mib_per_s(mbit: int) -> int:
    """libvirt's migration bandwidth unit (MiB/s) for `mbit` Mbit/s: rounded up, at least 1."""
    return max(1, -(-mbit * 1_000_000 // (8 * 1024 * 1024)))


DEFAULT_PAGE_SIZE = 4096


def _migration_progress(
    vm_id: str, stats: dict[str, Any], *, postcopy: bool = False
) -> MigrationProgress | None:
    """Our figures from a running job's stats (virDomainGetJobStats), or None when no
    migration runs or it has no figures yet (while it sets up, libvirt reports zeros, which
    must not read as "nothing remaining"). libvirt gives the dirty rate in pages/s; we report
    bytes/s."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    if stats.get("operation", libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT) not in (
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
    ):
        return None
    try:
        page = int(stats.get("memory_page_size", DEFAULT_PAGE_SIZE)) or DEFAULT_PAGE_SIZE
        if int(stats.get("data_total", 0)) <= 0:
            return None
        return MigrationProgress(
            vm_id=vm_id,
            migration_id="",
            data_total=int(stats.get("data_total", 0)),
            data_processed=int(stats.get("data_processed", 0)),
            data_remaining=int(stats.get("data_remaining", 0)),
            memory_dirty_rate=int(stats.get("memory_dirty_rate", 0)) * page,
            postcopy=postcopy,
        )
    except (TypeError, ValueError):
        return None


def _migration_stats(stats: dict[str, Any]) -> MigrationStats | None:
    """Our figures from a completed job's stats, or None when they are not a migration's."""
    if stats.get("operation", libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN) not in (
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
    ):
        return None
    try:
        return MigrationStats(
            elapsed_ms=float(stats["time_elapsed"]),
            downtime_ms=float(stats["downtime"]),
            memory_bytes=int(stats["memory_processed"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
