"""`ControllerCore`: every decision of the controller, as `handle(event) -> instructions`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from controller.core import events as ev
from controller.core.enrolment import EnrolmentMixin
from controller.core.node_removal import NodeRemovalMixin
from controller.core.service_tokens import ServiceTokenMixin
from controller.core.state import Settings
from controller.placement import ScoredEngine
from controller.records import (
    Drain,
    FailoverRecord,
    JoinToken,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    ServiceToken,
    Tombstone,
    VMRecord,
)
from shared.domain import VMState


class ControllerCore(EnrolmentMixin, ServiceTokenMixin, NodeRemovalMixin):
    def __init__(self, settings: Settings, engine: ScoredEngine) -> None:
        super().__init__(settings, engine)
        self._handlers = {
            ev.DeployRequested: self.on_deploy,
            ev.DeployManyRequested: self.on_deploy_many,
            ev.DeleteRequested: self.on_delete,
            ev.PowerRequested: self.on_power,
            ev.ConsoleRequested: self.on_console,
            ev.MigrateRequested: self.on_migrate,
            ev.CordonRequested: self.on_cordon,
            ev.FailOverRequested: self.on_fail_over,
            ev.DrainRequested: self.on_drain,
            ev.RotateKeyRequested: self.on_rotate_key,
            ev.AdoptRequested: self.on_adopt,
            ev.DeleteOrphanRequested: self.on_delete_orphan,
            ev.TokenCreateRequested: self.on_token_create,
            ev.TokenRevokeRequested: self.on_token_revoke,
            ev.EnrolRequested: self.on_enrol,
            ev.CertificateIssued: self.on_certificate_issued,
            ev.NodeRevokeRequested: self.on_node_revoke,
            ev.NodeRemoveRequested: self.on_node_remove,
            ev.ServiceTokenCreateRequested: self.on_service_token_create,
            ev.ServiceTokenRevokeRequested: self.on_service_token_revoke,
            ev.IdentityRefused: self.on_identity_refused,
            ev.AgentHello: self.on_hello,
            ev.AgentHeartbeat: self.on_heartbeat,
            ev.AgentContactConfirmed: self.on_contact_confirmed,
            ev.AgentVMStatus: self.on_vm_status,
            ev.AgentResult: self.on_result,
            ev.AgentProgress: self.on_progress,
            ev.AgentDisconnected: self.on_disconnect,
            ev.Tick: self.on_tick,
            ev.TimerFired: self.on_timer,
            ev.CommandUndeliverable: self.on_undeliverable,
            ev.PersistFailed: self.on_persist_failed,
            ev.Started: self.on_started,
        }
        self._on_result = {
            "create": self.on_create_result,
            "failover_create": self.on_failover_create_result,
            "delete": self.on_delete_result,
            "power": self.on_power_result,
            "console": self.on_console_result,
            "mesh": self.on_mesh_result,
            "rotate": self.on_rotate_result,
            "reconcile_delete": self.on_reconcile_delete_result,
            "delete_orphan": self.on_delete_orphan_result,
            "mig_prepare": self.on_prepare_result,
            "mig_migrate": self.on_migrate_result,
            "mig_finish": self.on_finish_result,
            "mig_unstage": self.on_unstage_result,
            "mig_land": self.on_land_result,
            "mig_release_source": self.on_source_command_result,
            "mig_restart_source": self.on_source_command_result,
        }

    def on_started(self, event: ev.Started) -> None:
        """After a restart: the migrations the records say were under way settle as their
        nodes report (`controller.core.settle`); nothing is re-sent blindly."""
        active = [m for m in self.state.migrations.values() if m.active]
        for mig in active:
            self.log.info(
                "migration under way at restart",
                migration_id=mig.id,
                vm_id=mig.vm_id,
                phase=mig.phase.value,
                source=mig.source,
                target=mig.target,
            )

    def load(
        self,
        nodes: Iterable[NodeRecord],
        vms: Iterable[VMRecord],
        migrations: Iterable[MigrationRecord] = (),
        tombstones: Iterable[Tombstone] = (),
        now: float = 0.0,
        failovers: Iterable[FailoverRecord] = (),
        drains: Iterable[Drain] = (),
        tokens: Iterable[JoinToken] = (),
        credentials: Iterable[NodeCredential] = (),
        service_tokens: Iterable[ServiceToken] = (),
    ) -> None:
        """Start from persisted records (a restart). Until its node reports, a VM's observed
        state is unknown; peer-set versions keep growing (they start from the clock)."""
        state = self.state
        state.started_at = now
        for node in nodes:
            state.nodes[node.node_id] = node
            state.disconnected_at[node.node_id] = now  # not heard from since the restart
            if node.mesh_address:
                state.ipam.held[node.node_id] = node.mesh_address
        for vm in vms:
            if vm.state not in (VMState.FAILED, VMState.DELETING):
                vm = replace(
                    vm,
                    state=VMState.UNKNOWN,
                    state_reason="controller restarted; waiting for the node to report",
                )
            state.vms[vm.id] = vm
            if vm.address:
                state.vm_ipam.held[vm.id] = vm.address.split("/")[0]
        for mig in migrations:
            state.migrations[mig.id] = mig
        for record in failovers:
            state.failovers[record.id] = record
        for drain in drains:  # one under way goes on at the next tick
            state.drains[drain.node_id] = drain
        for stone in tombstones:
            state.tombstones[stone.vm_id] = stone
        state.tokens.update((t.id, t) for t in tokens)
        state.credentials.update((c.node_id, c) for c in credentials)
        state.service_tokens.update((t.id, t) for t in service_tokens)
        state.counters["mesh_version"] = max(state.counters.get("mesh_version", 0), int(now * 1000))
        state.fleet_changed()
