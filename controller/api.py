"""EdgeAPI: the client-facing gRPC adapter. Converts messages, calls the core, maps errors."""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from controller import __version__
from controller.core import Controller
from controller.records import NodeRecord, VMRecord
from shared import convert
from shared.errors import NovaCronError
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
    )


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
        )
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
