"""Typed domain objects shared by agent and controller.

Protobuf types stop at the RPC adapters and `shared.convert`; everything else uses these.
"""

from __future__ import annotations

import enum
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
    NOT_READY = "not_ready"


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


@dataclass(frozen=True, slots=True)
class VMSpec:
    name: str
    image: str
    vcpus: int
    memory_mib: int
    labels: dict[str, str] = field(default_factory=dict)

    def capacity(self) -> Capacity:
        return Capacity(vcpus=self.vcpus, memory_mib=self.memory_mib)


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
