"""Typed domain objects shared by agent and controller.

Protobuf types stop at the RPC adapters and `shared.convert`; everything else uses these.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class EdgeType(enum.StrEnum):
    MEC = "mec"
    CDN = "cdn"
    IOT = "iot"
    ONPREM = "onprem"
    TELCO = "telco"
    CLOUD = "cloud"


class VMState(enum.StrEnum):
    """Observed state: what a hypervisor reported, or UNKNOWN when nobody can tell."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    CRASHED = "crashed"
    UNKNOWN = "unknown"
    FAILED = "failed"
    DELETING = "deleting"
    MISSING = "missing"


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DELETED = "deleted"


class NodeCondition(enum.StrEnum):
    READY = "ready"
    NOT_READY = "not_ready"  # connected, but refused (its hello not stored, another installation)
    SUSPECT = "suspect"  # heartbeats late for its link, or its stream just closed
    LOST = "lost"  # silent far beyond its link's spread, or disconnected for long


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    country_code: str = ""


@dataclass(frozen=True, slots=True)
class Capacity:
    vcpus: int = 0
    memory_mib: int = 0
    storage_gib: int = 0

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.vcpus + other.vcpus,
            self.memory_mib + other.memory_mib,
            self.storage_gib + other.storage_gib,
        )

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.vcpus - other.vcpus,
            self.memory_mib - other.memory_mib,
            self.storage_gib - other.storage_gib,
        )


@dataclass(frozen=True, slots=True)
class Utilization:
    cpu_percent: float = 0.0
    memory_used_mib: int = 0
    memory_total_mib: int = 0
    disk_used_gib: int = 0
    disk_total_gib: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    load_1m: float = 0.0


class PlacementMode(enum.StrEnum):
    """How the resource score ranks nodes: spread load (the spec's formula) or pack it."""

    SPREAD = "spread"
    BINPACK = "binpack"


class SpreadScope(enum.StrEnum):
    NODE = "node"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class PlacementConstraints:
    """What a VM asks of its node. Hashable, so the engine can cache per constraint set."""

    near: Location | None = None  # the users' location: latency is estimated from it
    max_latency_ms: float = 0.0  # 0 = the profile's max_edge_latency
    latency_percentile: int = 95  # of measured RTT: 50, 95 or 99
    countries: tuple[str, ...] = ()  # data residency: allowed ISO country codes
    edge_types: tuple[EdgeType, ...] = ()  # required: one of these
    exclude_edge_types: tuple[EdgeType, ...] = ()
    arch: str = ""
    required_labels: tuple[tuple[str, str], ...] = ()
    spread_group: str = ""  # no two VMs of a group on one node (or site)
    spread_scope: SpreadScope = SpreadScope.NODE
    max_cost_per_hour: float = 0.0  # 0 = no cap
    mode: PlacementMode | None = None  # None = the profile's


NEVER = math.inf  # a disconnect policy's "never"


@dataclass(frozen=True, slots=True)
class DisconnectPolicy:
    """What happens to a VM when its node is lost (Nomad's `disconnect` block), in seconds.
    None takes the controller's default; `NEVER` (infinity) means never: wait for the node, or
    keep running without the controller."""

    replace_after_s: float | None = None  # after the node is lost, recreate it elsewhere
    stop_after_s: float | None = None  # the agent pauses it after this long on its own

    @property
    def replaces(self) -> bool:
        return self.replace_after_s is not None and not math.isinf(self.replace_after_s)

    @property
    def stops(self) -> bool:
        return self.stop_after_s is not None and not math.isinf(self.stop_after_s)


@dataclass(frozen=True, slots=True)
class VMSpec:
    name: str
    image: str
    vcpus: int
    memory_mib: int
    labels: dict[str, str] = field(default_factory=dict)
    disk_gib: int = 0
    placement: PlacementConstraints = field(default_factory=PlacementConstraints)
    bandwidth_mbps: int = 0  # cap on the VM's NIC, each direction (0 = none)
    disconnect: DisconnectPolicy = field(default_factory=DisconnectPolicy)

    def capacity(self) -> Capacity:
        return Capacity(vcpus=self.vcpus, memory_mib=self.memory_mib, storage_gib=self.disk_gib)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    name: str
    kind: str  # "kernel" or "disk"
    arch: str
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class VMStatus:
    """A VM as one node's hypervisor sees it."""

    vm_id: str
    name: str
    state: VMState
    generation: int = 0
    image: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    reason: str = ""
    stop_after_s: float | None = None  # the agent's own: its disconnect policy (not sent)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    hostname: str
    arch: str
    edge_type: EdgeType
    capacity: Capacity
    location: Location | None = None
    labels: dict[str, str] = field(default_factory=dict)
    hypervisor: str = ""
    agent_version: str = ""
    cost_per_hour: float = 0.0


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Round-trip latency an agent measured to `target` ("controller" or a peer node id)."""

    target: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    jitter_ms: float
    loss_pct: float
    samples: int
