"""Read-only views of the core's state for the API and metrics, read at the clock's `now`.

Reads never go through the core's event queue: they change nothing, and every event is
handled in one synchronous step, so a read always sees the state between two events.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.core import ControllerCore, Orphan
from controller.core.disconnect import detection_s, expected_failover, in_force
from controller.placement import Explanation, NodeTable
from controller.records import (
    Drain,
    FailoverRecord,
    JoinToken,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    ServiceToken,
    VMRecord,
)
from shared.domain import Capacity, Location, NodeCondition, VMSpec
from shared.errors import NotFound


class ControllerView:
    def __init__(self, core: ControllerCore, clock: Callable[[], float]) -> None:
        self.core = core
        self.clock = clock

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        return self.core.state.nodes

    @property
    def vms(self) -> dict[str, VMRecord]:
        return self.core.state.vms

    @property
    def mesh_version(self) -> int:
        return self.core.state.mesh_version

    def condition(self, node: NodeRecord) -> tuple[NodeCondition, str]:
        return self.core.state.condition(node, self.clock())

    def allocated(self, node_id: str) -> Capacity:
        return self.core.state.allocated(node_id)

    def vms_on(self, node_id: str) -> list[VMRecord]:
        return self.core.state.vms_on(node_id)

    def find_vm(self, name_or_id: str) -> VMRecord:
        return self.core.state.find_vm(name_or_id)

    def get_node(self, node_id: str) -> NodeRecord:
        return self.core.state.get_node(node_id)

    def node_table(self) -> NodeTable:
        return self.core.state.node_table(self.clock())

    def build_node_table(self) -> NodeTable:
        return self.core.state.build_node_table(self.clock())

    def explain_placement(self, spec: VMSpec, k: int = 3) -> Explanation:
        return self.core.explain_placement(spec, self.clock(), k)

    def nearest(self, location: Location, n: int) -> list[tuple[NodeRecord, float, float]]:
        return self.core.state.nearest(location, n)

    def orphans(self) -> list[Orphan]:
        return sorted(self.core.state.orphans.values(), key=lambda o: (o.node_id, o.status.name))

    def migrations(self, vm: str = "") -> list[MigrationRecord]:
        """Newest first; only the VM's if `vm` (a name or id) is given."""
        found = list(self.core.state.migrations.values())
        if vm:
            vm_id = self._vm_id(vm)
            found = [m for m in found if m.vm_id == vm_id]
        return sorted(found, key=lambda m: m.started_at, reverse=True)

    def migration(self, migration_id: str = "", vm: str = "") -> MigrationRecord:
        """One migration by id (or unique id prefix), or a VM's latest."""
        if migration_id:
            mig = self.core.state.migrations.get(migration_id)
            if mig is not None:
                return mig
            found = [
                m for m in self.core.state.migrations.values() if m.id.startswith(migration_id)
            ]
            if len(found) == 1:
                return found[0]
            raise NotFound(f"migration {migration_id!r} not found")
        if not vm:
            raise NotFound("a migration id or a VM name is required")
        found = self.migrations(vm)
        if not found:
            raise NotFound(f"VM {vm!r} has no migration")
        return found[0]

    def failovers(self, vm_id: str) -> list[FailoverRecord]:
        found = [r for r in self.core.state.failovers.values() if r.vm_id == vm_id]
        return sorted(found, key=lambda r: r.started_at)

    def drain(self, node_id: str) -> Drain | None:
        return self.core.state.drains.get(node_id)

    def credential(self, node_id: str) -> NodeCredential | None:
        return self.core.state.credentials.get(node_id)

    def tokens(self) -> list[JoinToken]:
        return sorted(self.core.state.tokens.values(), key=lambda t: t.created_at)

    def service_token(self, token_id: str) -> ServiceToken | None:
        return self.core.state.service_tokens.get(token_id)

    def service_tokens(self) -> list[ServiceToken]:
        return sorted(self.core.state.service_tokens.values(), key=lambda t: t.created_at)

    def failover_waiting(self, vm_id: str) -> str:
        return self.core.state.failover_waiting.get(vm_id, "")

    def expected_failover(self, vm: VMRecord) -> str:
        """How long after its node is lost `vm` runs elsewhere, on that node's learnt link."""
        settings = self.core.settings
        detector = settings.detector
        history = self.core.state.histories.get(vm.node_id)
        detection = detection_s(detector, history, settings.heartbeat_interval)
        return expected_failover(
            in_force(vm.spec.disconnect, settings.failover),
            detection,
            detector.disconnect_lost_after_s,
            settings.failover.clock_margin_s,
        )

    def _vm_id(self, name_or_id: str) -> str:
        try:
            return self.find_vm(name_or_id).id
        except NotFound:
            for mig in self.core.state.migrations.values():  # a VM deleted since
                if name_or_id in (mig.vm_id, mig.vm_name):
                    return mig.vm_id
            raise
