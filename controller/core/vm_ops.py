"""Operations on one VM or node: delete, suspend/resume, console, cordon, orphans."""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.failover import FailoverMixin
from controller.core.state import Orphan, Pending
from controller.records import MigrationPhase, VMRecord
from shared.commands import ChangePower, CommandResult, DeleteVM, PowerAction, ReadConsole
from shared.domain import DesiredState, VMSpec, VMState
from shared.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    NovaCronError,
    Unavailable,
)


class VMOpsMixin(FailoverMixin):
    def on_delete(self, event: ev.DeleteRequested) -> None:
        try:
            vm = self.state.find_vm(event.name_or_id)
        except NotFound:
            found = [
                o
                for o in self.state.orphans.values()
                if event.name_or_id in (o.status.vm_id, o.status.name)
            ]
            if not found:
                raise
            if len(found) > 1:
                nodes = ", ".join(sorted(o.node_id for o in found))
                raise FailedPrecondition(
                    f"orphan {event.name_or_id!r} runs on several nodes ({nodes}): "
                    "`novacron vm delete-orphan NODE NAME` says which"
                ) from None
            self.on_delete_orphan(
                ev.DeleteOrphanRequested(
                    stimulus_id=event.stimulus_id,
                    now=event.now,
                    node_id=found[0].node_id,
                    vm_id=found[0].status.vm_id,
                )
            )
            return
        never_created = vm.state is VMState.FAILED
        vm = self.set_vm_state(
            vm, VMState.DELETING, "deletion requested", desired=DesiredState.DELETED
        )
        self.audit("vm.delete", vm.id, f"name={vm.spec.name} node={vm.node_id}")
        self.abandon_migration_of(vm)
        if not self.state.connected(vm.node_id):
            if never_created:  # the driver leaves nothing behind when a create fails
                vm = replace(vm, state_reason="deleted (it had failed to deploy)")
                self.forget_vm(vm)
                self.reply(event.stimulus_id, vm)
                return
            vm = self.set_vm_state(
                vm,
                VMState.DELETING,
                f"node {vm.node_id!r} is not connected; the VM will be deleted when it reconnects",
            )
            self.reply(event.stimulus_id, vm)
            return
        command = DeleteVM(vm.id, vm.spec.name, 0, vm.address)
        self.send(
            vm.node_id,
            command,
            purpose="delete",
            vm_id=vm.id,
            waiters=(event.stimulus_id,),
            doing="deleting",
        )

    def abandon_migration_of(self, vm: VMRecord) -> None:
        """A VM deleted while it migrates: the job ends, the target's copy goes too."""
        mig = self.state.migration_of(vm.id)
        if mig is None:
            return
        failed = replace(mig, phase=MigrationPhase.FAILED, error="the VM was deleted")
        self.put_migration(replace(failed, finished_at=self._now))
        self.put_vm(replace(self.state.vms[vm.id], migrating_to=""))
        error = FailedPrecondition(f"VM {vm.spec.name!r} was deleted while migrating")
        self.answer_migration(mig.id, error=error)
        if self.state.connected(mig.target) and mig.target != vm.node_id:
            self.send(
                mig.target,
                DeleteVM(vm.id, vm.spec.name, 0, vm.address),
                purpose="mig_unstage",
                vm_id=vm.id,
                migration_id=mig.id,
            )

    def on_delete_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        vm = self.state.vms.get(pending.vm_id)
        if vm is None:
            return
        if lost is not None:
            vm = self.set_vm_state(
                vm,
                VMState.DELETING,
                "the node did not confirm; the VM will be deleted when it reports",
            )
            for waiter in pending.waiters:
                self.reply(waiter, vm)
            return
        assert result is not None
        if result.error is not None:
            error = result.error.to_exception(
                f"node {pending.node_id!r} failed deleting VM {vm.spec.name!r}"
            )
            for waiter in pending.waiters:
                self.reply_error(waiter, error)
            return
        gone = replace(vm, state=VMState.MISSING, state_reason=f"deleted from node {vm.node_id}")
        if vm.desired is DesiredState.DELETED:
            self.forget_vm(gone)
        for waiter in pending.waiters:
            self.reply(waiter, gone)

    def on_power(self, event: ev.PowerRequested) -> None:
        vm = self.state.find_vm(event.name_or_id)
        desired = DesiredState.PAUSED if event.paused else DesiredState.RUNNING
        verb = "suspend" if event.paused else "resume"
        if vm.desired is DesiredState.DELETED:
            raise FailedPrecondition(f"cannot {verb} VM {vm.spec.name!r}: it is being deleted")
        if vm.state is VMState.FAILED:
            raise FailedPrecondition(f"cannot {verb} VM {vm.spec.name!r}: it failed to deploy")
        if not self.state.connected(vm.node_id):
            raise FailedPrecondition(
                f"cannot {verb} VM {vm.spec.name!r}: node {vm.node_id!r} is not connected"
            )
        moving = self.state.migration_of(vm.id)
        if moving is not None and moving.offline:  # stopped while it moves: nothing to change
            raise FailedPrecondition(
                f"cannot {verb} VM {vm.spec.name!r}: it is stopped for its {moving.mode} "
                f"migration to {moving.target!r}; try again once it runs there"
            )
        vm = self.put_vm(replace(vm, desired=desired, updated_at=self._now))
        self.audit(f"vm.{verb}", vm.id, f"name={vm.spec.name}")
        action = PowerAction.SUSPEND if event.paused else PowerAction.RESUME
        self.send(
            vm.node_id,
            ChangePower(vm.id, vm.spec.name, vm.generation, action),
            purpose="power",
            vm_id=vm.id,
            waiters=(event.stimulus_id,),
            doing=f"{verb[:-1]}ing",
        )

    def on_power_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        self.answer_vm_command(pending, result, lost, "the VM was deleted meanwhile")

    def on_console(self, event: ev.ConsoleRequested) -> None:
        vm = self.state.find_vm(event.name_or_id)
        if not self.state.connected(vm.node_id):
            raise Unavailable(f"node {vm.node_id!r} is not connected")
        self.send(
            vm.node_id,
            ReadConsole(vm.id, vm.spec.name, event.max_bytes or 65536),
            purpose="console",
            vm_id=vm.id,
            waiters=(event.stimulus_id,),
        )

    def on_console_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        vm = self.state.vms.get(pending.vm_id)
        for waiter in pending.waiters:
            if lost is not None:
                self.reply_error(waiter, lost)
            elif result is not None and result.error is not None:
                self.reply_error(waiter, result.error.to_exception())
            elif vm is None:
                self.reply_error(waiter, NotFound("the VM was deleted meanwhile"))
            else:
                self.reply(waiter, (vm, result.console if result else ""))

    def on_cordon(self, event: ev.CordonRequested) -> None:
        node = self.state.get_node(event.node_id)
        if node.cordoned != event.cordoned:
            node = self.put_node(replace(node, cordoned=event.cordoned))
            action = "node.cordon" if event.cordoned else "node.uncordon"
            self.audit(action, node.node_id, "")
        self.reply(event.stimulus_id, node)

    # ------------------------------------------------------------ orphans

    def on_adopt(self, event: ev.AdoptRequested) -> None:
        """The operator vouches for an orphan: it becomes a managed VM where it runs, at the
        generation it has."""
        orphan = self.find_orphan(event.node_id, event.vm_id)
        status = orphan.status
        self._require_new_name(status.name)
        if status.vm_id in self.state.vms:
            raise AlreadyExists(f"VM {status.vm_id!r} has a record already")
        spec = VMSpec(status.name, status.image, status.vcpus or 1, status.memory_mib or 128)
        record = VMRecord(
            id=status.vm_id,
            spec=spec,
            node_id=event.node_id,
            desired=DesiredState.PAUSED if status.state is VMState.PAUSED else DesiredState.RUNNING,
            state=status.state,
            generation=max(status.generation, 1),
            created_at=self._now,
            updated_at=self._now,
            state_reason=f"adopted from {event.node_id}",
            placement_reason="adopted",
        )
        self.journal.pop(self.state.tombstones, status.vm_id)
        self.journal.pop(self.state.orphans, (event.node_id, status.vm_id))
        self.put_vm(record)
        self.audit("vm.adopt", record.id, f"name={spec.name} node={event.node_id}")
        self.reply(event.stimulus_id, record)

    def on_delete_orphan(self, event: ev.DeleteOrphanRequested) -> None:
        orphan = self.find_orphan(event.node_id, event.vm_id)
        if not self.state.connected(event.node_id):
            raise FailedPrecondition(f"node {event.node_id!r} is not connected")
        status = orphan.status
        self.audit("vm.delete_orphan", status.vm_id, f"name={status.name} node={event.node_id}")
        self.send(
            event.node_id,
            DeleteVM(status.vm_id, status.name, status.generation),
            purpose="delete_orphan",
            vm_id=status.vm_id,
            waiters=(event.stimulus_id,),
            doing="deleting",
        )

    def on_delete_orphan_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        orphan = self.state.orphans.get((pending.node_id, pending.vm_id))
        error = lost or (result.error.to_exception() if result and result.error else None)
        if error is None and orphan is not None:
            self.journal.pop(self.state.orphans, (pending.node_id, pending.vm_id))
        for waiter in pending.waiters:
            if error is not None:
                kind = DeadlineExceeded if isinstance(error, DeadlineExceeded) else type(error)
                self.reply_error(waiter, kind(f"deleting orphan {pending.vm_id!r}: {error}"))
            else:
                self.reply(waiter, orphan)

    def find_orphan(self, node_id: str, vm_id: str) -> Orphan:
        for (node, vm), orphan in self.state.orphans.items():
            if node == node_id and (vm == vm_id or orphan.status.name == vm_id):
                return orphan
        raise NotFound(
            f"no orphan {vm_id!r} on node {node_id!r} (`novacron vm orphans` lists them)"
        )
