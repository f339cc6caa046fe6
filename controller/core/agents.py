"""Agent sessions: hello (full inventory, then reconcile), heartbeats, VM events, disconnects,
and liveness on ticks."""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.base import REQUESTS
from controller.core.mesh_push import MeshMixin
from controller.core.reconcile import Action, ActionKind, plan
from controller.core.state import Orphan, Pending, Session
from controller.records import MigrationRecord, NodeRecord
from shared.commands import ChangePower, CommandResult, DeleteVM, PowerAction
from shared.domain import DesiredState, NodeCondition, VMState, VMStatus
from shared.errors import NovaCronError

_POWER = {
    ActionKind.SUSPEND: PowerAction.SUSPEND,
    ActionKind.RESUME: PowerAction.RESUME,
    ActionKind.START: PowerAction.START,
}


class AgentsMixin(MeshMixin):
    def _credential_valid(self, node_id: str, epoch: int, session_id: str) -> bool:
        """A certificate of a revoked node, or of before its re-enrolment, gets no session
        (checked here too, not only at connect: a revocation may be queued ahead of it)."""
        credential = self.state.credentials.get(node_id)
        if credential is not None and credential.accepts(epoch):
            return True
        why = "revoked" if credential is not None and credential.revoked else "superseded"
        reason = f"node {node_id}'s certificate (epoch {epoch}) is {why}"
        self.audit("node.connect", node_id, reason, result="refused")
        self.close_session(node_id, session_id, reason, denied=True)
        return False

    def on_hello(self, event: ev.AgentHello) -> None:
        node_id = event.node_id
        if event.epoch >= 0 and not self._credential_valid(node_id, event.epoch, event.session_id):
            return
        previous = self.state.sessions.get(node_id)
        if previous is not None and previous.session_id != event.session_id:
            self.close_session(node_id, previous.session_id, "replaced by a newer session")
            self.fail_session_commands(node_id, previous.session_id, "replaced by a newer session")
        node = self.state.nodes.get(node_id)
        if node is None:
            node = NodeRecord(info=event.info, registered_at=self._now)
            self.audit("node.register", node_id, f"edge_type={event.info.edge_type}")
        mesh_changed = event.mesh is not None and event.mesh != node.mesh
        node = replace(
            node,
            info=event.info,
            images=event.images,
            last_heartbeat=self._now,
            mesh=event.mesh if event.mesh is not None else node.mesh,
        )
        if node.mesh is not None:
            node = replace(node, mesh_address=self.hold_address("mesh", node_id))
        self.put_node(node)
        self.state.heard_from(node_id, self._now, hello=True)
        self.node_back(node_id)
        self.welcome(node_id, event.session_id)
        known = event.known_installation_id
        if known and known != self.settings.installation_id and not self.settings.take_over:
            reason = (
                f"the node belongs to installation {known}, and this controller's state is a "
                f"different one ({self.settings.installation_id}): restart the controller on "
                "the state dir it had, or with --new-installation to take the node over (its "
                "VMs are then shown as orphans, never deleted)"
            )
            self.log.warning(
                "node of another installation: nothing on it is changed",
                node_id=node_id,
                its_installation=known,
            )
            self.journal.put(self.state.sessions, node_id, Session(event.session_id, reason))
            self._clear_orphans(node_id)
            for status in event.vms:
                self.note_orphan(node_id, status, f"the node belongs to installation {known}")
            return
        self.journal.put(self.state.sessions, node_id, Session(event.session_id))
        if self._hypervisor_problem(node_id, event.hypervisor_problem):
            return  # nothing to compare against: nothing is changed on the node
        self._clear_orphans(node_id)
        self.reconcile(node_id, event.vms)
        self.landings_not_reported(node_id, {s.vm_id for s in event.vms})
        if node.mesh is not None:
            # A changed key or endpoint changes every member's peer set; otherwise only the
            # reconnecting node needs its own (it may have restarted and lost its tunnel).
            self.push_mesh() if mesh_changed else self.push_mesh(only=node_id)

    def _clear_orphans(self, node_id: str) -> None:
        """A hello reports everything the node has: its orphans are found again from it."""
        for key in [k for k in self.state.orphans if k[0] == node_id]:
            self.journal.pop(self.state.orphans, key)

    def on_heartbeat(self, event: ev.AgentHeartbeat) -> None:
        if not self._current(event.node_id, event.session_id):
            return
        node = self.state.nodes[event.node_id]
        self.state.heard_from(event.node_id, self._now)
        self.put_node(
            replace(
                node,
                last_heartbeat=self._now,
                utilization=event.utilization,
                latencies=event.latencies,
                mesh_status=event.mesh if event.mesh is not None else node.mesh_status,
            )
        )
        if self._hypervisor_problem(event.node_id, event.hypervisor_problem):
            return
        for status in event.vms:
            self.observe_reported(event.node_id, status)

    def on_contact_confirmed(self, event: ev.AgentContactConfirmed) -> None:
        """Counted only for the node's current session, and never once the node is lost:
        its VMs may be replaced from then on, so its agent must not count a later contact."""
        node_id = event.node_id
        counted = (
            self._current(node_id, event.session_id)
            and node_id not in self.state.lost_at
            and node_id not in self.state.declared_dead
        )
        if counted:
            self.state.contact_confirmed(node_id, self._now)
        self.reply(event.stimulus_id, counted)

    def _hypervisor_problem(self, node_id: str, problem: str) -> bool:
        """Note whether the node can read its hypervisor; while it cannot, its VMs are
        unknown (QEMU may well run on without libvirtd) and the node takes no new VMs."""
        known = self.state.hypervisor_problems.get(node_id, "")
        if problem == known:
            return bool(problem)
        self.state.fleet_changed()
        if not problem:
            self.journal.pop(self.state.hypervisor_problems, node_id)
            self.log.info("node's hypervisor is back", node_id=node_id)
            return False
        self.journal.put(self.state.hypervisor_problems, node_id, problem)
        self.log.warning("node cannot read its hypervisor", node_id=node_id, problem=problem)
        for vm in self.state.vms_on(node_id):
            if vm.state not in (VMState.FAILED, VMState.DELETING):
                self.set_vm_state(vm, VMState.UNKNOWN, f"node {node_id!r}: {problem}")
        return True

    def on_vm_status(self, event: ev.AgentVMStatus) -> None:
        if not self._current(event.node_id, event.session_id):
            return
        self.log.info(
            "vm event", node_id=event.node_id, vm_id=event.status.vm_id, lifecycle=event.lifecycle
        )
        self.observe_reported(event.node_id, event.status)

    def on_disconnect(self, event: ev.AgentDisconnected) -> None:
        if not self._current(event.node_id, event.session_id):
            return
        self.journal.pop(self.state.sessions, event.node_id)
        if event.node_id in self.state.hypervisor_problems:  # the next hello says again
            self.journal.pop(self.state.hypervisor_problems, event.node_id)
        self.state.disconnected_at[event.node_id] = self._now
        self.state.fleet_changed()
        self.fail_session_commands(event.node_id, event.session_id, event.reason)
        for vm in self.state.vms_on(event.node_id):
            if vm.state not in (VMState.FAILED, VMState.DELETING):
                self.set_vm_state(vm, VMState.UNKNOWN, f"node {event.node_id!r} disconnected")

    def on_tick(self, event: ev.Tick) -> None:
        """End the sessions of nodes the detector declares lost, so their VMs turn UNKNOWN
        rather than stay RUNNING on a node nobody can reach (a half-open TCP stream can last
        minutes). A merely suspect node keeps its session: on a lossy link it comes back."""
        conditions = {  # judged once for the tick: sessions and failover both use them
            node_id: self.state.condition(node, self._now)
            for node_id, node in self.state.nodes.items()
        }
        for node_id, session in list(self.state.sessions.items()):
            if node_id not in conditions or session.refused:
                continue
            condition, reason = conditions[node_id]
            if condition is NodeCondition.LOST:
                self.log.warning("closing silent session", node_id=node_id, reason=reason)
                self.close_session(node_id, session.session_id, reason)
        self.fail_over_lost_nodes(conditions)
        self.advance_drains()

    def on_persist_failed(self, event: ev.PersistFailed) -> None:
        """An event's records could not be written; it was taken back. Its requester hears
        why; an agent whose hello was not stored stays not ready, saying why."""
        failed = event.failed
        if isinstance(failed, ev.AgentHello):
            reason = f"its hello could not be stored: {event.error}"
            self.journal.put(
                self.state.sessions, failed.node_id, Session(failed.session_id, refused=reason)
            )
            self.state.fleet_changed()
            self.log.error("hello not stored", node_id=failed.node_id, error=str(event.error))
        elif isinstance(failed, ev.AgentHeartbeat) and self._current(
            failed.node_id, failed.session_id
        ):  # what it changed could not be stored; that the node is alive stands
            node = self.state.nodes[failed.node_id]
            self.put_node(replace(node, last_heartbeat=failed.now, utilization=failed.utilization))
            self.log.error(
                "heartbeat's changes not stored", node_id=failed.node_id, error=str(event.error)
            )
        elif isinstance(failed, REQUESTS):
            self.reply_error(failed.stimulus_id, event.error)
        else:
            self.log.error("event not stored", kind=type(failed).__name__, error=str(event.error))
        command_id = ""
        if isinstance(failed, ev.AgentResult):
            command_id = failed.result.command_id
        elif isinstance(failed, ev.TimerFired):
            command_id = failed.key.partition(":")[2]
        elif isinstance(failed, ev.CommandUndeliverable):
            command_id = failed.command_id
        pending = self.state.pending.get(command_id)
        if pending is not None:  # its answer is lost with the event: whoever waits hears so
            self.journal.pop(self.state.pending, command_id)
            error = type(event.error)(
                f"the answer of node {pending.node_id!r} could not be stored ({event.error}); "
                "the state shown is the last one stored"
            )
            for waiter in pending.waiters:
                self.reply_error(waiter, error)
            if pending.migration_id:
                self.answer_migration(pending.migration_id, error=error)

    def _current(self, node_id: str, session_id: str) -> bool:
        session = self.state.sessions.get(node_id)
        return session is not None and session.session_id == session_id

    # ------------------------------------------------------------ reconcile

    def reconcile(self, node_id: str, reported: tuple[VMStatus, ...]) -> None:
        latest = {}
        for status in reported:
            mig = self.state.latest_migration(status.vm_id)
            if mig is not None:
                latest[status.vm_id] = mig
        for vm in self.state.vms_on(node_id):
            mig = self.state.latest_migration(vm.id)
            if mig is not None:
                latest[vm.id] = mig
        actions = plan(node_id, self.state.vms.values(), reported, self.state.tombstones, latest)
        for action in actions:
            try:
                self._apply(node_id, action)
            except NovaCronError as exc:
                self.log.warning(
                    "reconcile action failed",
                    node_id=node_id,
                    vm_id=action.vm_id,
                    action=action.kind.value,
                    error=str(exc),
                )

    def _apply(self, node_id: str, action: Action) -> None:
        vm = self.state.vms.get(action.vm_id)
        if action.kind is ActionKind.ORPHAN:
            assert action.status is not None
            self.note_orphan(node_id, action.status, action.reason)
        elif action.kind is ActionKind.ARRIVED:
            assert action.status is not None
            latest = self.state.latest_migration(action.vm_id)
            if latest is not None and not latest.active:
                if action.status.state is VMState.RUNNING:
                    self.migration_landed_late(latest, action.status)
            else:
                self.migration_target_reported(node_id, action.status)
        elif action.kind is ActionKind.LEAVING:
            assert action.status is not None
            self.migration_source_reported(node_id, action.status)
        elif action.kind is ActionKind.DELETE:
            self.log.info(
                "removing a copy that is not the VM",
                node_id=node_id,
                vm_id=action.vm_id,
                reason=action.reason,
            )
            address = vm.address if vm is not None and vm.node_id == node_id else ""
            self.send(
                node_id,
                DeleteVM(action.vm_id, action.name, action.generation, address),
                purpose="reconcile_delete",
                vm_id=action.vm_id,
            )
        elif vm is None:
            return
        elif action.kind is ActionKind.OBSERVE and action.observed is not None:
            self.set_vm_state(vm, action.observed, f"reported by {node_id}")
        elif action.kind is ActionKind.FORGET:
            self.forget_vm(vm)
        elif action.kind is ActionKind.CREATE:
            self.log.info("re-creating missing VM", node_id=node_id, vm_id=vm.id)
            vm = self.set_vm_state(vm, VMState.PENDING, f"missing on {node_id}; re-creating")
            self.create_on_node(vm, self.settings.deploy_timeout, ())
        else:
            self.send(
                node_id,
                ChangePower(vm.id, vm.spec.name, vm.generation, _POWER[action.kind]),
                purpose="power",
                vm_id=vm.id,
                doing=action.kind.value,
            )

    def on_reconcile_delete_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        vm = self.state.vms.get(pending.vm_id)
        ok = lost is None and result is not None and result.ok
        if ok and vm is not None and vm.desired is DesiredState.DELETED:
            self.forget_vm(vm)

    def note_orphan(self, node_id: str, status: VMStatus, reason: str) -> None:
        key = (node_id, status.vm_id)
        if key not in self.state.orphans:
            self.log.warning(
                "orphan: left running until an operator adopts or deletes it",
                node_id=node_id,
                vm_id=status.vm_id,
                name=status.name,
                reason=reason,
            )
        self.journal.put(self.state.orphans, key, Orphan(node_id, status, self._now, reason))

    # ------------------------------------------------------------ reports between hellos

    def observe_reported(self, node_id: str, status: VMStatus) -> None:
        vm = self.state.vms.get(status.vm_id)
        mig = self.state.migration_of(status.vm_id)
        if vm is not None and mig is not None and node_id == mig.target:
            if status.state is VMState.RUNNING:
                self.migration_target_reported(node_id, status)
            return
        if vm is None:
            key = (node_id, status.vm_id)
            if key in self.state.orphans:
                orphan = self.state.orphans[key]
                self.journal.put(self.state.orphans, key, replace(orphan, status=status))
            return
        latest = self.state.latest_migration(vm.id)
        if (  # landed after its migration gave up (the generation proves which copy it is)
            latest is not None
            and not latest.active
            and not latest.arrived
            and node_id == latest.target
            and status.state is VMState.RUNNING
            and status.generation == latest.to_generation
        ):
            self.migration_landed_late(latest, status)
            return
        if vm.node_id != node_id or status.generation < vm.generation:
            return
        if vm.desired is DesiredState.DELETED or vm.id in self._creating_ids():
            return
        if mig is not None:  # the source reports it paused/stopped as it leaves
            return
        self.observe(vm, status.state, status.reason or "reported by node")

    def _creating_ids(self) -> set[str]:
        return {
            p.vm_id
            for p in self.state.pending.values()
            if p.purpose in ("create", "failover_create")
        }

    def advance_drains(self) -> None:  # provided by the drain mixin
        raise NotImplementedError

    # provided by the migration mixins
    def landings_not_reported(self, node_id: str, reported: set[str]) -> None:
        raise NotImplementedError

    def migration_target_reported(self, node_id: str, status: VMStatus) -> None:
        raise NotImplementedError

    def migration_source_reported(self, node_id: str, status: VMStatus) -> None:
        raise NotImplementedError

    def migration_landed_late(self, mig: MigrationRecord, status: VMStatus) -> None:
        raise NotImplementedError
