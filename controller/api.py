"""EdgeAPI: the client-facing gRPC adapter. Reads come from the view; changes are events
handed to the runner, answered by the core's reply. Errors map to statuses here."""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from controller import __version__
from controller.api_messages import (
    decision_to_pb,
    dry_run_spec,
    migration_to_pb,
    node_to_pb,
    orphan_as_vm_pb,
    orphan_to_pb,
    vm_detail_to_pb,
    vm_to_pb,
)
from controller.core import MigrationReport, Orphan
from controller.core import events as ev
from controller.core.failover import FailoverOutcome
from controller.records import MigrationRecord, NodeRecord, VMRecord
from controller.runner import Runner
from shared import convert
from shared.errors import InvalidArgument, NovaCronError
from shared.grpc_status import status_code
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

log = structlog.get_logger(__name__)

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]


# On every error the controller itself answers: a client tells it from a transport failure
# (whose UNAVAILABLE never reached the controller) without guessing from the message.
ANSWERED = (("novacron-answered", "1"),)


def rpc(
    method: Callable[[Any, Any, Ctx], Awaitable[R]],
) -> Callable[[Any, Any, Ctx], Awaitable[R]]:
    """Every client gets a status and a message a person can act on, never a traceback."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await method(self, request, context)
        except NovaCronError as exc:
            await context.abort(status_code(exc), str(exc), trailing_metadata=ANSWERED)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error in API call", rpc=method.__name__, incident=incident)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (incident {incident} in controller log)",
                trailing_metadata=ANSWERED,
            )
        raise AssertionError("unreachable")

    return wrapper


class EdgeAPIServicer(edge_api_pb2_grpc.EdgeAPIServicer):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.v = runner.view

    async def _vm(self, kind: type[ev.Event], **fields: Any) -> pb.VM:
        vm: VMRecord = await self.runner.request(kind, **fields)
        return vm_to_pb(vm)

    async def _node(self, kind: type[ev.Event], **fields: Any) -> pb.Node:
        node: NodeRecord = await self.runner.request(kind, **fields)
        return node_to_pb(self.v, node)

    @rpc
    async def DeployVM(self, request: epb.DeployVMRequest, context: Ctx) -> pb.VM:
        return await self._vm(
            ev.DeployRequested,
            spec=convert.spec_from_pb(request.spec),
            request_id=request.request_id,
            timeout=request.timeout_seconds,
        )

    @rpc
    async def DeployVMs(self, request: epb.DeployVMsRequest, context: Ctx) -> epb.DeployVMsResponse:
        vms, plan = await self.runner.request(
            ev.DeployManyRequested,
            specs=tuple(convert.spec_from_pb(s) for s in request.specs),
            request_id=request.request_id,
            timeout=request.timeout_seconds,
        )
        return epb.DeployVMsResponse(vms=[vm_to_pb(vm) for vm in vms], plan=plan)

    @rpc
    async def MigrateVM(self, request: epb.MigrateVMRequest, context: Ctx) -> epb.MigrateVMResponse:
        report: MigrationReport = await self.runner.request(
            ev.MigrateRequested,
            name_or_id=request.name_or_id,
            target=request.target_node_id,
            bandwidth_mbit=request.bandwidth_mbit,
            max_downtime_ms=request.max_downtime_ms,
            timeout=request.timeout_seconds,
            postcopy=request.postcopy,
            reason=request.reason,
            priority=request.priority,
            mode=request.mode or "live",
        )
        return epb.MigrateVMResponse(
            vm=vm_to_pb(report.vm),
            source_node_id=report.source,
            target_reason=report.target_reason,
            elapsed_ms=report.elapsed_ms,
            downtime_ms=report.downtime_ms,
            memory_bytes=report.memory_bytes,
            total_ms=report.total_ms,
            migration=migration_to_pb(report.migration),
        )

    @rpc
    async def GetMigrationStatus(
        self, request: epb.GetMigrationRequest, context: Ctx
    ) -> epb.Migration:
        return migration_to_pb(self.v.migration(request.migration_id, request.vm))

    @rpc
    async def ListMigrations(
        self, request: epb.ListMigrationsRequest, context: Ctx
    ) -> epb.ListMigrationsResponse:
        found = self.v.migrations(request.vm)
        return epb.ListMigrationsResponse(migrations=[migration_to_pb(m) for m in found])

    async def WatchMigration(
        self, request: epb.GetMigrationRequest, context: Ctx
    ) -> AsyncIterator[epb.Migration]:
        """By id: the record now, then each persisted change, until it has ended. By VM: its
        active migration the same way, or, if none is under way, its next one."""
        current: MigrationRecord | None = None
        vm_id = ""
        try:
            if request.migration_id:
                current = self.v.migration(request.migration_id)
            elif request.vm:
                vm_id = self.v.find_vm(request.vm).id
                current = self.v.core.state.migration_of(vm_id)
            else:
                raise InvalidArgument("a migration id or a VM name is required")
        except NovaCronError as exc:
            await context.abort(status_code(exc), str(exc))
        updates = self.runner.watch_migrations()  # subscribed before the first answer
        try:
            if current is not None:
                yield migration_to_pb(current)
                if not current.active:
                    return
            async for mig in updates:
                if current is None and mig.vm_id == vm_id and mig.active:
                    current = mig
                if current is None or mig.id != current.id:
                    continue
                yield migration_to_pb(mig)
                if not mig.active:
                    return
        finally:
            updates.close()

    @rpc
    async def ListOrphans(
        self, request: epb.ListOrphansRequest, context: Ctx
    ) -> epb.ListOrphansResponse:
        return epb.ListOrphansResponse(orphans=[orphan_to_pb(o) for o in self.v.orphans()])

    @rpc
    async def AdoptVM(self, request: epb.OrphanRef, context: Ctx) -> pb.VM:
        return await self._vm(ev.AdoptRequested, node_id=request.node_id, vm_id=request.vm)

    @rpc
    async def DeleteOrphan(self, request: epb.OrphanRef, context: Ctx) -> epb.Orphan:
        orphan = await self.runner.request(
            ev.DeleteOrphanRequested, node_id=request.node_id, vm_id=request.vm
        )
        return orphan_to_pb(orphan)

    @rpc
    async def GetVM(self, request: epb.GetVMRequest, context: Ctx) -> pb.VM:
        return vm_detail_to_pb(self.v, self.v.find_vm(request.name_or_id))

    @rpc
    async def ListVMs(self, request: epb.ListVMsRequest, context: Ctx) -> epb.ListVMsResponse:
        vms = sorted(self.v.vms.values(), key=lambda v: v.spec.name)
        if request.node_id:
            vms = [vm for vm in vms if vm.node_id == request.node_id]
        return epb.ListVMsResponse(vms=[vm_detail_to_pb(self.v, vm) for vm in vms])

    @rpc
    async def DeleteVM(self, request: epb.DeleteVMRequest, context: Ctx) -> epb.DeleteVMResponse:
        """A VM by name or id; an orphan by its name or id too (when only one node has it)."""
        gone = await self.runner.request(ev.DeleteRequested, name_or_id=request.name_or_id)
        if isinstance(gone, Orphan):
            return epb.DeleteVMResponse(vm=orphan_as_vm_pb(gone))
        return epb.DeleteVMResponse(vm=vm_to_pb(gone))

    @rpc
    async def SuspendVM(self, request: epb.VMRef, context: Ctx) -> pb.VM:
        return await self._vm(ev.PowerRequested, name_or_id=request.name_or_id, paused=True)

    @rpc
    async def ResumeVM(self, request: epb.VMRef, context: Ctx) -> pb.VM:
        return await self._vm(ev.PowerRequested, name_or_id=request.name_or_id, paused=False)

    @rpc
    async def GetVMConsole(
        self, request: epb.GetVMConsoleRequest, context: Ctx
    ) -> epb.GetVMConsoleResponse:
        vm, text = await self.runner.request(
            ev.ConsoleRequested, name_or_id=request.name_or_id, max_bytes=request.max_bytes
        )
        return epb.GetVMConsoleResponse(vm_id=vm.id, node_id=vm.node_id, text=text)

    @rpc
    async def ListNodes(self, request: epb.ListNodesRequest, context: Ctx) -> epb.ListNodesResponse:
        nodes = sorted(self.v.nodes.values(), key=lambda n: n.node_id)
        return epb.ListNodesResponse(nodes=[node_to_pb(self.v, n) for n in nodes])

    @rpc
    async def GetNode(self, request: epb.GetNodeRequest, context: Ctx) -> pb.Node:
        return node_to_pb(self.v, self.v.get_node(request.node_id))

    @rpc
    async def GetStatus(self, request: epb.GetStatusRequest, context: Ctx) -> epb.Status:
        ready = sum(1 for n in self.v.nodes.values() if self.v.condition(n)[0].value == "ready")
        by_state = Counter(vm.state.value for vm in self.v.vms.values())
        return epb.Status(
            controller_id=self.runner.core.settings.controller_id,
            version=__version__,
            nodes_total=len(self.v.nodes),
            nodes_ready=ready,
            vms_total=len(self.v.vms),
            vms_by_state=dict(by_state),
            store=self.runner.store.name,
            uptime_seconds=self.runner.clock() - self.runner.started_at,
        )

    @rpc
    async def PlaceVM(self, request: epb.PlaceVMRequest, context: Ctx) -> epb.PlacementDecision:
        return decision_to_pb(self.v.explain_placement(dry_run_spec(request.spec), k=3))

    @rpc
    async def RecommendPlacement(
        self, request: epb.RecommendPlacementRequest, context: Ctx
    ) -> epb.PlacementDecision:
        k = request.k or 3
        return decision_to_pb(self.v.explain_placement(dry_run_spec(request.spec), k=k))

    @rpc
    async def FindNearestNodes(
        self, request: epb.FindNearestNodesRequest, context: Ctx
    ) -> epb.FindNearestNodesResponse:
        if not request.HasField("location"):
            raise InvalidArgument("location is required")
        loc = convert.location_from_pb(request.location)
        if not (-90 <= loc.latitude <= 90 and -180 <= loc.longitude <= 180):
            raise InvalidArgument(
                "location must have latitude in [-90, 90], longitude in [-180, 180]"
            )
        return epb.FindNearestNodesResponse(
            nodes=[
                epb.NodeDistance(
                    node_id=node.node_id,
                    distance_km=km,
                    estimated_rtt_ms=rtt,
                    edge_type=convert.edge_type_to_pb(node.info.edge_type),
                    country_code=node.info.location.country_code if node.info.location else "",
                    condition=convert.condition_to_pb(self.v.condition(node)[0]),
                )
                for node, km, rtt in self.v.nearest(loc, request.n or 5)
            ]
        )

    @rpc
    async def CordonNode(self, request: epb.CordonNodeRequest, context: Ctx) -> pb.Node:
        return await self._node(
            ev.CordonRequested, node_id=request.node_id, cordoned=request.cordoned
        )

    @rpc
    async def HandleEdgeFailure(
        self, request: epb.HandleEdgeFailureRequest, context: Ctx
    ) -> epb.HandleEdgeFailureResponse:
        outcomes: list[FailoverOutcome] = await self.runner.request(
            ev.FailOverRequested, node_id=request.node_id, node_is_dead=request.node_is_dead
        )
        return epb.HandleEdgeFailureResponse(
            node_id=request.node_id,
            outcomes=[
                epb.FailoverOutcome(
                    vm_id=o.vm_id, vm_name=o.name, target_node_id=o.target, waiting=o.waiting
                )
                for o in outcomes
            ],
        )

    @rpc
    async def DrainNode(self, request: epb.DrainNodeRequest, context: Ctx) -> pb.Node:
        await self.runner.request(
            ev.DrainRequested,
            node_id=request.node_id,
            parallel=request.parallel,
            cold=request.cold,
        )
        return node_to_pb(self.v, self.v.get_node(request.node_id))

    @rpc
    async def RotateMeshKey(self, request: epb.GetNodeRequest, context: Ctx) -> pb.Node:
        return await self._node(ev.RotateKeyRequested, node_id=request.node_id)
