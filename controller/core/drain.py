"""Drain: cordon a node and live-migrate everything off it through placement, a few at a time
(a stopped VM moves cold: its disk and definition go, and it stays stopped there).

The request is answered at once with the plan (what will move, what cannot and why); the
moves then run `parallel` at a time, each an ordinary migration job (its record, phases and
fencing), advanced on every tick. Progress is shown on the node (`novacron node show`, and
`novacron node drain` follows it). A drain is stored like the node's other records, each
change in its event's one transaction: after a controller restart it goes on where it was
(the moves under way are ordinary migration records, resumed as such).
"""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.settle import SettleMixin
from controller.records import Drain, MigrationPhase, VMRecord
from shared.domain import DesiredState, VMState
from shared.errors import InvalidArgument, NovaCronError

MAX_PARALLEL = 16


class DrainMixin(SettleMixin):
    def on_drain(self, event: ev.DrainRequested) -> None:
        node = self.state.get_node(event.node_id)
        parallel = event.parallel or 1
        if not 1 <= parallel <= MAX_PARALLEL:
            raise InvalidArgument(f"parallel must be in [1, {MAX_PARALLEL}], got {parallel}")
        current = self.state.drains.get(node.node_id)
        if current is not None and not current.done:
            self.reply(event.stimulus_id, current)  # already draining: the same job
            return
        if not node.cordoned:
            self.put_node(replace(node, cordoned=True))
        self.audit("node.drain", node.node_id, f"parallel={parallel} cold={event.cold}")
        queued, failed = [], []
        for vm in sorted(self.state.vms_on(node.node_id), key=lambda v: v.spec.name):
            why = _unmovable(vm)
            if why:
                failed.append((vm.spec.name, why))
            else:
                queued.append(vm.id)
        drain = Drain(
            node.node_id,
            self._now,
            parallel,
            tuple(queued),
            failed=tuple(failed),
            cold=event.cold,
        )
        self.put_drain(drain)
        self.log.info("draining", node_id=node.node_id, vms=len(queued), cannot=len(failed))
        drain = self.advance_drain(node.node_id)
        self.reply(event.stimulus_id, drain)

    def advance_drains(self) -> None:
        for node_id, drain in list(self.state.drains.items()):
            if not drain.done:
                self.advance_drain(node_id)

    def advance_drain(self, node_id: str) -> Drain:
        """Account for the moves that ended, and start the next ones."""
        drain = self.state.drains[node_id]
        active, moved, failed = [], list(drain.moved), list(drain.failed)
        for vm_id, mig_id in drain.active:
            mig = self.state.migrations.get(mig_id)
            if mig is None or mig.active:
                active.append((vm_id, mig_id))
            elif mig.phase is MigrationPhase.SUCCEEDED:
                moved.append((mig.vm_name, mig.target))
            else:
                failed.append((mig.vm_name, f"migration to {mig.target} failed: {mig.error}"))
        queued = list(drain.queued)
        while queued and len(active) < drain.parallel:
            vm = self.state.vms.get(queued.pop(0))
            if vm is None or vm.node_id != node_id:
                continue  # deleted or moved meanwhile: nothing left to do for it
            try:
                # a stopped VM moves cold even in a live drain: it has no guest to keep up
                cold = drain.cold or vm.state is VMState.STOPPED
                mig_id = self._start_move(vm, node_id, cold)
            except NovaCronError as exc:
                failed.append((vm.spec.name, str(exc)))
                continue
            active.append((vm.id, mig_id))
        drain = replace(
            drain,
            queued=tuple(queued),
            active=tuple(active),
            moved=tuple(moved),
            failed=tuple(failed),
        )
        if drain.done and not drain.finished_at:
            drain = replace(drain, finished_at=self._now)
            self.log.info(
                "drained", node_id=node_id, moved=len(drain.moved), failed=len(drain.failed)
            )
        return self.put_drain(drain)

    def _start_move(self, vm: VMRecord, node_id: str, cold: bool) -> str:
        """One migration through placement (live, or cold), like `vm migrate` without a
        target."""
        before = set(self.state.migrations)
        self.on_migrate(
            ev.MigrateRequested(
                stimulus_id=self._stimulus,
                now=self._now,
                name_or_id=vm.id,
                reason=f"drain of {node_id}",
                mode="cold" if cold else "live",
            )
        )
        (mig_id,) = set(self.state.migrations) - before
        self.journal.pop(self.state.migration_callers, mig_id)  # the drain answers, not it
        return mig_id


def _unmovable(vm: VMRecord) -> str:
    if vm.desired is DesiredState.DELETED:
        return "being deleted"
    if vm.state not in (VMState.RUNNING, VMState.PAUSED, VMState.STOPPED):
        return f"it is {vm.state.value}: only a running, paused or stopped VM moves"
    return ""
