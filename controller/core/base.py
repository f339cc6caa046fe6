"""The core's machinery: one event at a time, changes through the journal, instructions out.

Handlers (the mixins in `deploy`, `vm_ops`, `agents`, `migration`, `mesh_push`) change state
only through the helpers here, which journal every change and queue what must be persisted,
so `handle` can always return a `Persist` first and `rollback` can take an event back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from controller.core import events as ev
from controller.core.audit import action_of, detail_of, target_of
from controller.core.instructions import (
    ArmTimer,
    CloseSession,
    Instruction,
    Outbox,
    Reply,
    SendCommand,
    Welcome,
)
from controller.core.journal import Journal
from controller.core.state import FleetState, Join, Pending, Settings
from controller.placement import ScoredEngine
from controller.records import (
    NON_RESERVING_STATES,
    AuditEntry,
    Drain,
    FailoverRecord,
    JoinToken,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    Tombstone,
    VMRecord,
)
from shared.commands import AgentCommand, CommandResult, Envelope, command_name
from shared.domain import VMState
from shared.errors import DeadlineExceeded, NovaCronError, Unavailable

log = structlog.get_logger("controller.core")

ResultHandler = Callable[[Pending, CommandResult | None, NovaCronError | None], None]

# Requests: a failure inside their handler is the reply (and the event is taken back).
REQUESTS: tuple[type[ev.Event], ...] = (
    ev.DeployRequested,
    ev.DeployManyRequested,
    ev.DeleteRequested,
    ev.PowerRequested,
    ev.ConsoleRequested,
    ev.MigrateRequested,
    ev.CordonRequested,
    ev.FailOverRequested,
    ev.DrainRequested,
    ev.RotateKeyRequested,
    ev.AdoptRequested,
    ev.DeleteOrphanRequested,
    ev.TokenCreateRequested,
    ev.TokenRevokeRequested,
    ev.EnrolRequested,
    ev.CertificateIssued,
    ev.NodeRevokeRequested,
    ev.NodeRemoveRequested,
    ev.ServiceTokenCreateRequested,
    ev.ServiceTokenRevokeRequested,
    ev.IdentityRefused,
)

ID_NAMESPACE = uuid.UUID("6f1c2a52-8d0e-4c59-9a43-1f0e7c3b9d21")


# Observed states a restart keeps (the others become UNKNOWN until the node reports).
KEPT_STATES = frozenset({VMState.FAILED, VMState.DELETING})


def _durable(vm: VMRecord) -> tuple[object, ...]:
    """What of a VM record must survive a restart."""
    kept = vm.state if vm.state in KEPT_STATES else None
    return (
        vm.spec,
        vm.node_id,
        vm.desired,
        vm.generation,
        vm.request_id,
        vm.placement_reason,
        vm.address,
        vm.migrating_to,
        kept,
        vm.state_reason if kept else "",
    )


def _durable_node(node: NodeRecord) -> tuple[object, ...]:
    return (
        node.info,
        node.images,
        node.registered_at,
        node.cordoned,
        node.mesh,
        node.mesh_address,
    )


class CoreBase:
    def __init__(self, settings: Settings, engine: ScoredEngine) -> None:
        self.state = FleetState(settings)
        self.engine = engine
        self.journal = Journal()
        self._out = Outbox()
        self._now = 0.0
        self._stimulus = ""
        self._actor = "api"
        self._seq = 0
        self._handlers: dict[type[ev.Event], Callable[[Any], None]] = {}
        self._on_result: dict[str, ResultHandler] = {}
        self.log = log

    @property
    def settings(self) -> Settings:
        return self.state.settings

    # ------------------------------------------------------------ the one entry point

    def handle(self, event: ev.Event) -> list[Instruction]:
        """Apply `event`; return what to do, its `Persist` (if any) first."""
        self.journal.begin()
        self._out = Outbox()
        self._now, self._stimulus, self._seq = event.now, event.stimulus_id, 0
        self.log = log.bind(stimulus_id=event.stimulus_id)
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"no handler for {type(event).__name__}")
        # automatic decisions (ticks, timers, agent traffic) are the controller's own
        self._actor = event.actor or ("api" if isinstance(event, REQUESTS) else "controller")
        try:
            handler(event)
            if isinstance(event, REQUESTS) and not self._out.audit:  # else the handler's
                self.audit_request(event, "ok")  # own records (with ids) are the request's
        except NovaCronError as exc:
            self.rollback()
            self._out = Outbox()
            if isinstance(event, REQUESTS):
                self.audit_request(event, f"refused: {exc}")
                self.reply_error(event.stimulus_id, exc)
            else:
                self.log.warning("event refused", kind=type(event).__name__, error=str(exc))
        except Exception:  # a bug: nothing of the event happened, the runner reports it
            self.rollback()
            self._out = Outbox()
            raise
        return self._out.instructions()

    def rollback(self) -> None:
        """Take the last event back (its Persist failed): nothing it decided happened."""
        self.journal.rollback()
        self.state.fleet_changed()

    # ------------------------------------------------------------ durable changes

    def put_vm(self, vm: VMRecord) -> VMRecord:
        """Change a VM record; persisted unless only what is re-learnt from the nodes after a
        restart changed (its observed state: a heartbeat costs no write)."""
        old = self.state.vms.get(vm.id)
        if (
            old is None
            or old.node_id != vm.node_id
            or old.migrating_to != vm.migrating_to
            or (old.state in NON_RESERVING_STATES) != (vm.state in NON_RESERVING_STATES)
        ):
            self.state.fleet_changed()
        self.journal.put(self.state.vms, vm.id, vm)
        if old is None or _durable(old) != _durable(vm) or vm.id in self._out.vms:
            self._out.forget.pop(vm.id, None)
            self._out.vms[vm.id] = vm
        return vm

    def set_vm_state(self, vm: VMRecord, state: VMState, reason: str, **changes: Any) -> VMRecord:
        """The VM's observed state (and any other field), logged if it changed."""
        current = self.state.vms.get(vm.id, vm)
        updated = replace(current, state=state, state_reason=reason, **changes)
        if updated == current:
            return current
        updated = replace(updated, updated_at=self._now)
        if current.state is not state:
            self.log.info(
                "vm state", vm_id=vm.id, name=vm.spec.name, state=state.value, reason=reason
            )
        return self.put_vm(updated)

    def forget_vm(self, vm: VMRecord) -> None:
        """Drop the record; a tombstone remembers it was deleted, at the highest generation any
        copy of it can have (a migration's arriving copy has one more)."""
        self.journal.pop(self.state.vms, vm.id)
        self.state.fleet_changed()
        generation = max(
            [vm.generation]
            + [m.to_generation for m in self.state.migrations.values() if m.vm_id == vm.id]
        )
        stone = Tombstone(vm.id, vm.spec.name, generation, self._now)
        self.journal.put(self.state.tombstones, vm.id, stone)
        self._out.vms.pop(vm.id, None)
        self._out.forget[vm.id] = None
        self._out.tombstones[vm.id] = stone
        if vm.address:
            self.journal.pop(self.state.vm_ipam.held, vm.id)
        self.audit("vm.deleted", vm.id, f"name={vm.spec.name}")

    def put_node(self, node: NodeRecord) -> NodeRecord:
        """Change a node record; persisted when what a restart needs of it changed."""
        old = self.state.nodes.get(node.node_id)
        self.journal.put(self.state.nodes, node.node_id, node)
        if (
            old is None
            or old.info != node.info
            or old.cordoned != node.cordoned
            or old.images != node.images
            or old.latencies != node.latencies
        ):
            self.state.fleet_changed()
        if old is None or _durable_node(old) != _durable_node(node):
            self._out.nodes[node.node_id] = node
        return node

    def put_migration(self, mig: MigrationRecord) -> MigrationRecord:
        old = self.state.migrations.get(mig.id)
        if old is not None and old.phase is not mig.phase:
            mig = replace(mig, phase_times=(*mig.phase_times, (mig.phase.value, self._now)))
            self.log.info(
                "migration phase",
                migration_id=mig.id,
                vm_id=mig.vm_id,
                phase=mig.phase.value,
                error=mig.error or None,
            )
        mig = replace(mig, updated_at=self._now)
        self.journal.put(self.state.migrations, mig.id, mig)
        self._out.migrations[mig.id] = mig
        return mig

    def put_failover(self, record: FailoverRecord) -> FailoverRecord:
        self.journal.put(self.state.failovers, record.id, record)
        self._out.failovers[record.id] = record
        return record

    def put_drain(self, drain: Drain) -> Drain:
        """A drain changed (written only when it did: it is advanced on every tick)."""
        if self.state.drains.get(drain.node_id) != drain:
            self.journal.put(self.state.drains, drain.node_id, drain)
            self._out.drains[drain.node_id] = drain
        return drain

    def put_token(self, token: JoinToken) -> JoinToken:
        self.journal.put(self.state.tokens, token.id, token)
        self._out.tokens[token.id] = token
        return token

    def put_credential(self, credential: NodeCredential) -> NodeCredential:
        self.journal.put(self.state.credentials, credential.node_id, credential)
        self._out.credentials[credential.node_id] = credential
        return credential

    def audit(self, action: str, target: str, detail: str, result: str = "ok") -> None:
        """An audit record of the current event, by its actor."""
        self._out.audit.append(
            AuditEntry(self._now, action, target, detail, self._actor, result, self._stimulus)
        )

    def audit_request(self, event: ev.Event, result: str) -> None:
        self.audit(action_of(event), target_of(event), detail_of(event), result)

    def count(self, name: str, by: int = 1) -> int:
        value = self.state.counters.get(name, 0) + by
        self.journal.put(self.state.counters, name, value)
        return value

    def hold_address(self, ipam_name: str, holder: str) -> str:
        ipam = self.state.ipam if ipam_name == "mesh" else self.state.vm_ipam
        address = ipam.peek(holder)
        if ipam.held.get(holder) != address:
            self.journal.put(ipam.held, holder, address)
        return address

    def new_id(self, what: str) -> str:
        """An id derived from the stimulus (unique: stimulus ids are), so a replay of the same
        events gives the same ids."""
        self._seq += 1
        return str(uuid.uuid5(ID_NAMESPACE, f"{self._stimulus}/{what}/{self._seq}"))

    # ------------------------------------------------------------ actions

    def send(
        self,
        node_id: str,
        command: AgentCommand,
        *,
        purpose: str,
        timeout: float = 0.0,
        vm_id: str = "",
        migration_id: str = "",
        waiters: tuple[str, ...] = (),
        doing: str = "",
    ) -> str:
        """Send `command` to a connected node; its answer (or its loss) goes to the handler
        registered for `purpose`. Returns the command id."""
        session = self.state.sessions.get(node_id)
        if session is None:
            raise Unavailable(f"node {node_id!r} is not connected")
        self._seq += 1
        command_id = f"{self._stimulus}.{self._seq}"
        timeout = timeout or self.settings.command_timeout
        deadline = self._now + timeout
        pending = Pending(
            command_id,
            node_id,
            session.session_id,
            command,
            purpose,
            deadline,
            vm_id=vm_id,
            migration_id=migration_id,
            waiters=waiters,
            doing=doing or command_name(command),
            timeout=timeout,
        )
        self.journal.put(self.state.pending, command_id, pending)
        envelope = Envelope(command_id, deadline, command)
        self._out.actions.append(SendCommand(node_id, session.session_id, envelope))
        self._out.actions.append(ArmTimer(deadline, f"cmd:{command_id}"))
        return command_id

    def reply(self, to: str, value: object) -> None:
        if to:
            self._out.actions.append(Reply(to, value=value))

    def reply_error(self, to: str, error: NovaCronError) -> None:
        if to:
            self._out.actions.append(Reply(to, error=error))

    def answer_migration(
        self, migration_id: str, value: object = None, error: NovaCronError | None = None
    ) -> None:
        """Answer the request that started a migration, once (it may end long after)."""
        found = self.journal.pop(self.state.migration_callers, migration_id)
        if found is None:
            return
        caller = found[0]
        if error is not None:
            self.reply_error(caller, error)
        else:
            self.reply(caller, value)

    def close_session(
        self, node_id: str, session_id: str, reason: str, *, denied: bool = False
    ) -> None:
        self._out.actions.append(CloseSession(node_id, session_id, reason, denied))

    def welcome(self, node_id: str, session_id: str) -> None:
        self._out.actions.append(
            Welcome(node_id, session_id, self.settings.installation_id, self.settings.take_over)
        )

    def arm(self, at: float, key: str) -> None:
        self._out.actions.append(ArmTimer(at, key))

    def join(self, join: Join) -> None:
        self.journal.put(self.state.joins, join.stimulus_id, join)

    # ------------------------------------------------------------ answers to commands

    def on_result(self, event: ev.AgentResult) -> None:
        pending = self.state.pending.get(event.result.command_id)
        if pending is None or pending.node_id != event.node_id:
            return  # answered already, timed out, or not ours
        self._settle(pending, event.result, None)

    def on_timer(self, event: ev.TimerFired) -> None:
        kind, _, key = event.key.partition(":")
        if kind == "cmd":
            pending = self.state.pending.get(key)
            if pending is not None:
                lost = DeadlineExceeded(
                    f"node {pending.node_id!r} did not answer command "
                    f"{command_name(pending.command)} within {pending.timeout:g}s"
                )
                self._settle(pending, None, lost)

    def fail_session_commands(self, node_id: str, session_id: str, reason: str) -> None:
        for pending in list(self.state.pending.values()):
            if pending.node_id == node_id and pending.session_id == session_id:
                self._settle(pending, None, Unavailable(f"node {node_id!r} {reason}"))

    def on_undeliverable(self, event: ev.CommandUndeliverable) -> None:
        pending = self.state.pending.get(event.command_id)
        if pending is not None:
            self._settle(pending, None, Unavailable(f"node {event.node_id!r} {event.reason}"))

    def _settle(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        self.journal.pop(self.state.pending, pending.command_id)
        self._on_result[pending.purpose](pending, result, lost)
        for join in list(self.state.joins.values()):
            if pending.command_id in join.commands:
                remaining = join.commands - {pending.command_id}
                self.journal.put(
                    self.state.joins, join.stimulus_id, replace(join, commands=remaining)
                )
                if not remaining:
                    self.journal.pop(self.state.joins, join.stimulus_id)
                    self.finish_join(join)

    def finish_join(self, join: Join) -> None:
        raise NotImplementedError
