"""Protobuf <-> the domain types of shared.domain and shared.mesh (part of shared.convert)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from shared import domain as d
from shared.errors import InvalidArgument
from shared.pb.v1 import types_pb2 as pb

__all__ = [
    "capacity_from_pb",
    "capacity_to_pb",
    "condition_to_pb",
    "constraints_from_pb",
    "constraints_to_pb",
    "desired_state_to_pb",
    "edge_type_from_pb",
    "edge_type_to_pb",
    "image_from_pb",
    "image_to_pb",
    "latency_from_pb",
    "latency_to_pb",
    "location_from_pb",
    "location_to_pb",
    "node_info_from_pb",
    "node_info_to_pb",
    "spec_from_pb",
    "spec_to_pb",
    "timestamp",
    "timestamp_seconds",
    "utilization_from_pb",
    "utilization_to_pb",
    "vm_state_from_pb",
    "vm_state_to_pb",
    "vm_status_from_pb",
    "vm_status_to_pb",
]

_EDGE_TO_PB = {
    d.EdgeType.MEC: pb.EDGE_TYPE_MEC,
    d.EdgeType.CDN: pb.EDGE_TYPE_CDN,
    d.EdgeType.IOT: pb.EDGE_TYPE_IOT,
    d.EdgeType.ONPREM: pb.EDGE_TYPE_ONPREM,
    d.EdgeType.TELCO: pb.EDGE_TYPE_TELCO,
    d.EdgeType.CLOUD: pb.EDGE_TYPE_CLOUD,
}
_EDGE_FROM_PB = {v: k for k, v in _EDGE_TO_PB.items()}

_STATE_TO_PB = {
    d.VMState.PENDING: pb.VM_STATE_PENDING,
    d.VMState.RUNNING: pb.VM_STATE_RUNNING,
    d.VMState.PAUSED: pb.VM_STATE_PAUSED,
    d.VMState.STOPPED: pb.VM_STATE_STOPPED,
    d.VMState.CRASHED: pb.VM_STATE_CRASHED,
    d.VMState.UNKNOWN: pb.VM_STATE_UNKNOWN,
    d.VMState.FAILED: pb.VM_STATE_FAILED,
    d.VMState.DELETING: pb.VM_STATE_DELETING,
    d.VMState.MISSING: pb.VM_STATE_MISSING,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}

_DESIRED_TO_PB = {
    d.DesiredState.RUNNING: pb.DESIRED_STATE_RUNNING,
    d.DesiredState.PAUSED: pb.DESIRED_STATE_PAUSED,
    d.DesiredState.DELETED: pb.DESIRED_STATE_DELETED,
}

_CONDITION_TO_PB = {
    d.NodeCondition.READY: pb.NODE_CONDITION_READY,
    d.NodeCondition.NOT_READY: pb.NODE_CONDITION_NOT_READY,
    d.NodeCondition.SUSPECT: pb.NODE_CONDITION_SUSPECT,
    d.NodeCondition.LOST: pb.NODE_CONDITION_LOST,
}


def edge_type_to_pb(value: d.EdgeType) -> pb.EdgeType.ValueType:
    return _EDGE_TO_PB[value]


def edge_type_from_pb(value: pb.EdgeType.ValueType) -> d.EdgeType:
    """Unspecified is onprem; a value no release defines is refused (never read as onprem)."""
    if value == pb.EDGE_TYPE_UNSPECIFIED:
        return d.EdgeType.ONPREM
    found = _EDGE_FROM_PB.get(value)
    if found is None:
        raise InvalidArgument(f"edge type {value} is not one this controller knows")
    return found


def vm_state_to_pb(value: d.VMState) -> pb.VMState.ValueType:
    return _STATE_TO_PB[value]


def vm_state_from_pb(value: pb.VMState.ValueType) -> d.VMState:
    return _STATE_FROM_PB.get(value, d.VMState.UNKNOWN)


def desired_state_to_pb(value: d.DesiredState) -> pb.DesiredState.ValueType:
    return _DESIRED_TO_PB[value]


def condition_to_pb(value: d.NodeCondition) -> pb.NodeCondition.ValueType:
    return _CONDITION_TO_PB[value]


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(at, tz=UTC))
    return ts


def timestamp_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def capacity_to_pb(c: d.Capacity) -> pb.Capacity:
    return pb.Capacity(vcpus=c.vcpus, memory_mib=c.memory_mib, storage_gib=c.storage_gib)


def capacity_from_pb(c: pb.Capacity) -> d.Capacity:
    return d.Capacity(vcpus=c.vcpus, memory_mib=c.memory_mib, storage_gib=c.storage_gib)


def utilization_to_pb(u: d.Utilization) -> pb.Utilization:
    return pb.Utilization(
        cpu_percent=u.cpu_percent,
        memory_used_mib=u.memory_used_mib,
        memory_total_mib=u.memory_total_mib,
        disk_used_gib=u.disk_used_gib,
        disk_total_gib=u.disk_total_gib,
        net_rx_bytes=u.net_rx_bytes,
        net_tx_bytes=u.net_tx_bytes,
        load_1m=u.load_1m,
    )


def utilization_from_pb(u: pb.Utilization) -> d.Utilization:
    return d.Utilization(
        cpu_percent=u.cpu_percent,
        memory_used_mib=u.memory_used_mib,
        memory_total_mib=u.memory_total_mib,
        disk_used_gib=u.disk_used_gib,
        disk_total_gib=u.disk_total_gib,
        net_rx_bytes=u.net_rx_bytes,
        net_tx_bytes=u.net_tx_bytes,
        load_1m=u.load_1m,
    )


_MODE_TO_PB = {
    d.PlacementMode.SPREAD: pb.PLACEMENT_MODE_SPREAD,
    d.PlacementMode.BINPACK: pb.PLACEMENT_MODE_BINPACK,
}
_MODE_FROM_PB = {v: k for k, v in _MODE_TO_PB.items()}


def location_to_pb(loc: d.Location) -> pb.Location:
    return pb.Location(
        latitude=loc.latitude, longitude=loc.longitude, country_code=loc.country_code
    )


def location_from_pb(loc: pb.Location) -> d.Location:
    return d.Location(loc.latitude, loc.longitude, loc.country_code)


def constraints_to_pb(c: d.PlacementConstraints) -> pb.PlacementConstraints:
    msg = pb.PlacementConstraints(
        max_latency_ms=c.max_latency_ms,
        latency_percentile=c.latency_percentile,
        countries=c.countries,
        edge_types=[edge_type_to_pb(e) for e in c.edge_types],
        exclude_edge_types=[edge_type_to_pb(e) for e in c.exclude_edge_types],
        arch=c.arch,
        required_labels=dict(c.required_labels),
        spread_group=c.spread_group,
        spread_scope=(
            pb.SPREAD_SCOPE_SITE if c.spread_scope is d.SpreadScope.SITE else pb.SPREAD_SCOPE_NODE
        ),
        max_cost_per_hour=c.max_cost_per_hour,
        mode=_MODE_TO_PB[c.mode] if c.mode else pb.PLACEMENT_MODE_UNSPECIFIED,
    )
    if c.near is not None:
        msg.near.CopyFrom(location_to_pb(c.near))
    return msg


def constraints_from_pb(c: pb.PlacementConstraints) -> d.PlacementConstraints:
    return d.PlacementConstraints(
        near=location_from_pb(c.near) if c.HasField("near") else None,
        max_latency_ms=c.max_latency_ms,
        latency_percentile=c.latency_percentile or 95,
        countries=tuple(code.upper() for code in c.countries),
        edge_types=tuple(edge_type_from_pb(e) for e in c.edge_types),
        exclude_edge_types=tuple(edge_type_from_pb(e) for e in c.exclude_edge_types),
        arch=c.arch,
        required_labels=tuple(sorted(c.required_labels.items())),
        spread_group=c.spread_group,
        spread_scope=(
            d.SpreadScope.SITE if c.spread_scope == pb.SPREAD_SCOPE_SITE else d.SpreadScope.NODE
        ),
        max_cost_per_hour=c.max_cost_per_hour,
        mode=_MODE_FROM_PB.get(c.mode),
    )


def spec_to_pb(s: d.VMSpec) -> pb.VMSpec:
    return pb.VMSpec(
        name=s.name,
        image=s.image,
        vcpus=s.vcpus,
        memory_mib=s.memory_mib,
        labels=s.labels,
        disk_gib=s.disk_gib,
        placement=constraints_to_pb(s.placement),
        bandwidth_mbps=s.bandwidth_mbps,
        disconnect=pb.DisconnectPolicy(
            replace_after_s=s.disconnect.replace_after_s, stop_after_s=s.disconnect.stop_after_s
        ),
    )


_DISCONNECT = ("replace_after_s", "stop_after_s")  # DisconnectPolicy's fields, in order


def _optional(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def spec_from_pb(s: pb.VMSpec) -> d.VMSpec:
    return d.VMSpec(
        name=s.name,
        image=s.image,
        vcpus=s.vcpus,
        memory_mib=s.memory_mib,
        labels=dict(s.labels),
        disk_gib=s.disk_gib,
        placement=constraints_from_pb(s.placement),
        bandwidth_mbps=s.bandwidth_mbps,
        disconnect=d.DisconnectPolicy(*(_optional(s.disconnect, f) for f in _DISCONNECT)),
    )


def image_to_pb(i: d.ImageInfo) -> pb.ImageInfo:
    return pb.ImageInfo(name=i.name, kind=i.kind, arch=i.arch, size_bytes=i.size_bytes)


def image_from_pb(i: pb.ImageInfo) -> d.ImageInfo:
    return d.ImageInfo(name=i.name, kind=i.kind, arch=i.arch, size_bytes=i.size_bytes)


def vm_status_to_pb(v: d.VMStatus) -> pb.VMStatus:
    return pb.VMStatus(
        vm_id=v.vm_id,
        name=v.name,
        state=vm_state_to_pb(v.state),
        generation=v.generation,
        image=v.image,
        vcpus=v.vcpus,
        memory_mib=v.memory_mib,
        reason=v.reason,
    )


def vm_status_from_pb(v: pb.VMStatus) -> d.VMStatus:
    return d.VMStatus(
        vm_id=v.vm_id,
        name=v.name,
        state=vm_state_from_pb(v.state),
        generation=v.generation,
        image=v.image,
        vcpus=v.vcpus,
        memory_mib=v.memory_mib,
        reason=v.reason,
    )


def node_info_to_pb(n: d.NodeInfo) -> pb.NodeInfo:
    msg = pb.NodeInfo(
        node_id=n.node_id,
        hostname=n.hostname,
        arch=n.arch,
        edge_type=edge_type_to_pb(n.edge_type),
        labels=n.labels,
        capacity=capacity_to_pb(n.capacity),
        hypervisor=n.hypervisor,
        agent_version=n.agent_version,
        cost_per_hour=n.cost_per_hour,
    )
    if n.location is not None:
        msg.location.CopyFrom(location_to_pb(n.location))
    return msg


def node_info_from_pb(n: pb.NodeInfo) -> d.NodeInfo:
    location = location_from_pb(n.location) if n.HasField("location") else None
    return d.NodeInfo(
        node_id=n.node_id,
        hostname=n.hostname,
        arch=n.arch,
        edge_type=edge_type_from_pb(n.edge_type),
        capacity=capacity_from_pb(n.capacity),
        location=location,
        labels=dict(n.labels),
        hypervisor=n.hypervisor,
        agent_version=n.agent_version,
        cost_per_hour=n.cost_per_hour,
    )


def latency_to_pb(s: d.LatencyStats) -> pb.LatencyStats:
    return pb.LatencyStats(
        target=s.target,
        p50_ms=s.p50_ms,
        p95_ms=s.p95_ms,
        p99_ms=s.p99_ms,
        jitter_ms=s.jitter_ms,
        loss_pct=s.loss_pct,
        samples=s.samples,
    )


def latency_from_pb(s: pb.LatencyStats) -> d.LatencyStats:
    return d.LatencyStats(
        target=s.target,
        p50_ms=s.p50_ms,
        p95_ms=s.p95_ms,
        p99_ms=s.p99_ms,
        jitter_ms=s.jitter_ms,
        loss_pct=s.loss_pct,
        samples=s.samples,
    )
