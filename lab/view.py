"""What the controller sees of the lab, asked over its EdgeAPI (the operator's view)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from lab.trust import channel as channel_to
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb


@dataclass(frozen=True, slots=True)
class NodeView:
    node_id: str
    condition: str  # ready, not_ready, unknown
    edge_type: str
    latitude: float
    longitude: float
    country: str
    labels: dict[str, str]
    vcpus: int
    memory_mib: int
    storage_gib: int


@dataclass(frozen=True, slots=True)
class VMView:
    name: str
    vm_id: str
    node_id: str
    state: str


def _enum_name(prefix: str, name: str) -> str:
    return name.removeprefix(prefix).lower()


def _node(n: pb.Node) -> NodeView:
    info = n.info
    return NodeView(
        node_id=info.node_id,
        condition=_enum_name("NODE_CONDITION_", pb.NodeCondition.Name(n.condition)),
        edge_type=_enum_name("EDGE_TYPE_", pb.EdgeType.Name(info.edge_type)),
        latitude=info.location.latitude,
        longitude=info.location.longitude,
        country=info.location.country_code,
        labels=dict(info.labels),
        vcpus=info.capacity.vcpus,
        memory_mib=info.capacity.memory_mib,
        storage_gib=info.capacity.storage_gib,
    )


def fetch(
    address: str, client_dir: Path, timeout: float = 5.0
) -> tuple[list[NodeView], list[VMView]]:
    """Nodes and VMs as the controller at `address` reports them; raises grpc.RpcError."""
    with channel_to(address, client_dir) as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        nodes = stub.ListNodes(api.ListNodesRequest(), timeout=timeout).nodes
        vms = stub.ListVMs(api.ListVMsRequest(), timeout=timeout).vms
        return [_node(n) for n in nodes], [
            VMView(
                name=v.spec.name,
                vm_id=v.id,
                node_id=v.node_id,
                state=_enum_name("VM_STATE_", pb.VMState.Name(v.state)),
            )
            for v in vms
        ]


def ready_nodes(address: str, client_dir: Path, timeout: float = 2.0) -> set[str]:
    """Ids of the nodes the controller reports ready; empty if it cannot be reached."""
    try:
        with channel_to(address, client_dir) as channel:
            stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
            nodes = stub.ListNodes(api.ListNodesRequest(), timeout=timeout).nodes
    except grpc.RpcError:
        return set()
    return {n.info.node_id for n in nodes if n.condition == pb.NODE_CONDITION_READY}
