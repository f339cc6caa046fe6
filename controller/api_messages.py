"""Controller records as EdgeAPI messages (the API adapter's half of the conversion; the
shared domain types convert in `shared.convert`)."""

from __future__ import annotations

from dataclasses import replace

from controller.core import Orphan
from controller.placement import Explanation
from controller.records import (
    Drain,
    FailoverRecord,
    MigrationPhase,
    MigrationRecord,
    NodeRecord,
    VMRecord,
)
from controller.validation import validate_spec
from controller.view import ControllerView
from shared import convert
from shared.domain import VMSpec
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb

_PHASES = {phase: i + 1 for i, phase in enumerate(MigrationPhase)}


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
        placement_reason=vm.placement_reason,
        address=vm.address,
    )


def vm_detail_to_pb(v: ControllerView, vm: VMRecord) -> pb.VM:
    """The VM with what only the controller's current view knows: its failovers, whether it
    waits for one, and how long one would take."""
    msg = vm_to_pb(vm)
    msg.failovers.extend(failover_to_pb(r) for r in v.failovers(vm.id))
    msg.failover_waiting = v.failover_waiting(vm.id)
    msg.expected_failover = v.expected_failover(vm)
    return msg


def failover_to_pb(r: FailoverRecord) -> pb.Failover:
    msg = pb.Failover(
        id=r.id,
        vm_id=r.vm_id,
        vm_name=r.vm_name,
        source_node_id=r.source,
        target_node_id=r.target,
        reason=r.reason,
        from_generation=r.from_generation,
        to_generation=r.to_generation,
        last_heard_at=convert.timestamp(r.last_heard_at),
        lost_at=convert.timestamp(r.lost_at),
        started_at=convert.timestamp(r.started_at),
        outcome=r.outcome,
        error=r.error,
    )
    if r.running_at:
        msg.running_at.CopyFrom(convert.timestamp(r.running_at))
    return msg


def decision_to_pb(d: Explanation) -> epb.PlacementDecision:
    return epb.PlacementDecision(
        node_id=d.node_id or "",
        candidates=[
            epb.CandidateScore(
                node_id=c.node_id,
                total=c.total,
                terms=[
                    epb.ScoreTerm(
                        name=t.name, raw=t.raw, weight=t.weight, weighted=t.weighted, note=t.note
                    )
                    for t in c.terms
                ],
                latency_ms=c.latency_ms,
                latency_estimated=c.latency_estimated,
                distance_km=c.distance_km or 0.0,
            )
            for c in d.candidates
        ],
        rejections=[
            epb.Rejection(node_id=r.node_id, filter=r.filter, reason=r.reason) for r in d.rejections
        ],
        summary=d.summary,
        nodes_total=d.nodes_total,
        nodes_feasible=d.nodes_feasible,
        decision_ms=d.decision_ms,
    )


def dry_run_spec(spec: pb.VMSpec) -> VMSpec:
    """A spec for a what-if question: the name does not matter, the rest is checked."""
    domain = convert.spec_from_pb(spec)
    if not domain.name:
        domain = replace(domain, name="what-if")
    validate_spec(domain)
    return domain


def node_to_pb(view: ControllerView, node: NodeRecord) -> pb.Node:
    condition, reason = view.condition(node)
    msg = pb.Node(
        info=convert.node_info_to_pb(node.info),
        condition=convert.condition_to_pb(condition),
        condition_reason=reason,
        utilization=convert.utilization_to_pb(node.utilization),
        allocated=convert.capacity_to_pb(view.allocated(node.node_id)),
        vm_count=len(view.vms_on(node.node_id)),
        images=[convert.image_to_pb(i) for i in node.images],
        registered_at=convert.timestamp(node.registered_at),
        cordoned=node.cordoned,
        latencies=[convert.latency_to_pb(s) for s in node.latencies],
        mesh_address=node.mesh_address,
        mesh_version=view.mesh_version if node.mesh else 0,
    )
    if node.mesh_status is not None:
        msg.mesh.CopyFrom(convert.mesh_status_to_pb(node.mesh_status))
    if node.last_heartbeat:
        msg.last_heartbeat.CopyFrom(convert.timestamp(node.last_heartbeat))
    drain = view.drain(node.node_id)
    if drain is not None:
        msg.drain.CopyFrom(drain_to_pb(view, drain))
    return msg


def drain_to_pb(view: ControllerView, d: Drain) -> pb.Drain:
    def name(vm_id: str) -> str:
        vm = view.vms.get(vm_id)
        return vm.spec.name if vm is not None else vm_id

    msg = pb.Drain(
        parallel=d.parallel,
        queued=[name(v) for v in d.queued],
        active=[name(v) for v, _ in d.active],
        moved=dict(d.moved),
        failed=dict(d.failed),
        started_at=convert.timestamp(d.started_at),
        cold=d.cold,
    )
    if d.finished_at:
        msg.finished_at.CopyFrom(convert.timestamp(d.finished_at))
    return msg


def migration_phase_to_pb(phase: MigrationPhase) -> epb.MigrationPhase.ValueType:
    return epb.MigrationPhase.ValueType(_PHASES[phase])


def migration_to_pb(m: MigrationRecord) -> epb.Migration:
    msg = epb.Migration(
        id=m.id,
        vm_id=m.vm_id,
        vm_name=m.vm_name,
        source_node_id=m.source,
        target_node_id=m.target,
        mode=m.mode,
        phase=migration_phase_to_pb(m.phase),
        progress_pct=m.phase.progress_pct,
        reason=m.reason,
        priority=m.priority,
        max_downtime_ms=m.max_downtime_ms,
        bandwidth_mbit=m.bandwidth_mbit,
        bytes_total=m.bytes_total,
        bytes_transferred=m.bytes_transferred,
        bytes_remaining=m.bytes_remaining,
        started_at=convert.timestamp(m.started_at),
        updated_at=convert.timestamp(m.updated_at),
        phases=[
            epb.PhaseTime(phase=migration_phase_to_pb(MigrationPhase(p)), at=convert.timestamp(at))
            for p, at in m.phase_times
        ],
        downtime_ms=m.downtime_ms,
        elapsed_ms=m.elapsed_ms,
        error=m.error,
        from_generation=m.from_generation,
        to_generation=m.to_generation,
        active=m.active,
    )
    if m.finished_at:
        msg.finished_at.CopyFrom(convert.timestamp(m.finished_at))
    return msg


def orphan_to_pb(o: Orphan) -> epb.Orphan:
    return epb.Orphan(
        node_id=o.node_id,
        vm=convert.vm_status_to_pb(o.status),
        reason=o.reason,
        seen_at=convert.timestamp(o.seen_at),
    )


def orphan_as_vm_pb(o: Orphan) -> pb.VM:
    """A deleted orphan, shown as the VM it was (it had no record)."""
    s = o.status
    return pb.VM(
        id=s.vm_id,
        spec=pb.VMSpec(name=s.name, image=s.image, vcpus=s.vcpus, memory_mib=s.memory_mib),
        node_id=o.node_id,
        desired_state=pb.DESIRED_STATE_DELETED,
        state=pb.VM_STATE_MISSING,
        state_reason=f"orphan deleted from node {o.node_id}",
        generation=s.generation,
    )
