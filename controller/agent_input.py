"""What the controller accepts from an agent (issue 11, item 9): a broken or hostile agent
must not poison placement (2^32-1 vCPUs, NaN locations or costs), the operator's terminal
(escape sequences in ids and labels) or every listing (megabyte labels). Checked on the
domain values, after conversion from the wire (which refuses unknown enum values).

A hello out of bounds is refused. A heartbeat never is: it is the node's liveness, and a
figure out of bounds (a NaN load, an RTT made negative by a clock step) must not make a live
node look lost. Its bad figures are dropped instead, and VM statuses it cannot trust are
treated as unknown (as when libvirt is unreachable), never as "no VMs"."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from shared import bounds
from shared.commands import MigrationProgress
from shared.domain import LatencyStats, NodeInfo, Utilization, VMStatus
from shared.errors import InvalidArgument
from shared.identity import check_name
from shared.mesh import MeshStatus

MAX_VCPUS = 4096
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_STORAGE_GIB = 1024 * 1024  # 1 PiB
MAX_COST_PER_HOUR = 1_000_000.0
MAX_VMS_REPORTED = 10_000
MAX_LATENCY_MS = 600_000.0


def check_node_info(info: NodeInfo) -> None:
    check_name("hello.node.node_id", info.node_id)
    for name in ("hostname", "arch", "hypervisor", "agent_version"):
        bounds.text(f"hello.node.{name}", getattr(info, name))
    bounds.count("hello.node.capacity.vcpus", info.capacity.vcpus, 0, MAX_VCPUS)
    bounds.count("hello.node.capacity.memory_mib", info.capacity.memory_mib, 0, MAX_MEMORY_MIB)
    bounds.count("hello.node.capacity.storage_gib", info.capacity.storage_gib, 0, MAX_STORAGE_GIB)
    if info.location is not None:
        bounds.number("hello.node.location.latitude", info.location.latitude, -90.0, 90.0)
        bounds.number("hello.node.location.longitude", info.location.longitude, -180.0, 180.0)
        bounds.text("hello.node.location.country_code", info.location.country_code, 2)
    bounds.number("hello.node.cost_per_hour", info.cost_per_hour, 0.0, MAX_COST_PER_HOUR)
    bounds.labels("hello.node.labels", info.labels)


MAX_REASON = 1024


def checked_vms(field: str, vms: Iterable[VMStatus]) -> tuple[VMStatus, ...]:
    """Ids, names and images are ours (domain metadata): out of bounds, they are refused.
    A reason is libvirt's or QEMU's free text (newlines and all): it is cut, never refused,
    or one long error message would keep a node from ever connecting."""
    reported = tuple(vms)
    bounds.count(f"{field} (count)", len(reported), 0, MAX_VMS_REPORTED)
    for vm in reported:
        bounds.text(f"{field}.vm_id", vm.vm_id, 64)
        bounds.text(f"{field}.name", vm.name, 63)
        bounds.text(f"{field}.image", vm.image, 128)
    return tuple(
        replace(vm, reason=vm.reason[:MAX_REASON]) if len(vm.reason) > MAX_REASON else vm
        for vm in reported
    )


def utilization_or_none(u: Utilization) -> Utilization | None:
    """The figures, or None if any is out of bounds (NaN, negative, absurd): dropped, while
    the heartbeat itself still counts (its liveness must never hang on a figure)."""
    try:
        bounds.number("cpu_percent", u.cpu_percent, 0.0, 100.0 * MAX_VCPUS)
        bounds.number("load_1m", u.load_1m, 0.0, 1e6)
        for name in ("memory_used_mib", "memory_total_mib", "disk_used_gib", "disk_total_gib"):
            bounds.number(name, getattr(u, name), 0.0, 1e12)
    except InvalidArgument:
        return None
    return u


def valid_latencies(stats: Iterable[LatencyStats]) -> tuple[LatencyStats, ...]:
    """The stats in bounds; one out of bounds (a clock step can make an RTT negative) is
    dropped alone."""
    kept = []
    for s in stats:
        figures = (s.p50_ms, s.p95_ms, s.p99_ms, s.jitter_ms)
        if (
            len(s.target) <= 63
            and all(math.isfinite(v) and 0.0 <= v <= MAX_LATENCY_MS for v in figures)
            and math.isfinite(s.loss_pct)
            and 0.0 <= s.loss_pct <= 100.0
        ):
            kept.append(s)
    return tuple(kept)


MAX_PEERS = 10_000


def mesh_status_or_none(status: MeshStatus | None) -> MeshStatus | None:
    """The node's mesh status, or None (kept as last known) if any part is out of bounds."""
    if status is None:
        return None
    try:
        bounds.count("mesh.peers (count)", len(status.peers), 0, MAX_PEERS)
        bounds.text("mesh.public_key", status.public_key, 64)
        bounds.text("mesh.address", status.address, 64)
        bounds.text("mesh.error", status.error[:1024], 1024)
        for peer in status.peers:
            bounds.text("mesh.peers.node_id", peer.node_id, 63)
            bounds.text("mesh.peers.public_key", peer.public_key, 64)
            bounds.text("mesh.peers.endpoint", peer.endpoint, 128)
            bounds.number("mesh.peers.last_handshake_age_s", peer.last_handshake_age_s, -1, 1e12)
    except InvalidArgument:
        return None
    return status


def checked_progress(progress: MigrationProgress) -> MigrationProgress:
    """Migration progress: ids are ours (refused out of bounds), figures are counters."""
    bounds.text("migration_progress.vm_id", progress.vm_id, 64)
    bounds.text("migration_progress.migration_id", progress.migration_id, 64)
    return progress
