"""Failover: a lost node's VMs recreated elsewhere, through placement, at a new generation.

On every tick each lost node's VMs are weighed against their disconnect policy
(`controller.core.disconnect`): a VM is replaced once its original is provably stopped (its
`stop_after` plus a margin since the node was last heard from, or the operator declared the
node dead) and its `replace_after` has passed. Automatic failovers are rate-limited fleet-wide,
so a partition of half the fleet does not start an eviction storm; a VM that must wait, or that
placement cannot put anywhere, is shown waiting with the reason and tried again next tick.

The replacement is one transition, like a migration's switchover: the record moves to the new
node at a raised generation (persisted first), then the node is told to create it. The old copy
is older from then on, so its node destroys it when it comes back (`controller.core.fencing`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.core import events as ev
from controller.core.deploy import DeployMixin
from controller.core.disconnect import due_at, in_force
from controller.core.state import Pending
from controller.records import FailoverRecord, VMRecord
from shared.commands import CommandResult, CreateVM
from shared.domain import DesiredState, NodeCondition, VMState
from shared.errors import FailedPrecondition, NovaCronError, Unavailable

_MOVABLE = (DesiredState.RUNNING, DesiredState.PAUSED)


@dataclass(frozen=True, slots=True)
class FailoverOutcome:
    """What became of one VM of a failed-over node: replaced on `target`, or why it waits."""

    vm_id: str
    name: str
    target: str = ""
    waiting: str = ""


class FailoverMixin(DeployMixin):
    def on_fail_over(self, event: ev.FailOverRequested) -> None:
        """An operator's failover of one node: at once (replace_after skipped, the rate limit
        too); with `node_is_dead` the originals count as stopped, without it their
        `stop_after` must still have passed."""
        node = self.state.get_node(event.node_id)
        condition, why = self.state.condition(node, self._now)
        if condition is NodeCondition.READY:
            raise FailedPrecondition(
                f"node {node.node_id!r} is ready (its heartbeats arrive): a failover would run "
                "its VMs twice; cordon it and migrate its VMs instead"
            )
        reason = f"operator: {why or condition.value}"
        if event.node_is_dead:
            reason = "operator: the node is dead"
            self.journal.put(self.state.declared_dead, node.node_id, self._now)
            self.audit("node.declared_dead", node.node_id, f"condition={condition.value}")
            session = self.state.sessions.get(node.node_id)
            if session is not None:
                self.close_session(node.node_id, session.session_id, "declared dead")
        if node.node_id not in self.state.lost_at:
            self.journal.put(self.state.lost_at, node.node_id, self._now)
        outcomes = self.fail_over_node(node.node_id, reason, asked=True)
        self.reply(event.stimulus_id, outcomes)

    def fail_over_lost_nodes(self, conditions: dict[str, tuple[NodeCondition, str]]) -> None:
        """The tick's part: note when nodes became lost, and replace what is due.
        `conditions`: every node's, judged once for the tick."""
        lost = []
        for node_id, (condition, why) in conditions.items():
            if condition is not NodeCondition.LOST and node_id not in self.state.declared_dead:
                if node_id in self.state.lost_at:
                    self.journal.pop(self.state.lost_at, node_id)
                continue
            if node_id not in self.state.lost_at:
                self.journal.put(self.state.lost_at, node_id, self._now)
                self.log.warning("node lost", node_id=node_id, reason=why)
            lost.append((node_id, f"node lost: {why}" if why else "node lost"))
        if not lost:
            return
        by_node: dict[str, list[VMRecord]] = {}  # one pass over the VMs, not one per node
        for vm in self.state.vms.values():
            by_node.setdefault(vm.node_id, []).append(vm)
        for node_id, reason in lost:
            if by_node.get(node_id):
                self.fail_over_node(node_id, reason, vms=by_node[node_id])
            self.recover_lost_landings(node_id, reason)

    def node_back(self, node_id: str) -> None:
        """The node said hello: it is neither lost nor dead any more."""
        for marks in (self.state.lost_at, self.state.declared_dead):
            if node_id in marks:
                self.journal.pop(marks, node_id)

    def fail_over_node(
        self,
        node_id: str,
        reason: str,
        *,
        asked: bool = False,
        vms: list[VMRecord] | None = None,
    ) -> list[FailoverOutcome]:
        outcomes = []
        dead = node_id in self.state.declared_dead
        lost_at = self.state.lost_at.get(node_id, self._now)
        last_heard = self.state.last_heard(node_id)
        margin = self.settings.failover.clock_margin_s
        on_node = vms if vms is not None else self.state.vms_on(node_id)
        for vm in sorted(on_node, key=lambda v: v.spec.name):
            if vm.desired not in _MOVABLE:
                continue
            policy = in_force(vm.spec.disconnect, self.settings.failover)
            due, why = due_at(
                policy, last_heard, lost_at, margin, node_is_dead=dead, now_asked=asked
            )
            if self.state.migration_of(vm.id) is not None:
                waiting = "a migration of it is under way: it settles first"
            elif due is None:
                waiting = why
            elif due > self._now:
                waiting = f"replaced in {due - self._now:.1f}s ({why})"
            elif not asked and self._storm_limited():
                f = self.settings.failover
                waiting = (
                    f"rate limited: {f.max_per_interval} failovers in the last "
                    f"{f.interval_s:g}s (controller.failover.max_per_interval)"
                )
            else:
                waiting = self._replace(vm, reason, last_heard, lost_at)
            if waiting:
                self._wait(vm, waiting)
                outcomes.append(FailoverOutcome(vm.id, vm.spec.name, waiting=waiting))
            else:
                moved = self.state.vms[vm.id]
                outcomes.append(FailoverOutcome(vm.id, vm.spec.name, target=moved.node_id))
        return outcomes

    def _storm_limited(self) -> bool:
        f = self.settings.failover
        since = self._now - f.interval_s
        started = sum(1 for r in self.state.failovers.values() if r.started_at > since)
        return started >= f.max_per_interval

    def _wait(self, vm: VMRecord, waiting: str) -> None:
        if self.state.failover_waiting.get(vm.id, "").split(" (")[0] != waiting.split(" (")[0]:
            self.log.info("failover waits", vm_id=vm.id, name=vm.spec.name, why=waiting)
        self.journal.put(self.state.failover_waiting, vm.id, waiting)

    def _replace(self, vm: VMRecord, reason: str, last_heard: float, lost_at: float) -> str:
        """Re-place `vm` and record it there at a new generation; "" or why it cannot be."""
        decision = self.explain_placement(vm.spec, self._now, k=2)
        if decision.node_id is None:
            return f"cannot be placed: {decision.summary}"
        generation = self.state.next_generation(vm)
        record = FailoverRecord(
            id=self.new_id(f"failover/{vm.id}"),
            vm_id=vm.id,
            vm_name=vm.spec.name,
            source=vm.node_id,
            target=decision.node_id,
            reason=reason,
            from_generation=vm.generation,
            to_generation=generation,
            last_heard_at=last_heard,
            lost_at=lost_at,
            started_at=self._now,
        )
        self.put_failover(record)
        moved = self.set_vm_state(
            vm,
            VMState.PENDING,
            f"failing over from {vm.node_id} to {decision.node_id} ({reason})",
            node_id=decision.node_id,
            generation=generation,
            placement_reason=f"failover: {decision.placement_reason()}",
            migrating_to="",
        )
        self.journal.pop(self.state.failover_waiting, vm.id)
        self.audit(
            "vm.failover",
            vm.id,
            f"name={vm.spec.name} from={record.source} to={record.target} "
            f"generation={generation} reason={reason}",
        )
        self.log.warning(
            "failing over",
            vm_id=vm.id,
            name=vm.spec.name,
            source=record.source,
            target=record.target,
            generation=generation,
            reason=reason,
        )
        try:
            self.send(
                moved.node_id,
                CreateVM(
                    moved.id,
                    moved.spec,
                    moved.generation,
                    start_paused=moved.desired is DesiredState.PAUSED,
                    **self._network_of(moved),
                ),
                purpose="failover_create",
                timeout=self.settings.deploy_timeout,
                vm_id=moved.id,
                doing="creating (failover)",
            )
        except Unavailable as exc:  # placement took a ready node; a race with its disconnect
            self.set_vm_state(moved, VMState.UNKNOWN, f"{exc}; recreated when its node reports")
        self.push_mesh_if_routed(moved)
        return ""

    def _network_of(self, vm: VMRecord) -> dict[str, str]:
        fields = self.placed_fields(vm)
        return {"address": str(fields["address"]), "gateway": str(fields["gateway"])}

    def on_failover_create_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        self.answer_vm_command(pending, result, lost, "the VM was deleted while failing over")
        record = self.active_failover(pending.vm_id)
        if record is not None and result is not None and result.error is not None:
            self.put_failover(replace(record, outcome="failed", error=result.error.message))

    def observe(self, vm: VMRecord, state: VMState, reason: str) -> VMRecord:
        before = self.state.vms.get(vm.id, vm).state
        updated = super().observe(vm, state, reason)
        if state is VMState.RUNNING and before is not VMState.RUNNING:  # not every heartbeat
            record = self.active_failover(vm.id)
            if record is not None and record.target == updated.node_id:
                self.put_failover(replace(record, running_at=self._now, outcome="running"))
                self.log.info(
                    "failed over",
                    vm_id=vm.id,
                    name=vm.spec.name,
                    target=record.target,
                    since_lost_s=round(self._now - record.lost_at, 3),
                    since_last_heard_s=round(self._now - record.last_heard_at, 3),
                )
        return updated

    def active_failover(self, vm_id: str) -> FailoverRecord | None:
        for record in self.state.failovers.values():
            if record.vm_id == vm_id and record.active:
                return record
        return None

    # provided by the offline migration mixin
    def recover_lost_landings(self, node_id: str, reason: str) -> None:
        raise NotImplementedError
