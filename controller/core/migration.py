"""Live migration as a named, persisted state machine.

    pre_checks ──prepared──▶ snapshot ──progress──▶ transfer ──┐
        │                        │                        │       │ the target reports it
        └─ target refused ───────┴─ source failed ────────┴──▶ failed   running, or the
                                                                  │ source's call returns
    switchover (the one transition: the VM lives on the target, its generation raised)
        ──▶ cleanup (target routes and caps it) ──▶ succeeded

Every step is persisted before the command that acts on it goes out. After a restart the
record says where the job was; the nodes' reports settle it (`migration_target_reported`,
`migration_source_reported`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.core import events as ev
from controller.core.agents import AgentsMixin
from controller.core.state import Pending
from controller.core.targets import migration_over_target
from controller.records import MigrationPhase, MigrationRecord, VMRecord
from shared.commands import (
    CommandResult,
    DeleteVM,
    FinishMigration,
    Migrate,
    MigrationStats,
    PrepareMigration,
)
from shared.domain import DesiredState, VMState
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NovaCronError,
    ResourceExhausted,
    Unavailable,
    error_from_code,
)


@dataclass(frozen=True, slots=True)
class MigrationReport:
    vm: VMRecord
    migration: MigrationRecord
    source: str
    target_reason: str
    elapsed_ms: float
    downtime_ms: float
    memory_bytes: int
    total_ms: float


MODES = ("live", "cold", "snapshot")


BUDGET_MARGIN_S = 10.0  # the agent gives up on a pre-copy this long before our deadline


def _budget(timeout_s: float) -> float:
    """The pre-copy's time budget within the command's timeout: the agent aborts (and says
    why) before the controller's deadline makes the outcome unknown."""
    return max(timeout_s - BUDGET_MARGIN_S, timeout_s / 2)


class MigrationMixin(AgentsMixin):
    def on_migrate(self, event: ev.MigrateRequested) -> None:
        vm = self.state.find_vm(event.name_or_id)
        name, source = vm.spec.name, vm.node_id
        active = self.state.migration_of(vm.id)
        if active is not None or vm.migrating_to:
            raise FailedPrecondition(f"VM {name!r} is already migrating to {vm.migrating_to!r}")
        if vm.id in self._creating_ids() or vm.desired is DesiredState.DELETED:
            raise FailedPrecondition(f"VM {name!r} is being created or deleted")
        if event.mode not in MODES:
            raise InvalidArgument(f"unknown migration mode {event.mode!r}: {', '.join(MODES)}")
        if event.postcopy and event.mode != "live":
            raise InvalidArgument(
                f"post-copy is a kind of live migration; not with --mode {event.mode}"
            )
        if vm.state not in (VMState.RUNNING, VMState.PAUSED) and not (
            event.mode == "cold" and vm.state is VMState.STOPPED
        ):
            raise FailedPrecondition(
                f"VM {name!r} is {vm.state.value}; only a running or paused VM can be migrated"
                " (a stopped one: with --mode cold)"
            )
        if not self.state.connected(source):
            raise Unavailable(f"node {source!r}, where VM {name!r} runs, is not connected")
        target, reason = self._migration_target(vm, event.target)
        if not self.state.connected(target):
            raise Unavailable(f"node {target!r} is not connected")
        mig = MigrationRecord(
            id=self.new_id("migration"),
            vm_id=vm.id,
            vm_name=name,
            source=source,
            target=target,
            phase=MigrationPhase.PRE_CHECKS,
            from_generation=vm.generation,
            to_generation=vm.generation + 1,
            mode="postcopy" if event.postcopy else event.mode,
            reason=event.reason or reason,
            priority=event.priority,
            max_downtime_ms=event.max_downtime_ms or self.settings.max_downtime_ms,
            bandwidth_mbit=event.bandwidth_mbit or self.settings.migration_bandwidth_mbit,
            started_at=self._now,
            phase_times=((MigrationPhase.PRE_CHECKS.value, self._now),),
            stimulus_id=event.stimulus_id,
            timeout_s=event.timeout or self.settings.migration_timeout,
            stays_stopped=vm.state is VMState.STOPPED,  # only cold moves take one
        )
        mig = self.put_migration(mig)
        self.journal.put(self.state.migration_callers, mig.id, (event.stimulus_id, reason))
        vm = self.set_vm_state(vm, vm.state, f"migrating to {target}", migrating_to=target)
        self.audit("vm.migrate", vm.id, f"name={name} from={source} to={target} id={mig.id}")
        fields = self.placed_fields(vm)
        self.send(
            target,
            PrepareMigration(generation=mig.to_generation, **fields),  # type: ignore[arg-type]
            purpose="mig_prepare",
            vm_id=vm.id,
            migration_id=mig.id,
            doing=f"preparing node {target!r} for VM {name!r}",
        )

    def _migration_target(self, vm: VMRecord, wanted: str) -> tuple[str, str]:
        """The node to migrate to and why: `wanted` if every placement filter accepts it for
        this VM (data residency, capacity, ...), else the best other node by placement."""
        table = self.state.node_table(self._now)
        request = self.engine.request(vm.spec)
        explanation = self.engine.decide(table, request, k=len(table))
        if wanted:
            self.state.get_node(wanted)
            if wanted == vm.node_id:
                raise InvalidArgument(f"VM {vm.spec.name!r} already runs on {wanted!r}")
            for rejection in explanation.rejections:
                if rejection.node_id == wanted:
                    raise FailedPrecondition(
                        f"node {wanted!r} cannot take VM {vm.spec.name!r}: "
                        f"{rejection.filter}: {rejection.reason}"
                    )
            return wanted, "requested"
        for candidate in explanation.candidates:
            if candidate.node_id != vm.node_id:
                return candidate.node_id, candidate.one_line()
        detail = explanation.summary
        if explanation.node_id is not None:  # "placed on X: 1/3 nodes fit; ..." -> the counts
            detail = detail.split(": ", 1)[1]
        raise ResourceExhausted(
            f"no other node can take VM {vm.spec.name!r} (it runs on {vm.node_id!r}): {detail}"
        )

    # ------------------------------------------------------------ answers

    def on_prepare_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        mig = self.state.migrations.get(pending.migration_id)
        vm = self.state.vms.get(pending.vm_id)
        if mig is None or vm is None or not mig.active:
            return
        error = lost or (
            result.error.to_exception(pending.doing) if result and result.error else None
        )
        if error is not None or result is None or result.migration_target is None:
            self._fail_before_arrival(mig, error or FailedPrecondition("no migration target"))
            return
        mig = self.put_migration(replace(mig, phase=MigrationPhase.SNAPSHOT))
        self.send(
            mig.source,
            Migrate(
                vm.id,
                vm.spec.name,
                result.migration_target,
                mig.to_generation,
                migration_id=mig.id,
                bandwidth_mbit=mig.bandwidth_mbit,
                max_downtime_ms=mig.max_downtime_ms,
                address=vm.address,
                postcopy=mig.mode == "postcopy",
                mode=mig.mode if mig.offline else "live",
                shutdown_timeout_s=self.settings.cold_shutdown_timeout,
                time_budget_s=_budget(mig.timeout_s or self.settings.deploy_timeout),
            ),
            purpose="mig_migrate",
            timeout=mig.timeout_s or self.settings.deploy_timeout,
            vm_id=vm.id,
            migration_id=mig.id,
            doing=f"migrating VM {vm.spec.name!r} from {mig.source!r} to {mig.target!r}",
        )

    def on_progress(self, event: ev.AgentProgress) -> None:
        p = event.progress
        mig = self.state.migrations.get(p.migration_id) or self.state.migration_of(p.vm_id)
        if mig is None or not mig.active or event.node_id != mig.source:
            return
        phase = mig.phase
        if phase in (MigrationPhase.SNAPSHOT, MigrationPhase.PRE_CHECKS):
            phase = MigrationPhase.TRANSFER
        self.put_migration(
            replace(
                mig,
                phase=phase,
                bytes_total=p.data_total,
                bytes_transferred=p.data_processed,
                bytes_remaining=p.data_remaining,
            )
        )

    def on_migrate_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        mig = self.state.migrations.get(pending.migration_id)
        vm = self.state.vms.get(pending.vm_id)
        if mig is None or vm is None or not mig.active:
            return
        name = vm.spec.name
        if lost is not None:
            if not mig.arrived:
                # The source's libvirtd drives the migration, not its agent: it may still
                # land. Nothing is undone; the record settles where the VM is reported.
                self.set_vm_state(
                    vm,
                    VMState.UNKNOWN,
                    f"migration to {mig.target} outcome unknown ({lost}); "
                    "settles when the nodes report",
                )
                kind = DeadlineExceeded if isinstance(lost, DeadlineExceeded) else Unavailable
                self.answer_migration(
                    mig.id,
                    error=kind(
                        f"{lost}; the migration of VM {name!r} may still complete: "
                        f"`novacron vm show {name}` tells where it runs once the nodes report"
                    ),
                )
                return
            self.log.warning("migration call failed after arrival", vm_id=vm.id, error=str(lost))
        elif result is not None and result.error is not None:
            error = result.error.to_exception(pending.doing)
            if not mig.arrived:  # the source agent says it failed: libvirt rolled back
                self._fail_before_arrival(mig, error)
                return
            # ...unless the guest had already run on the target (post-copy): it stays
            # recorded there, where its running half is, and the caller hears the failure
            self.log.warning("migration call failed after arrival", vm_id=vm.id, error=str(error))
            mig = self.put_migration(replace(mig, error=str(error), error_code=error.code))
        if mig.offline and not mig.arrived:  # the files are in: land it there
            mig = self.put_migration(replace(mig, bytes_remaining=0))
            self.land(mig)
            return
        if not mig.arrived:
            mig = self.switch_over(mig, "the source's job completed")
        self._clean_up(mig)

    def on_finish_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        mig = self.state.migrations.get(pending.migration_id)
        vm = self.state.vms.get(pending.vm_id)
        if mig is None or vm is None:
            return
        error = lost or (
            result.error.to_exception(pending.doing) if result and result.error else None
        )
        stats = result.migration_stats if result is not None else None
        if result is not None and result.vm is not None and error is None:
            vm = self.observe(vm, result.vm.state, result.vm.reason or "reported by node")
        self._finish(mig, vm, stats, error)

    # ------------------------------------------------------------ transitions

    def switch_over(self, mig: MigrationRecord, why: str) -> MigrationRecord:
        """THE transition: the VM lives on the target from now on, at the new generation.
        Persisted before anything acts on it; every site's route to it follows."""
        vm = self.state.vms[mig.vm_id]
        self.set_vm_state(
            vm,
            VMState.STOPPED if mig.stays_stopped else VMState.RUNNING,
            f"migrated from {mig.source}",
            node_id=mig.target,
            generation=mig.to_generation,
        )
        self.log.info(
            "vm switched over", vm_id=vm.id, source=mig.source, target=mig.target, why=why
        )
        mig = self.put_migration(
            replace(mig, phase=MigrationPhase.SWITCHOVER, switched_at=self._now)
        )
        if vm.address:
            self.push_mesh()
        return mig

    def _clean_up(self, mig: MigrationRecord) -> None:
        """The source released it: the VM holds capacity only on the target; the target is
        asked to route and cap it and to report the job's figures."""
        vm = self.state.vms[mig.vm_id]
        vm = self.set_vm_state(vm, vm.state, vm.state_reason, migrating_to="")
        mig = self.put_migration(replace(mig, phase=MigrationPhase.CLEANUP))
        if mig.offline:
            self.release_source(mig)
        if not self.state.connected(mig.target) or mig.stays_stopped:  # nothing to route
            self._finish(mig, vm, None, None)
            return
        fields = self.placed_fields(vm)
        self.send(
            mig.target,
            FinishMigration(generation=mig.to_generation, **fields),  # type: ignore[arg-type]
            purpose="mig_finish",
            vm_id=vm.id,
            migration_id=mig.id,
            doing=f"finishing VM {vm.spec.name!r} on {mig.target!r}",
        )

    def _finish(
        self,
        mig: MigrationRecord,
        vm: VMRecord,
        stats: MigrationStats | None,
        error: NovaCronError | None,
    ) -> None:
        if error is None and mig.error:  # it failed after the VM had arrived (post-copy)
            error = error_from_code(mig.error_code, mig.error)
        done = replace(
            mig,
            phase=MigrationPhase.FAILED if error else MigrationPhase.SUCCEEDED,
            finished_at=self._now,
            error=str(error) if error else "",
            error_code=error.code if error else "",
            downtime_ms=stats.downtime_ms if stats else mig.downtime_ms,
            elapsed_ms=stats.elapsed_ms if stats else mig.elapsed_ms,
            bytes_remaining=0 if error is None else mig.bytes_remaining,
        )
        done = self.put_migration(done)
        migration_over_target(self.log, done, self.settings)
        name = vm.spec.name
        if error is not None:
            self.answer_migration(
                mig.id,
                error=type(error)(
                    f"{error}; VM {name!r} is recorded on {mig.target!r}, where it ran last: "
                    f"`novacron vm show {name}` tells its state"
                ),
            )
            return
        self.log.info("vm migrated", vm_id=vm.id, name=name, source=mig.source, target=mig.target)
        self.answer_migration(
            mig.id,
            MigrationReport(
                vm=vm,
                migration=done,
                source=mig.source,
                target_reason=self.state.migration_callers.get(mig.id, ("", mig.reason))[1],
                elapsed_ms=done.elapsed_ms,
                downtime_ms=done.downtime_ms,
                memory_bytes=stats.memory_bytes if stats else 0,
                total_ms=(self._now - mig.started_at) * 1000,
            ),
        )

    # provided by the offline migration mixin
    def land(self, mig: MigrationRecord) -> None:
        raise NotImplementedError

    def release_source(self, mig: MigrationRecord) -> None:
        raise NotImplementedError

    def restart_source(self, mig: MigrationRecord) -> None:
        raise NotImplementedError

    def _fail_before_arrival(self, mig: MigrationRecord, error: NovaCronError) -> None:
        """Nothing moved: the VM keeps running on its source (cold or snapshot: it is started
        there again); what the target staged goes."""
        vm = self.state.vms[mig.vm_id]
        if mig.offline:
            self.restart_source(mig)
        self.set_vm_state(vm, vm.state, f"migration to {mig.target} failed", migrating_to="")
        self.put_migration(
            replace(
                mig,
                phase=MigrationPhase.FAILED,
                error=str(error),
                error_code=error.code,
                finished_at=self._now,
            )
        )
        error = type(error)(f"{error}; VM {vm.spec.name!r} keeps running on {mig.source!r}")
        if self.state.connected(mig.target):  # no address: it was never routed there
            self.send(
                mig.target,
                DeleteVM(vm.id, vm.spec.name),
                purpose="mig_unstage",
                vm_id=vm.id,
                migration_id=mig.id,
            )  # the caller hears of the failure once the target has cleaned up
            self.journal.put(self.state.unstaging, mig.id, error)
        else:
            self.answer_migration(mig.id, error=error)

    def on_unstage_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        if lost is not None or (result is not None and result.error is not None):
            why = (
                str(lost)
                if lost is not None
                else result.error.message
                if result and result.error
                else ""
            )
            self.log.warning(
                "unstaging an abandoned migration failed", vm_id=pending.vm_id, error=why
            )
        error = self.journal.pop(self.state.unstaging, pending.migration_id)
        mig = self.state.migrations.get(pending.migration_id)
        if mig is not None and error is not None:
            self.answer_migration(mig.id, error=error)
