"""Settling migrations from what the nodes report: after a restart, after a lost call, or
when the target says the guest runs before the source's call returns."""

from __future__ import annotations

from dataclasses import replace

from controller.core.offline_migration import OfflineMigrationMixin
from controller.records import MigrationPhase, MigrationRecord
from shared.domain import VMState, VMStatus
from shared.errors import FailedPrecondition


class SettleMixin(OfflineMigrationMixin):
    def _live_command(self, mig: MigrationRecord) -> bool:
        return any(p.migration_id == mig.id for p in self.state.pending.values())

    def migration_target_reported(self, node_id: str, status: VMStatus) -> None:
        """The target runs the VM: it has landed (also after a restart, or after the call
        that moved it gave up)."""
        mig = self.state.migration_of(status.vm_id)
        if mig is None or node_id != mig.target:
            return
        landed_as = VMState.STOPPED if mig.stays_stopped else VMState.RUNNING
        if status.state is not landed_as:
            return
        if not mig.arrived:
            mig = self.switch_over(mig, f"{node_id} reports it running")
        if not self._live_command(mig):  # nothing else will finish it (also after a restart)
            self._clean_up(mig)

    def migration_source_reported(self, node_id: str, status: VMStatus) -> None:
        """The source still has the VM and nothing is moving it any more (the controller
        restarted, or the call was lost): the migration did not finish."""
        mig = self.state.migration_of(status.vm_id)
        if mig is None or mig.arrived or self._live_command(mig):
            return
        if mig.offline and status.state is VMState.STOPPED:
            if mig.phase is MigrationPhase.SWITCHOVER:
                return  # the target may be running it: its report decides
            # stopped for a cold/snapshot move that nobody drives any more: it runs there again
            self._fail_before_arrival(
                mig, FailedPrecondition(f"did not finish: {node_id} holds the stopped VM")
            )
            return
        if status.state not in (VMState.RUNNING, VMState.PAUSED):
            return
        vm = self.state.vms[mig.vm_id]
        self.set_vm_state(
            vm, status.state, f"migration to {mig.target} did not finish", migrating_to=""
        )
        self.put_migration(
            replace(
                mig,
                phase=MigrationPhase.FAILED,
                error=f"did not finish: {node_id} still runs the VM",
                finished_at=self._now,
            )
        )

    def migration_landed_late(self, mig: MigrationRecord, status: VMStatus) -> None:
        """A migration settled as failed, and then the guest resumed on its target with the
        generation only that migration gives: it did move."""
        mig = self.put_migration(replace(mig, phase=MigrationPhase.TRANSFER, error=""))
        vm = self.state.vms[mig.vm_id]
        self.set_vm_state(vm, vm.state, vm.state_reason, migrating_to=mig.target)
        mig = self.switch_over(mig, "it landed after its migration was given up")
        self._clean_up(mig)
