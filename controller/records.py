"""What the controller keeps about nodes and VMs (its desired state plus what it last observed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.domain import (
    Capacity,
    DesiredState,
    ImageInfo,
    LatencyStats,
    NodeInfo,
    Utilization,
    VMSpec,
    VMState,
)
from shared.mesh import MeshIdentity, MeshStatus

# VMs in these states hold no capacity on their node.
NON_RESERVING_STATES = frozenset({VMState.FAILED})


@dataclass(slots=True)
class VMRecord:
    id: str
    spec: VMSpec
    node_id: str
    desired: DesiredState
    state: VMState
    generation: int
    created_at: float
    updated_at: float
    state_reason: str = ""
    request_id: str = ""
    placement_reason: str = ""
    address: str = ""  # on the VM network (CIDR /32), when its node is in the mesh
    migrating_to: str = ""  # a live migration to this node is under way (it holds capacity)

    @property
    def reserves_capacity(self) -> bool:
        return self.state not in NON_RESERVING_STATES


@dataclass(slots=True)
class NodeRecord:
    info: NodeInfo
    registered_at: float
    last_heartbeat: float = 0.0
    connected: bool = False
    utilization: Utilization = field(default_factory=Utilization)
    images: tuple[ImageInfo, ...] = ()
    cordoned: bool = False
    latencies: tuple[LatencyStats, ...] = ()  # as measured by the agent, latest heartbeat
    mesh: MeshIdentity | None = None  # the node's end of the mesh, from its hello
    mesh_address: str = ""  # its overlay address (IPAM), held while the node exists
    mesh_status: MeshStatus | None = None  # what its agent last reported applied

    def controller_rtt_ms(self) -> tuple[float, float, float] | None:
        """The agent's measured RTT to the controller (p50, p95, p99), if it reported one."""
        for stats in self.latencies:
            if stats.target == "controller":
                return stats.p50_ms, stats.p95_ms, stats.p99_ms
        return None

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def capacity(self) -> Capacity:
        return self.info.capacity


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    action: str
    target: str
    detail: str = ""
    actor: str = "api"
