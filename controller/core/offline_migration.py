"""Cold and snapshot migration: the same record and phases as live migration
(`controller.core.migration`), with the guest stopped while its files move.

    pre_checks ──prepared──▶ snapshot ──source stops/saves──▶ transfer ──files in──▶ switchover
       │                        │                                │        (LandMigration sent)
       └─ target refused ───────┴─ source failed (it runs there again) ──┴──▶ failed
    switchover ──the target runs it──▶ arrived (generation raised) ──▶ cleanup: the target
    routes and caps it, the source's stopped copy is deleted ──▶ succeeded
    switchover ──the target could not run it──▶ failed: the source's copy is started again
    (a saved one restored: the guest goes on where it was), the target's staging removed

After a controller restart in switchover, only the target's report settles it: the VM in its
hello switches over; its hello without the VM fails the move and starts the source's copy.
A target that is lost in switchover may have started it before it went: once that copy is
provably stopped (the VM's disconnect policy, as for a failover), the source's copy gets the
VM again at a generation above the target's, so the target destroys its copy when it returns.

Until the target runs the guest, the source keeps its copy defined and startable, so no
failure loses the VM; the target's copy gets the new generation, so a source that missed the
end is told to destroy its older one."""

from __future__ import annotations

from dataclasses import replace

from controller.core.disconnect import due_at, in_force
from controller.core.migration import MigrationMixin
from controller.core.state import Pending
from controller.records import MigrationPhase, MigrationRecord
from shared.commands import ChangePower, CommandResult, DeleteVM, LandMigration, PowerAction
from shared.domain import DesiredState
from shared.errors import FailedPrecondition, NovaCronError, Unavailable


class OfflineMigrationMixin(MigrationMixin):
    def land(self, mig: MigrationRecord) -> None:
        """The source's files are in the target's staged directory: the target runs it."""
        vm = self.state.vms[mig.vm_id]
        if not self.state.connected(mig.target):
            self._fail_before_arrival(
                mig, Unavailable(f"node {mig.target!r} left before the VM landed")
            )
            return
        # persisted before the command: after a restart, the target's report settles it
        mig = self.put_migration(replace(mig, phase=MigrationPhase.SWITCHOVER))
        fields = self.placed_fields(vm)
        self.send(
            mig.target,
            LandMigration(
                generation=mig.to_generation,
                stay_stopped=mig.stays_stopped,
                **fields,  # type: ignore[arg-type]
            ),
            purpose="mig_land",
            timeout=self.settings.deploy_timeout,
            vm_id=vm.id,
            migration_id=mig.id,
            doing=f"starting VM {vm.spec.name!r} on {mig.target!r}",
        )

    def on_land_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        mig = self.state.migrations.get(pending.migration_id)
        vm = self.state.vms.get(pending.vm_id)
        if mig is None or vm is None or not mig.active or mig.arrived:
            return
        error = result.error.to_exception(pending.doing) if result and result.error else None
        if lost is not None:  # it may run there: the target's report settles it
            self.log.warning("landing outcome unknown", vm_id=vm.id, error=str(lost))
            self.answer_migration(
                mig.id,
                error=type(lost)(
                    f"{lost}; VM {vm.spec.name!r} may be running on {mig.target!r}: "
                    f"`novacron vm show {vm.spec.name}` tells once the nodes report"
                ),
            )
            return
        if error is not None or result is None:
            self._fail_before_arrival(mig, error or Unavailable("no answer"))
            return
        mig = self.switch_over(mig, f"{mig.target} runs it")
        self._clean_up(mig)

    def landings_not_reported(self, node_id: str, reported: set[str]) -> None:
        """The hello of a node that was told to land a VM (switchover, before arrival) and
        whose command is gone (a restart, a lost session): without the VM in the hello, it
        did not land it, so the source's copy runs again. With it, reconcile switched over."""
        for mig in list(self.state.migrations.values()):
            if (
                mig.active
                and mig.offline
                and mig.target == node_id
                and mig.phase is MigrationPhase.SWITCHOVER
                and not mig.arrived
                and mig.vm_id not in reported
                and not any(p.migration_id == mig.id for p in self.state.pending.values())
            ):
                self._fail_before_arrival(
                    mig, FailedPrecondition(f"did not finish: {node_id} did not start the VM")
                )

    def recover_lost_landings(self, node_id: str, reason: str) -> None:
        """The tick's part for a lost node: moves it was landing (switchover, the outcome
        unknown) go back to their source once the target's copy is provably stopped."""
        landing = [
            m
            for m in self.state.migrations.values()
            if m.active
            and m.offline
            and m.target == node_id
            and m.phase is MigrationPhase.SWITCHOVER
            and not m.arrived
            and not any(p.migration_id == m.id for p in self.state.pending.values())
        ]
        if not landing:
            return
        last_heard = self.state.last_heard(node_id)
        lost_at = self.state.lost_at.get(node_id, self._now)
        dead = node_id in self.state.declared_dead
        for mig in landing:
            vm = self.state.vms[mig.vm_id]
            policy = in_force(vm.spec.disconnect, self.settings.failover)
            margin = self.settings.failover.clock_margin_s
            due, why = due_at(policy, last_heard, lost_at, margin, node_is_dead=dead)
            lead = f"its move's target {node_id} was lost while landing it"
            if due is None or due > self._now:
                when = why if due is None else f"in {due - self._now:.1f}s ({why})"
                self.journal.put(
                    self.state.failover_waiting, vm.id, f"{lead}: back on {mig.source} {when}"
                )
            elif not self.state.connected(mig.source):
                self.journal.put(
                    self.state.failover_waiting,
                    vm.id,
                    f"{lead}: back on {mig.source} once {mig.source} reports",
                )
            else:
                self._back_to_source(mig, f"{lead} ({reason})")

    def _back_to_source(self, mig: MigrationRecord, why: str) -> None:
        """The source's copy is the VM again, at a generation above the target's copy (which
        may have run before the target went): persisted before the source is told."""
        vm = self.state.vms[mig.vm_id]
        generation = self.state.next_generation(vm)
        self.put_migration(
            replace(
                mig,
                phase=MigrationPhase.FAILED,
                error=f"{why}; the VM runs on {mig.source} again, at generation {generation}",
                error_code=Unavailable.code,
                finished_at=self._now,
            )
        )
        self.set_vm_state(
            vm, vm.state, f"back on {mig.source}: {why}", generation=generation, migrating_to=""
        )
        self.journal.pop(self.state.failover_waiting, vm.id)
        self.audit(
            "vm.migration.recovered",
            vm.id,
            f"name={vm.spec.name} source={mig.source} target={mig.target} "
            f"generation={generation} reason={why}",
        )
        self.log.warning(
            "move given back to its source", vm_id=vm.id, source=mig.source, why=why,
            generation=generation,
        )  # fmt: skip
        self.answer_migration(mig.id, error=Unavailable(f"{why}; it runs on {mig.source} again"))
        if not mig.stays_stopped and vm.desired in (DesiredState.RUNNING, DesiredState.PAUSED):
            self.send(
                mig.source,
                ChangePower(vm.id, vm.spec.name, generation, PowerAction.START),
                purpose="mig_restart_source",
                vm_id=vm.id,
                migration_id=mig.id,
            )

    def release_source(self, mig: MigrationRecord) -> None:
        """After the switch-over: the source's stopped copy (and its files) go. A source
        that is away is told at its next hello (its copy is older)."""
        vm = self.state.vms[mig.vm_id]
        if not self.state.connected(mig.source):
            return
        self.send(
            mig.source,
            DeleteVM(vm.id, vm.spec.name, mig.from_generation, vm.address),
            purpose="mig_release_source",
            vm_id=vm.id,
            migration_id=mig.id,
        )

    def restart_source(self, mig: MigrationRecord) -> None:
        """The move failed after the source stopped the guest: run it there again (a saved
        one is restored by its agent, so the guest goes on where it was)."""
        vm = self.state.vms[mig.vm_id]
        if mig.stays_stopped:
            return  # it was stopped before its move: it stays so, defined where it was
        if not self.state.connected(mig.source):
            return  # its hello's reconcile starts it: the VM is desired running there
        self.send(
            mig.source,
            ChangePower(vm.id, vm.spec.name, mig.from_generation, PowerAction.START),
            purpose="mig_restart_source",
            vm_id=vm.id,
            migration_id=mig.id,
        )

    def on_source_command_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        """Releasing or restarting the source's copy: its report is the VM's state there."""
        vm = self.state.vms.get(pending.vm_id)
        problem = str(lost) if lost else result.error.message if result and result.error else ""
        if problem:
            self.log.warning(
                "source copy command failed", vm_id=pending.vm_id, purpose=pending.purpose,
                error=problem,
            )  # fmt: skip
        elif (
            pending.purpose == "mig_restart_source"
            and vm is not None
            and vm.node_id == pending.node_id
            and result is not None
            and result.vm is not None
        ):
            self.observe(vm, result.vm.state, "started again after its migration failed")
