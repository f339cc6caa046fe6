"""Table and describe views of nodes, VMs and controller status (the `-o table` output)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cli.render import age, describe, enum_name, table
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import types_pb2 as pb

NONE = "<none>"
UNKNOWN = "<unknown>"


def _enum(message: Message, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None, f"{field} is not an enum field"
    return enum_name(cast(EnumDescriptor, descriptor), getattr(message, field)) or "-"


def _age_of(parent: Message, field: str, now: float) -> str:
    if not parent.HasField(field):
        return UNKNOWN
    ts: Timestamp = getattr(parent, field)
    return age(now - ts.ToNanoseconds() / 1e9)


def _timestamp(parent: Message, field: str, now: float) -> str:
    if not parent.HasField(field):
        return NONE
    ts: Timestamp = getattr(parent, field)
    return f"{ts.ToJsonString()} ({_age_of(parent, field, now)} ago)"


def short_id(vm_id: str) -> str:
    return vm_id[:8] if vm_id else "-"


def location(node: pb.Node) -> str:
    loc = node.info.location
    if not node.info.HasField("location"):
        return "-"
    text = f"{loc.latitude:.2f},{loc.longitude:.2f}"
    return f"{text} {loc.country_code}" if loc.country_code else text


# -- nodes -------------------------------------------------------------------------------------

NODE_HEADERS = (
    "NODE",
    "CONDITION",
    "EDGE-TYPE",
    "ARCH",
    "LOCATION",
    "VCPUS",
    "MEMORY-MIB",
    "VMS",
    "LAST-HEARTBEAT",
)


def node_row(node: pb.Node, now: float) -> list[str]:
    """VCPUS and MEMORY are allocated (placed by the controller) / capacity."""
    info = node.info
    return [
        info.node_id,
        _enum(node, "condition"),
        _enum(info, "edge_type"),
        info.arch or "-",
        location(node),
        f"{node.allocated.vcpus}/{info.capacity.vcpus}",
        f"{node.allocated.memory_mib}/{info.capacity.memory_mib}",
        str(node.vm_count),
        _age_of(node, "last_heartbeat", now),
    ]


def node_table(nodes: Sequence[pb.Node], now: float) -> str:
    return table(NODE_HEADERS, [node_row(n, now) for n in nodes])


def node_describe(node: pb.Node, now: float) -> str:
    info, util = node.info, node.utilization
    condition = _enum(node, "condition")
    if node.condition_reason:
        condition += f" ({node.condition_reason})"
    cap, alloc = info.capacity, node.allocated
    images = [
        f"{img.name}  kind={img.kind or '-'} arch={img.arch or '-'} size={img.size_bytes}B"
        for img in sorted(node.images, key=lambda i: i.name)
    ]
    return describe(
        [
            ("Name", info.node_id),
            ("Hostname", info.hostname or "-"),
            ("Condition", condition),
            ("Edge type", _enum(info, "edge_type")),
            ("Arch", info.arch or "-"),
            ("Location", location(node)),
            ("Hypervisor", info.hypervisor or "-"),
            ("Agent version", info.agent_version or "-"),
            ("Registered", _timestamp(node, "registered_at", now)),
            ("Last heartbeat", _timestamp(node, "last_heartbeat", now)),
            ("Labels", dict(info.labels)),
            (
                "Capacity",
                [
                    f"vcpus:       {cap.vcpus}",
                    f"memory_mib:  {cap.memory_mib}",
                    f"storage_gib: {cap.storage_gib}",
                ],
            ),
            (
                "Allocated",
                [
                    f"vcpus:       {alloc.vcpus}/{cap.vcpus}",
                    f"memory_mib:  {alloc.memory_mib}/{cap.memory_mib}",
                    f"storage_gib: {alloc.storage_gib}/{cap.storage_gib}",
                    f"vms:         {node.vm_count}",
                ],
            ),
            (
                "Utilisation",
                [
                    f"cpu:     {util.cpu_percent:.1f}%  (load 1m {util.load_1m:.2f})",
                    f"memory:  {util.memory_used_mib}/{util.memory_total_mib} MiB",
                    f"disk:    {util.disk_used_gib}/{util.disk_total_gib} GiB",
                    f"network: rx {util.net_rx_bytes} B, tx {util.net_tx_bytes} B",
                ]
                if node.HasField("utilization")
                else [],
            ),
            ("Images", images),
            ("Latency (RTT)", [latency_line(s) for s in node.latencies]),
            ("Mesh", mesh_lines(node)),
            ("Cordoned", "yes" if node.cordoned else "no"),
            *([("Drain", drain_lines(node.drain))] if node.HasField("drain") else []),
        ]
    )


def drain_lines(d: pb.Drain) -> list[str]:
    state = "done" if d.HasField("finished_at") else "under way"
    lines = [
        f"{state}: {len(d.moved)} moved, {len(d.active)} moving, {len(d.queued)} queued, "
        f"{len(d.failed)} not moved ({d.parallel} at a time)"
    ]
    lines += [f"{name}: moved to {to}" for name, to in sorted(d.moved.items())]
    lines += [f"{name}: moving" for name in d.active]
    lines += [f"{name}: not moved: {why}" for name, why in sorted(d.failed.items())]
    return lines


def latency_line(s: pb.LatencyStats) -> str:
    return (
        f"{s.target}: p50 {s.p50_ms:.2f} ms  p95 {s.p95_ms:.2f}  p99 {s.p99_ms:.2f}  "
        f"jitter {s.jitter_ms:.2f}  loss {s.loss_pct:.1f}%  ({s.samples} probes)"
    )


# -- VMs ---------------------------------------------------------------------------------------

VM_HEADERS = (
    "NAME", "ID", "NODE", "STATE", "DESIRED", "VCPUS", "MEMORY", "IMAGE", "ADDRESS", "AGE",
)  # fmt: skip


def vm_row(vm: pb.VM, now: float) -> list[str]:
    return [
        vm.spec.name or "-",
        short_id(vm.id),
        vm.node_id or NONE,
        _enum(vm, "state"),
        _enum(vm, "desired_state"),
        str(vm.spec.vcpus),
        f"{vm.spec.memory_mib}Mi",
        vm.spec.image or "-",
        vm.address.split("/")[0] if vm.address else "-",
        _age_of(vm, "created_at", now),
    ]


def vm_table(vms: Sequence[pb.VM], now: float) -> str:
    return table(VM_HEADERS, [vm_row(v, now) for v in vms])


def vm_describe(vm: pb.VM, now: float) -> str:
    state = _enum(vm, "state")
    if vm.state_reason:
        state += f" ({vm.state_reason})"
    return describe(
        [
            ("Name", vm.spec.name or "-"),
            ("ID", vm.id or "-"),
            ("Node", vm.node_id or NONE),
            ("State", state),
            ("Desired", _enum(vm, "desired_state")),
            ("Image", vm.spec.image or "-"),
            ("VCPUs", str(vm.spec.vcpus)),
            ("Memory", f"{vm.spec.memory_mib} MiB"),
            ("Generation", str(vm.generation)),
            ("Request ID", vm.request_id or NONE),
            ("Placement", vm.placement_reason or NONE),
            ("Address", vm.address or NONE),
            ("Created", _timestamp(vm, "created_at", now)),
            ("Updated", _timestamp(vm, "updated_at", now)),
            ("Labels", dict(vm.spec.labels)),
            ("If its node is lost", _disconnect(vm.spec.disconnect)),
            ("Failover time", vm.expected_failover or NONE),
            *([("Failover waits", vm.failover_waiting)] if vm.failover_waiting else []),
            ("Failovers", [_failover_line(f, now) for f in vm.failovers] or NONE),
        ]
    )


def _never(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:g}s"


def _disconnect(policy: pb.DisconnectPolicy) -> str:
    replace = _never(policy.replace_after_s) if policy.HasField("replace_after_s") else "default"
    stop = _never(policy.stop_after_s) if policy.HasField("stop_after_s") else "no"
    return f"replace after {replace}; its agent pauses it after {stop} alone"


def _failover_line(f: pb.Failover, now: float) -> str:
    started = f.started_at.ToDatetime().timestamp()
    took = ""
    if f.HasField("running_at"):
        running = f.running_at.ToDatetime().timestamp()
        took = (
            f", running {running - f.lost_at.ToDatetime().timestamp():.1f}s after lost, "
            f"{running - f.last_heard_at.ToDatetime().timestamp():.1f}s after last heard"
        )
    outcome = f.outcome or "under way"
    if f.error:
        outcome += f": {f.error}"
    return (
        f"{f.source_node_id} -> {f.target_node_id} (generation {f.from_generation} -> "
        f"{f.to_generation}) {age(now - started)} ago: {outcome}{took}; {f.reason}"
    )


def failover_outcomes(answer: api.HandleEdgeFailureResponse) -> str:
    if not answer.outcomes:
        return f"node {answer.node_id}: no VMs to fail over\n"
    lines = []
    replaced = 0
    for o in answer.outcomes:
        if o.target_node_id:
            replaced += 1
            lines.append(f"{o.vm_name}: recreated on {o.target_node_id}")
        else:
            lines.append(f"{o.vm_name}: waits: {o.waiting}")
    total = len(answer.outcomes)
    lines.append(f"node {answer.node_id}: {replaced} of {total} VMs replaced")
    return "\n".join(lines) + "\n"


# -- orphans -----------------------------------------------------------------------------------

ORPHAN_HEADERS = ("NODE", "NAME", "ID", "STATE", "GENERATION", "REASON", "SEEN")


def orphan_row(orphan: api.Orphan, now: float) -> list[str]:
    vm = orphan.vm
    return [
        orphan.node_id,
        vm.name or "-",
        short_id(vm.vm_id),
        _enum(vm, "state"),
        str(vm.generation),
        orphan.reason or "-",
        _age_of(orphan, "seen_at", now),
    ]


def orphan_table(orphans: Sequence[api.Orphan], now: float) -> str:
    return table(ORPHAN_HEADERS, [orphan_row(o, now) for o in orphans])


# -- status ------------------------------------------------------------------------------------


def status_describe(status: api.Status) -> str:
    # Keys are whatever the controller sends; VM_STATE_* names are shortened like enums.
    by_state = [
        f"{k.removeprefix('VM_STATE_').lower()}: {v}"
        for k, v in sorted(status.vms_by_state.items())
    ]
    return describe(
        [
            ("Controller", status.controller_id or "-"),
            ("Version", status.version or "-"),
            ("Store", status.store or "-"),
            ("Uptime", age(status.uptime_seconds)),
            ("Nodes", f"{status.nodes_ready}/{status.nodes_total} ready"),
            ("VMs", str(status.vms_total)),
            ("VMs by state", by_state),
        ]
    )


def mesh_lines(node: pb.Node) -> list[str]:
    if not node.mesh_address:
        return []
    m = node.mesh
    lines = [
        f"address {node.mesh_address}  key {m.public_key or '-'}  "
        f"applied version {m.applied_version}/{node.mesh_version}"
        + (f"  error: {m.error}" if m.error else "")
    ]
    for p in m.peers:
        age = "never" if p.last_handshake_age_s < 0 else f"{p.last_handshake_age_s:.0f}s ago"
        lines.append(
            f"{p.node_id}: {'up' if p.up else 'DOWN'}  handshake {age}  "
            f"rx {p.rx_bytes} B  tx {p.tx_bytes} B  endpoint {p.endpoint or '-'}"
        )
    return lines
