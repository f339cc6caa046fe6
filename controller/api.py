"""EdgeAPI: the client-facing gRPC adapter. Converts messages, calls the core, maps errors."""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import structlog

from controller import __version__
from controller.core import Controller
from controller.placement import Explanation
from controller.records import NodeRecord, VMRecord
from controller.validation import validate_spec
from shared import convert
from shared.domain import VMSpec
from shared.errors import InvalidArgument, NovaCronError
from shared.grpc_status import status_code
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

log = structlog.get_logger(__name__)

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]


def rpc(
    method: Callable[[Any, Any, Ctx], Awaitable[R]],
) -> Callable[[Any, Any, Ctx], Awaitable[R]]:
    """Every client gets a status and a message a person can act on, never a traceback."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await method(self, request, context)
        except NovaCronError as exc:
            await context.abort(status_code(exc), str(exc))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("unhandled error in API call", rpc=method.__name__, incident=incident)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (incident {incident} in controller log)"
            )
        raise AssertionError("unreachable")

    return wrapper


def vm_to_pb(vm: VMRecord) -> pb.VM:
    return pb.VM(
        id=vm.id,
        spec=convert.spec_to_pb(vm.spec),
        node_id=vm.node_id,
        desired_state=convert.desired_state_to_pb(vm.desired),
        state=convert.vm_state_to_pb(vm.state),
        state_reason=vm.state_reason,
        generation=vm.generation,
        created_at=convert.timestamp(vm.created_at),
        updated_at=convert.timestamp(vm.updated_at),
        request_id=vm.request_id,
        placement_reason=vm.placement_reason,
        address=vm.address,
    )


def decision_to_pb(d: Explanation) -> epb.PlacementDecision:
    return epb.PlacementDecision(
        node_id=d.node_id or "",
        candidates=[
            epb.CandidateScore(
                node_id=c.node_id,
                total=c.total,
                terms=[
                    epb.ScoreTerm(
                        name=t.name, raw=t.raw, weight=t.weight, weighted=t.weighted, note=t.note
                    )
                    for t in c.terms
                ],
                latency_ms=c.latency_ms,
                latency_estimated=c.latency_estimated,
                distance_km=c.distance_km or 0.0,
            )
            for c in d.candidates
        ],
        rejections=[
            epb.Rejection(node_id=r.node_id, filter=r.filter, reason=r.reason) for r in d.rejections
        ],
        summary=d.summary,
        nodes_total=d.nodes_total,
        nodes_feasible=d.nodes_feasible,
        decision_ms=d.decision_ms,
    )


def dry_run_spec(spec: pb.VMSpec) -> VMSpec:
    """A spec for a what-if question: the name does not matter, the rest is checked."""
    domain = convert.spec_from_pb(spec)
    if not domain.name:
        domain = replace(domain, name="what-if")
    validate_spec(domain)
    return domain


class EdgeAPIServicer(edge_api_pb2_grpc.EdgeAPIServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def _node_to_pb(self, node: NodeRecord) -> pb.Node:
        condition, reason = self.c.condition(node)
        msg = pb.Node(
            info=convert.node_info_to_pb(node.info),
            condition=convert.condition_to_pb(condition),
            condition_reason=reason,
            utilization=convert.utilization_to_pb(node.utilization),
            allocated=convert.capacity_to_pb(self.c.allocated(node.node_id)),
            vm_count=len(self.c.vms_on(node.node_id)),
            images=[convert.image_to_pb(i) for i in node.images],
            registered_at=convert.timestamp(node.registered_at),
            cordoned=node.cordoned,
            latencies=[convert.latency_to_pb(s) for s in node.latencies],
            mesh_address=node.mesh_address,
            mesh_version=self.c.mesh_version if node.mesh else 0,
        )
        if node.mesh_status is not None:
            msg.mesh.CopyFrom(convert.mesh_status_to_pb(node.mesh_status))
        if node.last_heartbeat:
            msg.last_heartbeat.CopyFrom(convert.timestamp(node.last_heartbeat))
        return msg

    @rpc
    async def DeployVM(self, request: epb.DeployVMRequest, context: Ctx) -> pb.VM:
        vm = await self.c.deploy(
            convert.spec_from_pb(request.spec), request.request_id, request.timeout_seconds
        )
        return vm_to_pb(vm)

    @rpc
    async def DeployVMs(self, request: epb.DeployVMsRequest, context: Ctx) -> epb.DeployVMsResponse:
        vms, plan = await self.c.deploy_many(
            [convert.spec_from_pb(s) for s in request.specs],
            request.request_id,
            request.timeout_seconds,
        )
        return epb.DeployVMsResponse(vms=[vm_to_pb(vm) for vm in vms], plan=plan)

    @rpc
    async def MigrateVM(self, request: epb.MigrateVMRequest, context: Ctx) -> epb.MigrateVMResponse:
        report = await self.c.migrate(
            request.name_or_id,
            request.target_node_id,
            bandwidth_mbit=request.bandwidth_mbit,
            max_downtime_ms=request.max_downtime_ms,
            timeout=request.timeout_seconds,
            postcopy=request.postcopy,
        )
        return epb.MigrateVMResponse(
            vm=vm_to_pb(report.vm),
            source_node_id=report.source,
            target_reason=report.target_reason,
            elapsed_ms=report.elapsed_ms,
            downtime_ms=report.downtime_ms,
            memory_bytes=report.memory_bytes,
            total_ms=report.total_ms,
        )

    @rpc
    async def GetVM(self, request: epb.GetVMRequest, context: Ctx) -> pb.VM:
        return vm_to_pb(self.c.find_vm(request.name_or_id))

    @rpc
    async def ListVMs(self, request: epb.ListVMsRequest, context: Ctx) -> epb.ListVMsResponse:
        vms = sorted(self.c.vms.values(), key=lambda v: v.spec.name)
        if request.node_id:
            vms = [vm for vm in vms if vm.node_id == request.node_id]
        return epb.ListVMsResponse(vms=[vm_to_pb(vm) for vm in vms])

    @rpc
    async def DeleteVM(self, request: epb.DeleteVMRequest, context: Ctx) -> epb.DeleteVMResponse:
        return epb.DeleteVMResponse(vm=vm_to_pb(await self.c.delete(request.name_or_id)))

    @rpc
    async def SuspendVM(self, request: epb.VMRef, context: Ctx) -> pb.VM:
        return vm_to_pb(await self.c.suspend(request.name_or_id))

    @rpc
    async def ResumeVM(self, request: epb.VMRef, context: Ctx) -> pb.VM:
        return vm_to_pb(await self.c.resume(request.name_or_id))

    @rpc
    async def GetVMConsole(
        self, request: epb.GetVMConsoleRequest, context: Ctx
    ) -> epb.GetVMConsoleResponse:
        vm, text = await self.c.console(request.name_or_id, request.max_bytes)
        return epb.GetVMConsoleResponse(vm_id=vm.id, node_id=vm.node_id, text=text)

    @rpc
    async def ListNodes(self, request: epb.ListNodesRequest, context: Ctx) -> epb.ListNodesResponse:
        nodes = sorted(self.c.nodes.values(), key=lambda n: n.node_id)
        return epb.ListNodesResponse(nodes=[self._node_to_pb(n) for n in nodes])

    @rpc
    async def GetNode(self, request: epb.GetNodeRequest, context: Ctx) -> pb.Node:
        return self._node_to_pb(self.c.get_node(request.node_id))

    @rpc
    async def GetStatus(self, request: epb.GetStatusRequest, context: Ctx) -> epb.Status:
        ready = sum(1 for n in self.c.nodes.values() if self.c.condition(n)[0].value == "ready")
        by_state = Counter(vm.state.value for vm in self.c.vms.values())
        return epb.Status(
            controller_id=self.c.controller_id,
            version=__version__,
            nodes_total=len(self.c.nodes),
            nodes_ready=ready,
            vms_total=len(self.c.vms),
            vms_by_state=dict(by_state),
            store=self.c.store.name,
            uptime_seconds=self.c.clock() - self.c.started_at,
        )

    @rpc
    async def PlaceVM(self, request: epb.PlaceVMRequest, context: Ctx) -> epb.PlacementDecision:
        return decision_to_pb(self.c.explain_placement(dry_run_spec(request.spec), k=3))

    @rpc
    async def RecommendPlacement(
        self, request: epb.RecommendPlacementRequest, context: Ctx
    ) -> epb.PlacementDecision:
        k = request.k or 3
        return decision_to_pb(self.c.explain_placement(dry_run_spec(request.spec), k=k))

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
                    condition=convert.condition_to_pb(self.c.condition(node)[0]),
                )
                for node, km, rtt in self.c.nearest(loc, request.n or 5)
            ]
        )

    @rpc
    async def CordonNode(self, request: epb.CordonNodeRequest, context: Ctx) -> pb.Node:
        return self._node_to_pb(await self.c.cordon(request.node_id, request.cordoned))

    @rpc
    async def RotateMeshKey(self, request: epb.GetNodeRequest, context: Ctx) -> pb.Node:
        return self._node_to_pb(await self.c.rotate_mesh_key(request.node_id))
