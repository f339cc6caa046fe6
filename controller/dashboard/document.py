"""The dashboard's JSON document: the fleet as the page draws it, built from the read view.

Built on the event loop (between two events, so it is one consistent state), serialised by
the HTTP thread. Every string in it may come from an agent or an operator: the page shows
them only as text, never as markup.
"""

from __future__ import annotations

from typing import Any

from controller.records import FailoverRecord, MigrationRecord, NodeRecord, VMRecord
from controller.view import ControllerView
from shared.domain import Capacity
from shared.geo import haversine_km, rtt_estimate_ms

RECENT_S = 600.0  # finished migrations and failovers stay on the page this long
MAX_FINISHED = 20
PERCENTILES = {50: "p50_ms", 95: "p95_ms", 99: "p99_ms"}
Doc = dict[str, Any]


def state_document(view: ControllerView, now: float) -> Doc:
    nodes = sorted(view.nodes.values(), key=lambda n: n.node_id)
    vms = sorted(view.vms.values(), key=lambda v: (v.node_id, v.spec.name))
    default_bound = float(view.core.engine.profile.max_edge_latency_ms)
    by_id = {n.node_id: n for n in nodes}
    return {
        "generated_at": now,
        "installation_id": view.core.settings.installation_id,
        "controller_id": view.core.settings.controller_id,
        "nodes": [_node(view, n) for n in nodes],
        "vms": [_vm(v, by_id.get(v.node_id), default_bound) for v in vms],
        "migrations": [_migration(m) for m in _recent(view.migrations(), now)],
        "failovers": [_failover(f) for f in _recent_failovers(view, now)],
    }


def _capacity(c: Capacity) -> Doc:
    return {"vcpus": c.vcpus, "memory_mib": c.memory_mib, "storage_gib": c.storage_gib}


def _node(view: ControllerView, n: NodeRecord) -> Doc:
    condition, reason = view.condition(n)
    loc = n.info.location
    rtt = n.controller_rtt_ms()
    return {
        "id": n.node_id,
        "hostname": n.info.hostname,
        "edge_type": n.info.edge_type.value,
        "arch": n.info.arch,
        "condition": condition.value,
        "reason": reason,
        "connected": n.connected,
        "cordoned": n.cordoned,
        "location": None
        if loc is None
        else {"latitude": loc.latitude, "longitude": loc.longitude, "country": loc.country_code},
        "capacity": _capacity(n.capacity),
        "allocated": _capacity(view.allocated(n.node_id)),
        "cpu_percent": n.utilization.cpu_percent,
        "rtt_ms": None if rtt is None else {"p50": rtt[0], "p95": rtt[1], "p99": rtt[2]},
        "labels": dict(sorted(n.info.labels.items())),
    }


def _vm(v: VMRecord, node: NodeRecord | None, default_bound: float) -> Doc:
    """Its latency as placement judged it, against the bound placement applied: placed `near`
    its users, the estimate from the distance to its node (nothing measures the users' side);
    otherwise its node's RTT to the controller as that node's agent measured it, at the
    percentile the VM's placement asked for."""
    c = v.spec.placement
    field = PERCENTILES.get(c.latency_percentile, "p95_ms")
    latency, source = None, "measured"
    if c.near is not None:
        source = "estimated"
        if node is not None and (at := node.info.location) is not None:
            km = haversine_km(at.latitude, at.longitude, c.near.latitude, c.near.longitude)
            latency = rtt_estimate_ms(km, node.info.edge_type)
    elif node is not None:
        for stats in node.latencies:
            if stats.target == "controller" and stats.samples > 0:
                latency = float(getattr(stats, field))
    bound = c.max_latency_ms or default_bound
    return {
        "id": v.id,
        "name": v.spec.name,
        "node_id": v.node_id,
        "state": v.state.value,
        "desired": v.desired.value,
        "reason": v.state_reason,
        "generation": v.generation,
        "image": v.spec.image,
        "vcpus": v.spec.vcpus,
        "memory_mib": v.spec.memory_mib,
        "address": v.address,
        "migrating_to": v.migrating_to,
        "latency_ms": latency,
        "latency_source": source,
        "latency_percentile": c.latency_percentile,
        "latency_bound_ms": bound,
        "latency_over": latency is not None and latency > bound,
    }


def _recent(migrations: list[MigrationRecord], now: float) -> list[MigrationRecord]:
    active = [m for m in migrations if m.active]
    done = [m for m in migrations if not m.active and now - m.finished_at <= RECENT_S]
    return active + done[:MAX_FINISHED]


def _migration(m: MigrationRecord) -> Doc:
    return {
        "id": m.id,
        "vm_id": m.vm_id,
        "vm_name": m.vm_name,
        "source": m.source,
        "target": m.target,
        "mode": m.mode,
        "phase": m.phase.value,
        "active": m.active,
        "progress_pct": m.phase.progress_pct,
        "bytes_total": m.bytes_total,
        "bytes_transferred": m.bytes_transferred,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "downtime_ms": m.downtime_ms,
        "error": m.error,
    }


def _recent_failovers(view: ControllerView, now: float) -> list[FailoverRecord]:
    found = sorted(view.core.state.failovers.values(), key=lambda r: r.started_at, reverse=True)
    active = [r for r in found if r.active]
    done = [r for r in found if not r.active and now - max(r.running_at, r.started_at) <= RECENT_S]
    return active + done[:MAX_FINISHED]


def failover_phase(r: FailoverRecord) -> str:
    """Where a failover is: re-placed and starting on its target, or how it ended."""
    if r.outcome:
        return r.outcome
    return "starting" if r.started_at else "lost"


def _failover(r: FailoverRecord) -> Doc:
    return {
        "id": r.id,
        "vm_id": r.vm_id,
        "vm_name": r.vm_name,
        "source": r.source,
        "target": r.target,
        "reason": r.reason,
        "phase": failover_phase(r),
        "active": r.active,
        "lost_at": r.lost_at,
        "started_at": r.started_at,
        "running_at": r.running_at,
        "error": r.error,
    }
