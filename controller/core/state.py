"""The fleet as the core knows it, and the read-only views the API and placement take of it.

Durable records (nodes, VMs, migrations, tombstones) are frozen and replaced, never edited, so
an event can be taken back (`controller.core.journal`). What lives only in memory (sessions,
heartbeats, orphans, commands in flight) sits beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.core.detector import DetectorConfig, HeartbeatHistory, judge
from controller.core.disconnect import FailoverSettings
from controller.mesh import Ipam, gateway_of
from controller.placement import NodeRow, NodeTable
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
from shared.arch import runs_on
from shared.commands import AgentCommand
from shared.domain import Capacity, Location, NodeCondition, VMStatus
from shared.errors import NotFound, NovaCronError
from shared.geo import haversine_km, rtt_estimate_ms

_UNPLACEABLE = {
    NodeCondition.SUSPECT: "suspect: heartbeats late",
    NodeCondition.LOST: "lost: no heartbeats",
}


@dataclass(frozen=True, slots=True)
class Session:
    """The agent stream a node is connected by, and why it is not ready if it is not."""

    session_id: str
    refused: str = ""  # why it is not ready although connected (hello not stored, foreign)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A VM a node runs that the controller has no record of: left running until an operator
    adopts or deletes it."""

    node_id: str
    status: VMStatus
    seen_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    """A command sent and not yet answered. `purpose` tells the core what the answer means;
    `vm_id`/`migration_id` what it is about; `waiters` the requests answered with it."""

    command_id: str
    node_id: str
    session_id: str
    command: AgentCommand
    purpose: str
    deadline: float
    vm_id: str = ""
    migration_id: str = ""
    waiters: tuple[str, ...] = ()
    doing: str = ""  # for messages: "creating", "deleting", ...
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Join:
    """A request answered once every command in `commands` is answered (a batch deploy, a
    key rotation waiting for every peer's new set)."""

    stimulus_id: str
    kind: str
    commands: frozenset[str]
    vm_ids: tuple[str, ...] = ()
    node_id: str = ""
    summary: str = ""


@dataclass(slots=True)
class Settings:
    controller_id: str = "controller"
    installation_id: str = ""
    take_over: bool = False  # a new installation: agents remembering another one are taken over
    heartbeat_interval: float = 5.0
    probe_interval: float = 1.0
    command_timeout: float = 30.0
    deploy_timeout: float = 120.0
    cold_shutdown_timeout: float = 30.0  # cold migration: ACPI shutdown this long, then forced
    max_downtime_ms: int = 150  # live migration: the pause aimed for (docs/migration.md)
    mesh_pool: str = "10.250.0.0/16"
    vm_pool: str = "10.251.0.0/16"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    # edge_computing (controller/edge_config.py): a migration request's defaults, and targets
    migration_timeout: float = 0.0  # 0 = deploy_timeout
    migration_bandwidth_mbit: int = 0  # 0 = no cap (then the source agent's own, if any)
    target_provision_s: float = math.inf  # a deploy or migration slower than this is logged
    target_migration_s: float = math.inf


@dataclass(slots=True)
class FleetState:
    settings: Settings
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    vms: dict[str, VMRecord] = field(default_factory=dict)
    migrations: dict[str, MigrationRecord] = field(default_factory=dict)
    tombstones: dict[str, Tombstone] = field(default_factory=dict)
    failovers: dict[str, FailoverRecord] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    orphans: dict[tuple[str, str], Orphan] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    joins: dict[str, Join] = field(default_factory=dict)
    unstaging: dict[str, NovaCronError] = field(default_factory=dict)  # migration -> its error
    # migration -> (the request that started it, why its target was chosen)
    migration_callers: dict[str, tuple[str, str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # "mesh_version", "seq"
    # liveness, in memory: heartbeat arrivals per node, and when a node's stream closed
    histories: dict[str, HeartbeatHistory] = field(default_factory=dict)
    disconnected_at: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0  # the core's start: nothing was heard of any node before it
    # failover, in memory: when nodes were found lost or declared dead, and why VMs wait
    lost_at: dict[str, float] = field(default_factory=dict)
    declared_dead: dict[str, float] = field(default_factory=dict)
    failover_waiting: dict[str, str] = field(default_factory=dict)
    # nodes connected but unable to read their hypervisor (libvirtd restarting), and why
    hypervisor_problems: dict[str, str] = field(default_factory=dict)
    drains: dict[str, Drain] = field(default_factory=dict)  # node -> its drain (the latest)
    tokens: dict[str, JoinToken] = field(default_factory=dict)  # join tokens by public id
    credentials: dict[str, NodeCredential] = field(default_factory=dict)  # by node id
    service_tokens: dict[str, ServiceToken] = field(default_factory=dict)  # by public id
    ipam: Ipam = field(init=False)
    vm_ipam: Ipam = field(init=False)
    _table: NodeTable | None = None
    _table_built: float = 0.0
    _table_stale: bool = True

    def __post_init__(self) -> None:
        self.ipam = Ipam(self.settings.mesh_pool)
        self.vm_ipam = Ipam(self.settings.vm_pool, reserved=(gateway_of(self.settings.vm_pool),))

    # ------------------------------------------------------------ lookups

    @property
    def mesh_version(self) -> int:
        return self.counters.get("mesh_version", 0)

    def find_vm(self, name_or_id: str) -> VMRecord:
        if not name_or_id:
            raise NotFound("a VM name or id is required")
        vm = self.vms.get(name_or_id)
        if vm is not None:
            return vm
        for vm in self.vms.values():
            if vm.spec.name == name_or_id:
                return vm
        matches = [vm for vm in self.vms.values() if vm.id.startswith(name_or_id)]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"VM {name_or_id!r} not found")

    def get_node(self, node_id: str) -> NodeRecord:
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} not found")
        return node

    def migration_of(self, vm_id: str) -> MigrationRecord | None:
        """The VM's active migration, if one is under way."""
        for mig in self.migrations.values():
            if mig.vm_id == vm_id and mig.active:
                return mig
        return None

    def latest_migration(self, vm_id: str) -> MigrationRecord | None:
        """The VM's active migration, else the one that ended last."""
        found = [m for m in self.migrations.values() if m.vm_id == vm_id]
        if not found:
            return None
        return max(found, key=lambda m: (m.active, m.started_at, m.finished_at))

    def next_generation(self, vm: VMRecord) -> int:
        """A generation above every copy of `vm` that may exist: its own and any that a migration
        or failover gave a target, so the copy it is given outranks all of them when fenced."""
        return 1 + max(
            [vm.generation]
            + [m.to_generation for m in self.migrations.values() if m.vm_id == vm.id]
            + [r.to_generation for r in self.failovers.values() if r.vm_id == vm.id]
        )

    def connected(self, node_id: str) -> bool:
        return node_id in self.sessions

    def condition(self, node: NodeRecord, now: float) -> tuple[NodeCondition, str]:
        session = self.sessions.get(node.node_id)
        if session is not None and session.refused:
            return NodeCondition.NOT_READY, session.refused
        problem = self.hypervisor_problems.get(node.node_id, "")
        if session is not None and problem:
            return NodeCondition.NOT_READY, f"hypervisor unavailable: {problem}"
        return judge(
            self.histories.get(node.node_id),
            session is not None,
            self.disconnected_at.get(node.node_id, 0.0),
            now,
            self.settings.detector,
        )

    def heard_from(self, node_id: str, at: float, *, hello: bool = False) -> None:
        """A heartbeat (or a hello) arrived: the node's own interval history learns from it."""
        history = self.histories.get(node_id)
        if history is None:
            history = HeartbeatHistory(
                self.settings.heartbeat_interval, window=self.settings.detector.window
            )
            self.histories[node_id] = history
        if hello:
            history.reconnected(at)
        else:
            history.heard(at)
        self.disconnected_at.pop(node_id, None)

    def contact_confirmed(self, node_id: str, at: float) -> None:
        """The agent confirmed contact on a second connection: alive, not a heartbeat."""
        history = self.histories.get(node_id)
        if history is not None:
            history.confirmed(at)

    def last_heard(self, node_id: str) -> float:
        """When the node was last heard from; after a restart, no earlier than the start (its
        agent may have heard the old controller until then). A confirmed contact counts: the
        agent's own contact clock only moves with heartbeats the controller has, so it
        self-fences no later than the controller, which counts from this."""
        history = self.histories.get(node_id)
        return max(history.heard_at if history is not None else 0.0, self.started_at)

    def allocated(self, node_id: str) -> Capacity:
        total = Capacity()
        for vm in self.vms.values():
            if node_id in (vm.node_id, vm.migrating_to) and vm.reserves_capacity:
                total = total + vm.spec.capacity()
        return total

    def vms_on(self, node_id: str) -> list[VMRecord]:
        return [vm for vm in self.vms.values() if vm.node_id == node_id]

    def nearest(self, location: Location, n: int) -> list[tuple[NodeRecord, float, float]]:
        """Nodes by distance: (node, km, physical-bound RTT estimate in ms)."""
        found = []
        for node in self.nodes.values():
            loc = node.info.location
            if loc is None:
                continue
            km = haversine_km(location.latitude, location.longitude, loc.latitude, loc.longitude)
            found.append((node, km, rtt_estimate_ms(km, node.info.edge_type)))
        found.sort(key=lambda f: (f[1], f[0].node_id))
        return found[:n]

    # ------------------------------------------------------------ the placement table

    def fleet_changed(self) -> None:
        """Nodes or bookings changed in a way the kept placement table does not reflect."""
        self._table_stale = True

    def node_table(self, now: float) -> NodeTable:
        """The placement engine's view of the fleet, kept between decisions (the engine keeps
        its per-table results, and building it costs ~0.1 s at 10k nodes). Rebuilt after any
        change a deploy did not book into it itself, and at least every heartbeat interval
        (for measured RTT, and nodes that went silent before their session closed)."""
        if (
            self._table is None
            or self._table_stale
            or now - self._table_built > self.settings.heartbeat_interval
        ):
            self._table, self._table_built = self.build_node_table(now), now
            self._table_stale = False
        return self._table

    def kept_table(self) -> NodeTable | None:
        """The kept table if it is current (a deploy books into it in place), else None."""
        return None if self._table_stale else self._table

    def build_node_table(self, now: float) -> NodeTable:
        """The placement engine's view of the fleet, built from the records (capacity held by
        every VM recorded on a node counts: that record is the reservation)."""
        allocated: dict[str, Capacity] = {}
        counts: dict[str, int] = {}
        groups: dict[str, dict[str, int]] = {}
        for vm in self.vms.values():
            if not vm.reserves_capacity:
                continue
            for node_id in (vm.node_id, vm.migrating_to) if vm.migrating_to else (vm.node_id,):
                allocated[node_id] = allocated.get(node_id, Capacity()) + vm.spec.capacity()
                counts[node_id] = counts.get(node_id, 0) + 1
            group = vm.spec.placement.spread_group
            if group:
                per_node = groups.setdefault(vm.node_id, {})
                per_node[group] = per_node.get(group, 0) + 1
        rows = []
        for node in self.nodes.values():
            condition, reason = self.condition(node, now)
            if condition is not NodeCondition.READY:  # one stable line per kind, for summaries
                reason = _UNPLACEABLE.get(condition, reason)
                if node.node_id not in self.sessions:
                    reason = "agent not connected"
            info = node.info
            rows.append(
                NodeRow(
                    node_id=node.node_id,
                    ready=condition is NodeCondition.READY and not node.cordoned,
                    not_ready_reason="cordoned" if node.cordoned else reason,
                    capacity=info.capacity,
                    allocated=allocated.get(node.node_id, Capacity()),
                    vm_count=counts.get(node.node_id, 0),
                    location=info.location,
                    edge_type=info.edge_type,
                    arch=info.arch,
                    labels=info.labels,
                    images=frozenset(i.name for i in node.images if runs_on(i.arch, info.arch)),
                    foreign_images={
                        i.name: i.arch for i in node.images if not runs_on(i.arch, info.arch)
                    },
                    cost_per_hour=info.cost_per_hour,
                    rtt_ms=node.controller_rtt_ms(),
                    groups=groups.get(node.node_id, {}),
                )
            )
        return NodeTable(rows)
