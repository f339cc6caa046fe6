"""What the controller accepts from an agent (issue 11, item 9): a broken or hostile agent
must not poison placement (2^32-1 vCPUs, NaN locations or costs), the operator's terminal
(escape sequences in ids and labels) or every listing (megabyte labels). Checked on the
domain values, after conversion from the wire (which refuses unknown enum values)."""

from __future__ import annotations

from collections.abc import Iterable

from shared import bounds
from shared.domain import LatencyStats, NodeInfo, Utilization, VMStatus
from shared.identity import check_name

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


def check_vms(field: str, vms: Iterable[VMStatus]) -> None:
    reported = list(vms)
    bounds.count(f"{field} (count)", len(reported), 0, MAX_VMS_REPORTED)
    for vm in reported:
        bounds.text(f"{field}.vm_id", vm.vm_id, 64)
        bounds.text(f"{field}.name", vm.name, 63)
        bounds.text(f"{field}.image", vm.image, 128)
        bounds.text(f"{field}.reason", vm.reason, 1024)


def check_utilization(u: Utilization) -> None:
    bounds.number("heartbeat.utilization.cpu_percent", u.cpu_percent, 0.0, 100.0 * MAX_VCPUS)
    bounds.number("heartbeat.utilization.load_1m", u.load_1m, 0.0, 1e6)
    for name in ("memory_used_mib", "memory_total_mib", "disk_used_gib", "disk_total_gib"):
        bounds.number(f"heartbeat.utilization.{name}", getattr(u, name), 0.0, 1e12)


def check_latencies(stats: Iterable[LatencyStats]) -> None:
    for s in stats:
        bounds.text("heartbeat.latencies.target", s.target, 63)
        for name in ("p50_ms", "p95_ms", "p99_ms", "jitter_ms"):
            bounds.number(f"heartbeat.latencies.{name}", getattr(s, name), 0.0, MAX_LATENCY_MS)
        bounds.number("heartbeat.latencies.loss_pct", s.loss_pct, 0.0, 100.0)
