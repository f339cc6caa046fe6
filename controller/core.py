"""The controller's core: desired state, node registry, deploy/delete/suspend/resume, reconcile.

It owns the in-memory view (authoritative while running, loaded from the store at start) and
writes every change through the store before acknowledging it. Placement and reconciliation are
pure functions it calls; the gRPC adapters (`controller.api`, `controller.sessions`) call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from controller.liveness import node_condition
from controller.mesh import Ipam, gateway_of, peer_set
from controller.placement import BatchPlacer, Explanation, NodeRow, NodeTable, ScoredEngine
from controller.reconcile import Action, ActionKind, plan
from controller.records import NON_RESERVING_STATES, AuditEntry, NodeRecord, VMRecord
from controller.sessions import AgentConnection
from controller.store import Store
from controller.validation import validate_spec
from shared import convert
from shared.domain import (
    Capacity,
    DesiredState,
    Location,
    NodeCondition,
    VMSpec,
    VMState,
    VMStatus,
)
from shared.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NovaCronError,
    ResourceExhausted,
    Unavailable,
    error_from_code,
)
from shared.geo import haversine_km, rtt_estimate_ms
from shared.mesh import MeshConfig, MeshIdentity
from shared.pb.v1 import agent_pb2 as apb

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
MAX_BATCH = 100  # VMs per DeployVMs: the planner's moves and swaps grow with its square


@dataclass(frozen=True, slots=True)
class MigrationReport:
    vm: VMRecord
    source: str
    target_reason: str
    elapsed_ms: float
    downtime_ms: float
    memory_bytes: int
    total_ms: float


class Controller:
    def __init__(
        self,
        store: Store,
        engine: ScoredEngine,
        *,
        controller_id: str = "",
        heartbeat_interval: float = 5.0,
        probe_interval: float = 1.0,
        command_timeout: float = 30.0,
        deploy_timeout: float = 120.0,
        mesh_pool: str = "10.250.0.0/16",
        vm_pool: str = "10.251.0.0/16",
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.engine = engine
        self.controller_id = controller_id or f"controller-{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = heartbeat_interval
        self.probe_interval = probe_interval
        self.command_timeout = command_timeout
        self.deploy_timeout = deploy_timeout
        self.clock = clock
        self.started_at = clock()
        self.nodes: dict[str, NodeRecord] = {}
        self.vms: dict[str, VMRecord] = {}
        self._connections: dict[str, AgentConnection] = {}
        self._inflight: dict[str, asyncio.Task[VMRecord]] = {}
        self._migrating: set[str] = set()  # VM ids with a live migration under way
        self._table: NodeTable | None = None
        self._table_built = 0.0
        self._table_stale = True
        self._background: set[asyncio.Task[None]] = set()
        self.ipam = Ipam(mesh_pool)
        self.vm_pool = vm_pool
        self.vm_ipam = Ipam(vm_pool, reserved=(gateway_of(vm_pool),))
        # Peer-set versions only grow, across restarts too: start from the clock in ms.
        self.mesh_version = int(clock() * 1000)

    # ---------------------------------------------------------------- start-up and views

    async def load(self) -> None:
        """Load persisted state. Until its node reports, a VM's observed state is unknown."""
        for node in await self.store.load_nodes():
            self.nodes[node.node_id] = node
            if node.mesh_address:
                self.ipam.held[node.node_id] = node.mesh_address
        for vm in await self.store.load_vms():
            if vm.state not in (VMState.FAILED, VMState.DELETING):
                vm.state = VMState.UNKNOWN
                vm.state_reason = "controller restarted; waiting for the node to report"
            self.vms[vm.id] = vm
            if vm.address:
                self.vm_ipam.held[vm.id] = vm.address.split("/")[0]
        log.info("state loaded", nodes=len(self.nodes), vms=len(self.vms), store=self.store.name)

    def condition(self, node: NodeRecord) -> tuple[NodeCondition, str]:
        return node_condition(
            node.connected, node.last_heartbeat, self.clock(), self.heartbeat_interval
        )

    def allocated(self, node_id: str) -> Capacity:
        total = Capacity()
        for vm in self.vms.values():
            if node_id in (vm.node_id, vm.migrating_to) and vm.reserves_capacity:
                total = total + vm.spec.capacity()
        return total

    def vms_on(self, node_id: str) -> list[VMRecord]:
        return [vm for vm in self.vms.values() if vm.node_id == node_id]

    def node_table(self) -> NodeTable:
        """The placement engine's view of the fleet, kept between decisions (the engine keeps
        its per-table results, and building it costs ~0.1 s at 10k nodes). Rebuilt after any
        change a deploy did not book into it itself, and at least every heartbeat interval
        (for measured RTT, and nodes that went silent before their session closed)."""
        now = self.clock()
        if (
            self._table is None
            or self._table_stale
            or now - self._table_built > self.heartbeat_interval
        ):
            self._table, self._table_built, self._table_stale = self.build_node_table(), now, False
        return self._table

    def fleet_changed(self) -> None:
        """Nodes or bookings changed in a way the kept placement table does not reflect."""
        self._table_stale = True

    def build_node_table(self) -> NodeTable:
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
            condition, reason = self.condition(node)
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
                    images=frozenset(i.name for i in node.images),
                    cost_per_hour=info.cost_per_hour,
                    rtt_ms=node.controller_rtt_ms(),
                    groups=groups.get(node.node_id, {}),
                )
            )
        return NodeTable(rows)

    def explain_placement(self, spec: VMSpec, k: int = 3) -> Explanation:
        """The decision DeployVM would take now, with its explanation (no reservation)."""
        return self.engine.decide(self.node_table(), self.engine.request(spec), k)

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

    async def cordon(self, node_id: str, cordoned: bool) -> NodeRecord:
        node = self.get_node(node_id)
        if node.cordoned != cordoned:
            node.cordoned = cordoned
            self.fleet_changed()
            await self.store.put_node(node)
            await self._audit("node.cordon" if cordoned else "node.uncordon", node_id, "")
        return node

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

    # ---------------------------------------------------------------- client operations

    async def deploy(self, spec: VMSpec, request_id: str = "", timeout: float = 0) -> VMRecord:
        validate_spec(spec)
        timeout = timeout or self.deploy_timeout
        if request_id:
            for vm in self.vms.values():
                if vm.request_id == request_id:
                    return await self._retry_of(vm, spec, timeout)
        self._require_new_name(spec.name)
        self._require_image(spec.image)
        decision = self.explain_placement(spec, k=2)
        if decision.node_id is None:
            raise ResourceExhausted(decision.summary)
        record = await self._admit(spec, request_id, decision.node_id, decision.placement_reason())
        return await self._start(record, timeout)

    async def deploy_many(
        self, specs: Sequence[VMSpec], request_id: str = "", timeout: float = 0
    ) -> tuple[list[VMRecord], str]:
        """Plan several VMs together (the batch placer), admit all of them or none, then
        create them concurrently. Returns the records, in order, and how the plan was made."""
        if not specs:
            raise InvalidArgument("no VMs to deploy")
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} VMs per batch, got {len(specs)}")
        seen: set[str] = set()
        for spec in specs:
            validate_spec(spec)
            if spec.name in seen:
                raise InvalidArgument(f"VM name {spec.name!r} appears twice in the batch")
            seen.add(spec.name)
        timeout = timeout or self.deploy_timeout
        keys = [f"{request_id}#{i}" if request_id else "" for i in range(len(specs))]
        earlier = {
            vm.request_id: vm for vm in self.vms.values() if request_id and vm.request_id in keys
        }
        todo = [i for i, key in enumerate(keys) if key not in earlier]
        for i in todo:
            self._require_new_name(specs[i].name)
            self._require_image(specs[i].image)
        table = self.build_node_table()  # the planner books into it: never the kept one
        requests = [self.engine.request(specs[i]) for i in todo]
        plan = BatchPlacer(self.engine).place(table, requests)
        if plan.placed < len(todo):
            j = plan.node_ids.index(None)
            why = self.engine.explain(self.engine.evaluate(table, requests[j]), k=0)
            raise ResourceExhausted(
                f"only {plan.placed} of {len(todo)} VMs fit together, nothing was deployed; "
                f"{specs[todo[j]].name}: {why.summary}"
            )
        nodes = len(set(plan.node_ids))
        summary = f"{len(todo)} VMs on {nodes} node{'s' if nodes != 1 else ''}"
        if plan.repaired:
            summary += f"; {plan.repaired} placed by moving another"
        if plan.improved:
            summary += f"; {plan.improved} moves/swaps raised the score"
        records: dict[int, VMRecord] = {}
        for i, node_id in zip(todo, plan.node_ids, strict=True):
            assert node_id is not None
            records[i] = await self._admit(
                specs[i], keys[i], node_id, f"planned as a batch: {summary}"
            )
        waits = [
            self._retry_of(earlier[keys[i]], specs[i], timeout)
            if i not in records
            else self._start(records[i], timeout)
            for i in range(len(specs))
        ]
        results = await asyncio.gather(*waits, return_exceptions=True)
        out: list[VMRecord] = []
        for i, result in enumerate(results):
            if isinstance(result, VMRecord):
                out.append(result)
            elif isinstance(result, NovaCronError):  # its state and reason are on the record
                out.append(records.get(i) or earlier[keys[i]])
            else:
                raise result
        return out, summary

    def _require_new_name(self, name: str) -> None:
        if any(vm.spec.name == name for vm in self.vms.values()):
            raise AlreadyExists(f"a VM named {name!r} already exists")

    async def _admit(self, spec: VMSpec, request_id: str, node_id: str, reason: str) -> VMRecord:
        """Record the VM on its node (the record is the capacity reservation), persist it and
        route its address over the mesh."""
        now = self.clock()
        record = VMRecord(
            id=str(uuid.uuid4()),
            spec=spec,
            node_id=node_id,
            desired=DesiredState.RUNNING,
            state=VMState.PENDING,
            generation=1,
            created_at=now,
            updated_at=now,
            state_reason=f"placed on {node_id}",
            request_id=request_id,
            placement_reason=reason,
        )
        if self.nodes[node_id].mesh is not None:  # VM networking rides on the mesh
            record.address = f"{self.vm_ipam.address(record.id)}/32"
        # Recorded before any await: this is the capacity reservation.
        self.vms[record.id] = record
        table = self._table
        if table is not None and not self._table_stale and node_id in table.index:
            table.reserve(table.index[node_id], spec.capacity(), spec.placement.spread_group)
        else:
            self.fleet_changed()
        try:
            await self.store.put_vm(record)
        except Exception:
            del self.vms[record.id]
            self.fleet_changed()
            raise
        await self._audit("vm.deploy", record.id, f"name={spec.name} node={node_id}")
        log.info("vm placed", vm_id=record.id, name=spec.name, node_id=node_id)
        if record.address:  # the other sites learn the route to it
            self.mesh_version += 1
            self._spawn(self.push_mesh())
        return record

    async def _start(self, record: VMRecord, timeout: float) -> VMRecord:
        task = asyncio.create_task(self._create_on_node(record, timeout))
        self._inflight[record.id] = task
        task.add_done_callback(lambda _: self._inflight.pop(record.id, None))
        return await asyncio.shield(task)

    async def _retry_of(self, vm: VMRecord, spec: VMSpec, timeout: float) -> VMRecord:
        if vm.spec != spec:
            raise AlreadyExists(
                f"request_id {vm.request_id!r} was already used to deploy VM {vm.spec.name!r} "
                "with a different spec"
            )
        task = self._inflight.get(vm.id)
        if task is not None:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        if vm.state is VMState.FAILED:
            raise FailedPrecondition(
                f"VM {vm.spec.name!r} from this request failed: {vm.state_reason}; "
                "delete it before deploying again"
            )
        return vm

    def _require_image(self, image: str) -> None:
        known = {i.name for node in self.nodes.values() for i in node.images}
        if image not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise NotFound(f"image {image!r} not found on any node (known images: {listing})")

    async def _create_on_node(self, vm: VMRecord, timeout: float) -> VMRecord:
        command = apb.Command(
            create=apb.CreateVM(
                **self._placed_vm(vm), start_paused=vm.desired is DesiredState.PAUSED
            )
        )
        result = await self._command_vm(vm, command, timeout, "creating")
        await self._observe(vm, convert.vm_status_from_pb(result.vm))
        return vm

    async def _command_vm(
        self, vm: VMRecord, command: apb.Command, timeout: float, doing: str
    ) -> apb.CommandResult:
        """Run a command for `vm` on its node, turning every failure into a recorded state."""
        conn = self._connections.get(vm.node_id)
        try:
            if conn is None:
                raise Unavailable(f"node {vm.node_id!r} is not connected")
            result = await conn.call(command, timeout)
        except (Unavailable, DeadlineExceeded) as exc:
            await self._set_state(
                vm, VMState.UNKNOWN, f"{exc}; state unknown until the node reports"
            )
            raise type(exc)(f"{doing} VM {vm.spec.name!r}: {exc}; its state is unknown") from exc
        if not result.ok:
            if command.WhichOneof("action") == "create":
                await self._set_state(vm, VMState.FAILED, result.error.message)
            raise error_from_code(
                result.error.code,
                f"node {vm.node_id!r} failed {doing} VM {vm.spec.name!r}: {result.error.message}",
            )
        return result

    # ---------------------------------------------------------------- live migration

    async def migrate(
        self,
        name_or_id: str,
        target: str = "",
        *,
        bandwidth_mbit: int = 0,
        max_downtime_ms: int = 0,
        timeout: float = 0,
        postcopy: bool = False,
    ) -> MigrationReport:
        """Move a running VM to `target` (or the best other node by placement) while it runs;
        its address follows it over the mesh. On failure it keeps running where it was."""
        started = time.monotonic()
        timeout = timeout or self.deploy_timeout
        vm = self.find_vm(name_or_id)
        name, source = vm.spec.name, vm.node_id
        if vm.id in self._migrating:
            raise FailedPrecondition(f"VM {name!r} is already migrating to {vm.migrating_to!r}")
        if vm.id in self._inflight or vm.desired is DesiredState.DELETED:
            raise FailedPrecondition(f"VM {name!r} is being created or deleted")
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise FailedPrecondition(
                f"VM {name!r} is {vm.state.value}; only a running or paused VM can be migrated"
            )
        source_conn = self._connections.get(source)
        if source_conn is None:
            raise Unavailable(f"node {source!r}, where VM {name!r} runs, is not connected")
        target, reason = self._migration_target(vm, target)
        target_conn = self._connections.get(target)
        if target_conn is None:
            raise Unavailable(f"node {target!r} is not connected")
        self._migrating.add(vm.id)
        failed_after_arrival: NovaCronError | None = None
        try:
            vm.migrating_to = target  # the record now holds capacity on both nodes
            self.fleet_changed()
            await self._set_state(vm, vm.state, f"migrating to {target}")
            await self.store.put_vm(vm)
            await self._audit("vm.migrate", vm.id, f"name={name} from={source} to={target}")
            try:
                prepared = await self._call(
                    target_conn,
                    apb.Command(prepare_migration=apb.PrepareMigration(**self._placed_vm(vm))),
                    self.command_timeout,
                    f"preparing node {target!r} for VM {name!r}",
                )
            except NovaCronError as exc:  # nothing has moved yet
                await self._abandon_migration(vm, target_conn, target)
                raise type(exc)(f"{exc}; VM {name!r} keeps running on {source!r}") from exc
            try:
                await self._call(
                    source_conn,
                    apb.Command(
                        migrate=apb.MigrateVM(
                            vm_id=vm.id,
                            name=name,
                            target=prepared.migration_target,
                            bandwidth_mbit=bandwidth_mbit,
                            max_downtime_ms=max_downtime_ms,
                            address=vm.address,
                            postcopy=postcopy,
                        )
                    ),
                    timeout,
                    f"migrating VM {name!r} from {source!r} to {target!r}",
                )
            except (Unavailable, DeadlineExceeded) as exc:
                if vm.node_id != target:
                    # The source's libvirtd drives the migration, not its agent: it may still
                    # land. Nothing is undone; the record settles where the VM is reported.
                    await self._set_state(
                        vm,
                        VMState.UNKNOWN,
                        f"migration to {target} outcome unknown ({exc}); "
                        "settles when the nodes report",
                    )
                    raise type(exc)(
                        f"{exc}; the migration of VM {name!r} may still complete: "
                        f"`novacron vm show {name}` tells where it runs once the nodes report"
                    ) from exc
                log.warning("migration call failed after arrival", vm_id=vm.id, error=str(exc))
            except NovaCronError as exc:  # the source agent says it failed: libvirt rolled back
                if vm.node_id != target:
                    await self._abandon_migration(vm, target_conn, target)
                    raise type(exc)(f"{exc}; VM {name!r} keeps running on {source!r}") from exc
                # ...unless the guest had already run on the target (post-copy): it stays
                # recorded there, where its running half is, and the caller hears the failure
                log.warning("migration call failed after arrival", vm_id=vm.id, error=str(exc))
                failed_after_arrival = exc
            # It runs on the target now (if its arrival event has not switched it already,
            # switch now): the record and the route follow it.
            if vm.node_id != target:
                await self._switch_to(vm, target)
            vm.migrating_to = ""
            self.fleet_changed()
            await self.store.put_vm(vm)
            finished = await self._finish_migration(vm, target_conn)
        finally:
            self._migrating.discard(vm.id)
        if failed_after_arrival is not None:
            raise type(failed_after_arrival)(
                f"{failed_after_arrival}; VM {name!r} is recorded on {target!r}, where it ran "
                f"last: `novacron vm show {name}` tells its state"
            ) from failed_after_arrival
        stats = finished.migration_stats
        log.info("vm migrated", vm_id=vm.id, name=name, source=source, target=target)
        return MigrationReport(
            vm=vm,
            source=source,
            target_reason=reason,
            elapsed_ms=stats.elapsed_ms,
            downtime_ms=stats.downtime_ms,
            memory_bytes=stats.memory_bytes,
            total_ms=(time.monotonic() - started) * 1000,
        )

    async def _switch_to(self, vm: VMRecord, target: str) -> None:
        """The VM runs on `target`: its record, and every site's route to it, say so."""
        source, vm.node_id = vm.node_id, target  # before any await: no second switch
        self.fleet_changed()
        await self._announce_switch(vm, source)

    async def _announce_switch(self, vm: VMRecord, source: str) -> None:
        await self._set_state(vm, VMState.RUNNING, f"migrated from {source}")
        if vm.address:
            self.mesh_version += 1
            await self.push_mesh()

    def _placed_vm(self, vm: VMRecord) -> dict[str, Any]:
        """What a node needs to host `vm`: the fields CreateVM and PrepareMigration share."""
        return {
            "vm_id": vm.id,
            "spec": convert.spec_to_pb(vm.spec),
            "generation": vm.generation,
            "address": vm.address,
            "gateway": gateway_of(self.vm_pool) if vm.address else "",
        }

    async def _finish_migration(self, vm: VMRecord, conn: AgentConnection) -> apb.CommandResult:
        """On the node the VM arrived on: route its address to the bridge, cap it, report."""
        finished = await self._call(
            conn,
            apb.Command(finish_migration=apb.CreateVM(**self._placed_vm(vm))),
            self.command_timeout,
            f"finishing VM {vm.spec.name!r} on {conn.node_id!r}",
        )
        if finished.HasField("vm"):
            await self._observe(vm, convert.vm_status_from_pb(finished.vm))
        return finished

    def _migration_target(self, vm: VMRecord, wanted: str) -> tuple[str, str]:
        """The node to migrate to and why: `wanted` if every placement filter accepts it for
        this VM (data residency, capacity, ...), else the best other node by placement."""
        table = self.node_table()
        request = self.engine.request(vm.spec)
        explanation = self.engine.decide(table, request, k=len(table))
        if wanted:
            self.get_node(wanted)
            if wanted == vm.node_id:
                raise InvalidArgument(f"VM {vm.spec.name!r} already runs on {wanted!r}")
            for rejection in explanation.rejections:
                if rejection.node_id == wanted:
                    raise FailedPrecondition(
                        f"node {wanted!r} cannot take VM {vm.spec.name!r}: "
                        f"{rejection.filter}: {rejection.reason}"
                    )
            return wanted, "requested"
        for candidate in explanation.candidates:
            if candidate.node_id != vm.node_id:
                return candidate.node_id, candidate.one_line()
        detail = explanation.summary
        if explanation.node_id is not None:  # "placed on X: 1/3 nodes fit; ..." -> the counts
            detail = detail.split(": ", 1)[1]
        raise ResourceExhausted(
            f"no other node can take VM {vm.spec.name!r} (it runs on {vm.node_id!r}): {detail}"
        )

    async def _abandon_migration(self, vm: VMRecord, conn: AgentConnection, target: str) -> None:
        """Undo what the target staged; the VM's record is back on its source alone."""
        vm.migrating_to = ""
        self.fleet_changed()
        await self._set_state(vm, vm.state, f"migration to {target} failed")
        await self.store.put_vm(vm)
        cleanup = apb.VMTarget(vm_id=vm.id, name=vm.spec.name)  # no address: not routed there
        with contextlib.suppress(NovaCronError):
            await conn.call(apb.Command(delete=cleanup), self.command_timeout)

    async def _call(
        self, conn: AgentConnection, command: apb.Command, timeout: float, doing: str
    ) -> apb.CommandResult:
        result = await conn.call(command, timeout)
        if not result.ok:
            raise error_from_code(result.error.code, f"{doing}: {result.error.message}")
        return result

    async def delete(self, name_or_id: str) -> VMRecord:
        vm = self.find_vm(name_or_id)
        never_created = vm.state is VMState.FAILED
        vm.desired = DesiredState.DELETED
        await self._set_state(vm, VMState.DELETING, "deletion requested")
        await self._audit("vm.delete", vm.id, f"name={vm.spec.name} node={vm.node_id}")
        conn = self._connections.get(vm.node_id)
        if conn is None:
            if never_created:  # the driver leaves nothing behind when a create fails
                vm.state_reason = "deleted (it had failed to deploy)"
                await self._forget(vm)
                return vm
            await self._set_state(
                vm,
                VMState.DELETING,
                f"node {vm.node_id!r} is not connected; the VM will be deleted when it reconnects",
            )
            return vm
        target = apb.VMTarget(vm_id=vm.id, name=vm.spec.name, address=vm.address)
        command = apb.Command(delete=target)
        try:
            await self._command_vm(vm, command, self.command_timeout, "deleting")
        except (Unavailable, DeadlineExceeded):
            vm.state = VMState.DELETING
            vm.state_reason = "the node did not confirm; the VM will be deleted when it reports"
            await self.store.put_vm(vm)
            return vm
        vm.state = VMState.MISSING
        vm.state_reason = f"deleted from node {vm.node_id}"
        await self._forget(vm)
        return vm

    async def suspend(self, name_or_id: str) -> VMRecord:
        return await self._change_power(name_or_id, DesiredState.PAUSED)

    async def resume(self, name_or_id: str) -> VMRecord:
        return await self._change_power(name_or_id, DesiredState.RUNNING)

    async def _change_power(self, name_or_id: str, desired: DesiredState) -> VMRecord:
        vm = self.find_vm(name_or_id)
        verb = "suspend" if desired is DesiredState.PAUSED else "resume"
        if vm.desired is DesiredState.DELETED:
            raise FailedPrecondition(f"cannot {verb} VM {vm.spec.name!r}: it is being deleted")
        if vm.state is VMState.FAILED:
            raise FailedPrecondition(f"cannot {verb} VM {vm.spec.name!r}: it failed to deploy")
        if vm.node_id not in self._connections:
            raise FailedPrecondition(
                f"cannot {verb} VM {vm.spec.name!r}: node {vm.node_id!r} is not connected"
            )
        vm.desired = desired
        await self.store.put_vm(vm)
        await self._audit(f"vm.{verb}", vm.id, f"name={vm.spec.name}")
        target = apb.VMTarget(vm_id=vm.id, name=vm.spec.name, generation=vm.generation)
        command = apb.Command(suspend=target) if verb == "suspend" else apb.Command(resume=target)
        result = await self._command_vm(vm, command, self.command_timeout, f"{verb[:-1]}ing")
        await self._observe(vm, convert.vm_status_from_pb(result.vm))
        return vm

    async def console(self, name_or_id: str, max_bytes: int) -> tuple[VMRecord, str]:
        vm = self.find_vm(name_or_id)
        conn = self._connections.get(vm.node_id)
        if conn is None:
            raise Unavailable(f"node {vm.node_id!r} is not connected")
        command = apb.Command(
            read_console=apb.ReadConsole(
                vm_id=vm.id, name=vm.spec.name, max_bytes=max_bytes or 65536
            )
        )
        result = await conn.call(command, self.command_timeout)
        if not result.ok:
            raise error_from_code(result.error.code, result.error.message)
        return vm, result.console

    # ---------------------------------------------------------------- agent sessions

    async def on_hello(self, conn: AgentConnection, hello: apb.Hello) -> None:
        info = convert.node_info_from_pb(hello.node)
        now = self.clock()
        previous = self._connections.get(info.node_id)
        if previous is not None and previous is not conn:
            previous.close("replaced by a newer session")
        node = self.nodes.get(info.node_id)
        if node is None:
            node = NodeRecord(info=info, registered_at=now)
            self.nodes[info.node_id] = node
            await self._audit("node.register", info.node_id, f"edge_type={info.edge_type}")
        node.info = info
        node.images = tuple(convert.image_from_pb(i) for i in hello.images)
        node.connected = True
        self.fleet_changed()
        node.last_heartbeat = now
        self._connections[info.node_id] = conn
        mesh_changed = False
        if hello.HasField("mesh"):
            identity = convert.mesh_identity_from_pb(hello.mesh)
            mesh_changed = identity != node.mesh
            node.mesh = identity
            node.mesh_address = self.ipam.address(node.node_id)
        await self.store.put_node(node)
        reported = [convert.vm_status_from_pb(v) for v in hello.vms]
        self._spawn(self._reconcile(conn, reported))
        if node.mesh is not None:
            # A changed key or endpoint changes every member's peer set; otherwise only the
            # reconnecting node needs its own (it may have restarted and lost its tunnel).
            if mesh_changed:
                self.mesh_version += 1
                self._spawn(self.push_mesh())
            else:
                self._spawn(self.push_mesh(only=node.node_id))

    async def on_heartbeat(self, conn: AgentConnection, heartbeat: apb.Heartbeat) -> None:
        node = self.nodes.get(conn.node_id)
        if node is None or self._connections.get(conn.node_id) is not conn:
            return
        node.last_heartbeat = self.clock()
        node.utilization = convert.utilization_from_pb(heartbeat.utilization)
        node.latencies = tuple(convert.latency_from_pb(s) for s in heartbeat.latencies)
        if heartbeat.HasField("mesh"):
            node.mesh_status = convert.mesh_status_from_pb(heartbeat.mesh)
        for status in heartbeat.vms:
            await self._observe_reported(conn.node_id, convert.vm_status_from_pb(status))

    async def on_vm_event(self, conn: AgentConnection, event: apb.VMEvent) -> None:
        status = convert.vm_status_from_pb(event.vm)
        log.info("vm event", node_id=conn.node_id, vm_id=status.vm_id, lifecycle=event.event)
        await self._observe_reported(conn.node_id, status)

    async def on_disconnect(self, conn: AgentConnection) -> None:
        if self._connections.get(conn.node_id) is not conn:
            return
        del self._connections[conn.node_id]
        self.fleet_changed()
        node = self.nodes.get(conn.node_id)
        if node is not None:
            node.connected = False
            await self.store.put_node(node)
        for vm in self.vms_on(conn.node_id):
            if vm.state not in (VMState.FAILED, VMState.DELETING):
                await self._set_state(vm, VMState.UNKNOWN, f"node {conn.node_id!r} disconnected")

    async def _reconcile(self, conn: AgentConnection, reported: Sequence[VMStatus]) -> None:
        await self._settle_migrations(conn.node_id, reported)
        moving = self._migrating
        desired = [vm for vm in self.vms.values() if vm.id not in moving]
        actions = plan(conn.node_id, desired, [s for s in reported if s.vm_id not in moving])
        for action in actions:
            try:
                await self._apply(conn, action)
            except NovaCronError as exc:
                log.warning(
                    "reconcile action failed",
                    node_id=conn.node_id,
                    vm_id=action.vm_id,
                    action=action.kind,
                    error=str(exc),
                )

    async def _settle_migrations(self, node_id: str, reported: Sequence[VMStatus]) -> None:
        """A record still marked as migrating although no migration runs (the controller
        restarted during one): where the VM is reported decides how it ended."""
        for status in reported:
            vm = self.vms.get(status.vm_id)
            if vm is None or not vm.migrating_to or vm.id in self._migrating:
                continue
            if node_id == vm.migrating_to:
                source, vm.node_id, vm.migrating_to = vm.node_id, node_id, ""
                self.fleet_changed()
                await self._set_state(vm, status.state, f"migrated from {source} (settled)")
                if vm.address:
                    self.mesh_version += 1
                    self._spawn(self.push_mesh())
                conn = self._connections.get(node_id)
                if conn is not None:
                    self._spawn(self._settle_on(vm, conn))
            elif node_id == vm.node_id:
                target, vm.migrating_to = vm.migrating_to, ""
                self.fleet_changed()
                await self._set_state(vm, status.state, f"migration to {target} did not finish")
            await self.store.put_vm(vm)

    async def _settle_on(self, vm: VMRecord, conn: AgentConnection) -> None:
        try:
            await self._finish_migration(vm, conn)
        except NovaCronError as exc:
            log.warning("finishing a settled migration failed", vm_id=vm.id, error=str(exc))

    async def _apply(self, conn: AgentConnection, action: Action) -> None:
        vm = self.vms.get(action.vm_id)
        if action.kind is ActionKind.OBSERVE and vm is not None and action.observed is not None:
            await self._set_state(vm, action.observed, f"reported by {conn.node_id}")
            return
        if action.kind is ActionKind.DELETE:
            log.info("removing VM not wanted on node", node_id=conn.node_id, vm_id=action.vm_id)
            address = vm.address if vm is not None else ""
            target = apb.VMTarget(vm_id=action.vm_id, name=action.name, address=address)
            result = await conn.call(apb.Command(delete=target), self.command_timeout)
            if result.ok and vm is not None and vm.desired is DesiredState.DELETED:
                await self._forget(vm)
            return
        if vm is None:
            return
        if action.kind is ActionKind.FORGET:
            await self._forget(vm)
        elif action.kind is ActionKind.CREATE:
            log.info("re-creating missing VM", node_id=conn.node_id, vm_id=vm.id)
            await self._set_state(vm, VMState.PENDING, f"missing on {conn.node_id}; re-creating")
            await self._create_on_node(vm, self.deploy_timeout)
        else:
            target = apb.VMTarget(vm_id=vm.id, name=vm.spec.name, generation=vm.generation)
            command = {
                ActionKind.SUSPEND: apb.Command(suspend=target),
                ActionKind.RESUME: apb.Command(resume=target),
                ActionKind.START: apb.Command(start=target),
            }[action.kind]
            result = await self._command_vm(vm, command, self.command_timeout, action.kind.value)
            await self._observe(vm, convert.vm_status_from_pb(result.vm))

    # ---------------------------------------------------------------- the mesh

    def mesh_members(self) -> dict[str, MeshIdentity]:
        return {n.node_id: n.mesh for n in self.nodes.values() if n.mesh is not None}

    def vm_routes(self) -> dict[str, tuple[str, ...]]:
        """node id -> the addresses of the VMs it hosts (what its peers route to it)."""
        routes: dict[str, list[str]] = {}
        for vm in self.vms.values():
            if vm.address and vm.desired is not DesiredState.DELETED:
                routes.setdefault(vm.node_id, []).append(vm.address)
        return {node_id: tuple(sorted(addrs)) for node_id, addrs in routes.items()}

    def mesh_config(self, node_id: str) -> MeshConfig:
        return peer_set(
            node_id,
            self.mesh_members(),
            self.ipam,
            self.mesh_version,
            vm_routes=self.vm_routes(),
            vm_pool=self.vm_pool,
        )

    async def push_mesh(self, only: str | None = None) -> None:
        """Send each connected member the peer set of the current version, all at once (a
        far site must not wait behind a near one). Idempotent: the agent applies only the
        difference to what it has."""
        targets = [only] if only else sorted(self.mesh_members())
        await asyncio.gather(*(self._push_mesh_to(node_id) for node_id in targets))

    async def _push_mesh_to(self, node_id: str) -> None:
        conn = self._connections.get(node_id)
        if conn is None:
            return
        config = convert.mesh_config_to_pb(self.mesh_config(node_id))
        try:
            result = await conn.call(apb.Command(mesh_config=config), self.command_timeout)
        except NovaCronError as exc:
            log.warning("mesh push failed", node_id=node_id, error=str(exc))
            return
        node = self.nodes[node_id]
        if result.HasField("mesh"):
            node.mesh_status = convert.mesh_status_from_pb(result.mesh)
        if not result.ok:
            log.warning("mesh config refused", node_id=node_id, error=result.error.message)

    async def rotate_mesh_key(self, node_id: str) -> NodeRecord:
        """The node makes a new key pair; every peer then learns its new public key."""
        node = self.get_node(node_id)
        conn = self._connections.get(node_id)
        if node.mesh is None:
            raise FailedPrecondition(f"node {node_id!r} is not in the mesh")
        if conn is None:
            raise FailedPrecondition(f"node {node_id!r} is not connected")
        result = await conn.call(apb.Command(rotate_key=apb.RotateKey()), self.command_timeout)
        if not result.ok:
            raise error_from_code(result.error.code, result.error.message)
        status = convert.mesh_status_from_pb(result.mesh)
        node.mesh_status = status
        node.mesh = replace(node.mesh, public_key=status.public_key)
        await self.store.put_node(node)
        await self._audit("node.rotate_key", node_id, "")
        self.mesh_version += 1
        await self.push_mesh()
        return node

    # ---------------------------------------------------------------- state bookkeeping

    async def _observe_reported(self, node_id: str, status: VMStatus) -> None:
        vm = self.vms.get(status.vm_id)
        if (
            vm is not None
            and vm.migrating_to == node_id != vm.node_id
            and status.state is VMState.RUNNING
        ):  # it resumed on the target: switch the route now, not when the call returns
            source, vm.node_id = vm.node_id, node_id
            self.fleet_changed()
            self._spawn(self._announce_switch(vm, source))  # never awaited here: the push
            if vm.id not in self._migrating:  # landed after its MigrateVM call gave up
                vm.migrating_to = ""
                self.fleet_changed()
                conn = self._connections.get(node_id)
                if conn is not None:
                    self._spawn(self._settle_on(vm, conn))
            return  # waits for answers on the very stream this handler serves
        if vm is None or vm.node_id != node_id or status.generation < vm.generation:
            return
        if vm.desired is DesiredState.DELETED or vm.id in self._inflight:
            return
        if vm.id in self._migrating:  # the source reports it paused/stopped as it leaves
            return
        await self._observe(vm, status)

    async def _observe(self, vm: VMRecord, status: VMStatus) -> None:
        await self._set_state(vm, status.state, status.reason or "reported by node")

    async def _set_state(self, vm: VMRecord, state: VMState, reason: str) -> None:
        if vm.state is state and vm.state_reason == reason:
            return
        changed = vm.state is not state
        if (state in NON_RESERVING_STATES) != (vm.state in NON_RESERVING_STATES):
            self.fleet_changed()
        vm.state = state
        vm.state_reason = reason
        vm.updated_at = self.clock()
        if vm.id in self.vms:
            await self.store.put_vm(vm)
        if changed:
            log.info("vm state", vm_id=vm.id, name=vm.spec.name, state=state.value, reason=reason)

    async def _forget(self, vm: VMRecord) -> None:
        self.vms.pop(vm.id, None)
        self.fleet_changed()
        await self.store.delete_vm(vm.id)
        await self._audit("vm.deleted", vm.id, f"name={vm.spec.name}")
        if vm.address:
            self.vm_ipam.release(vm.id)
            self.mesh_version += 1
            self._spawn(self.push_mesh())

    async def _audit(self, action: str, target: str, detail: str) -> None:
        await self.store.audit(
            AuditEntry(at=self.clock(), action=action, target=target, detail=detail)
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def watch_liveness(self) -> None:
        """End sessions whose heartbeats stopped, so their VMs turn UNKNOWN rather than stay
        RUNNING on a node nobody can reach (a half-open TCP stream can last minutes)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self.check_liveness()

    def check_liveness(self) -> None:
        for node_id, conn in list(self._connections.items()):
            node = self.nodes.get(node_id)
            if node is None:
                continue
            condition, reason = self.condition(node)
            if condition is NodeCondition.NOT_READY:
                log.warning("closing silent session", node_id=node_id, reason=reason)
                conn.close(reason)

    def disconnect_all(self) -> None:
        for conn in list(self._connections.values()):
            conn.close("controller shutting down")

    async def close(self) -> None:
        """After the server stopped: end background work, then the store."""
        for task in list(self._background) + list(self._inflight.values()):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()
