"""Records to rows and back: the columns of a table in order, nested values as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from google.protobuf import json_format

from controller.records import (
    Drain,
    JoinToken,
    MigrationPhase,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    ServiceToken,
    VMRecord,
)
from controller.store.schema import MIGRATION_COLUMNS, SERVICE_TOKEN_COLUMNS, TOKEN_COLUMNS
from shared import convert
from shared.domain import (
    Capacity,
    DesiredState,
    EdgeType,
    ImageInfo,
    Location,
    NodeInfo,
    VMSpec,
    VMState,
)
from shared.mesh import MeshIdentity
from shared.pb.v1 import types_pb2 as pb


def node_info_to_json(info: NodeInfo) -> str:
    return json.dumps(asdict(info))


def node_info_from_json(text: str) -> NodeInfo:
    raw: dict[str, Any] = json.loads(text)
    loc = raw.get("location")
    return NodeInfo(
        node_id=raw["node_id"],
        hostname=raw["hostname"],
        arch=raw["arch"],
        edge_type=EdgeType(raw["edge_type"]),
        capacity=Capacity(**raw["capacity"]),
        location=Location(**loc) if loc else None,
        labels=dict(raw.get("labels", {})),
        hypervisor=raw.get("hypervisor", ""),
        agent_version=raw.get("agent_version", ""),
        cost_per_hour=raw.get("cost_per_hour", 0.0),
    )


def spec_to_json(spec: VMSpec) -> str:
    """Through the wire format: one conversion for specs, nested constraints included."""
    return json_format.MessageToJson(convert.spec_to_pb(spec), indent=None)


def spec_from_json(text: str) -> VMSpec:
    return convert.spec_from_pb(json_format.Parse(text, pb.VMSpec()))


def vm_row(vm: VMRecord) -> tuple[Any, ...]:
    return (
        vm.spec.name, vm.id, spec_to_json(vm.spec), vm.node_id, vm.desired.value,
        vm.state.value, vm.state_reason, vm.generation, vm.created_at, vm.updated_at,
        vm.request_id, vm.placement_reason, vm.address, vm.migrating_to,
    )  # fmt: skip


def vm_from_row(r: Sequence[Any]) -> VMRecord:
    return VMRecord(
        id=r[0], spec=spec_from_json(r[1]), node_id=r[2], desired=DesiredState(r[3]),
        state=VMState(r[4]), state_reason=r[5], generation=r[6], created_at=r[7],
        updated_at=r[8], request_id=r[9] or "", placement_reason=r[10], address=r[11],
        migrating_to=r[12],
    )  # fmt: skip


def node_row(node: NodeRecord) -> tuple[Any, ...]:
    return (
        node.node_id, node_info_to_json(node.info), json.dumps([asdict(i) for i in node.images]),
        node.registered_at, node.last_heartbeat, int(node.cordoned),
        json.dumps(asdict(node.mesh)) if node.mesh else "", node.mesh_address,
    )  # fmt: skip


def node_from_row(r: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        info=node_info_from_json(r[0]), images=tuple(ImageInfo(**i) for i in json.loads(r[1])),
        registered_at=r[2], last_heartbeat=r[3], cordoned=bool(r[4]),
        mesh=MeshIdentity(**json.loads(r[5])) if r[5] else None, mesh_address=r[6],
    )  # fmt: skip


def migration_row(m: MigrationRecord) -> tuple[Any, ...]:
    values = {c: getattr(m, c) for c in MIGRATION_COLUMNS}
    values["phase"] = m.phase.value
    values["stays_stopped"] = int(m.stays_stopped)
    values["phase_times"] = json.dumps([[phase, at] for phase, at in m.phase_times])
    return tuple(values[c] for c in MIGRATION_COLUMNS)


def migration_from_row(r: Sequence[Any]) -> MigrationRecord:
    values = dict(zip(MIGRATION_COLUMNS, r, strict=True))
    values["phase"] = MigrationPhase(values["phase"])
    values["phase_times"] = tuple((p, float(at)) for p, at in json.loads(values["phase_times"]))
    values["stays_stopped"] = bool(values["stays_stopped"])
    return MigrationRecord(**values)


def drain_row(d: Drain) -> tuple[Any, ...]:
    return (
        d.node_id,
        d.started_at,
        d.parallel,
        json.dumps(list(d.queued)),
        json.dumps([list(p) for p in d.active]),
        json.dumps([list(p) for p in d.moved]),
        json.dumps([list(p) for p in d.failed]),
        d.finished_at,
        int(d.cold),
    )


def drain_from_row(r: Sequence[Any]) -> Drain:
    def pairs(text: str) -> tuple[tuple[str, str], ...]:
        return tuple((str(a), str(b)) for a, b in json.loads(text))

    return Drain(
        node_id=r[0],
        started_at=float(r[1]),
        parallel=int(r[2]),
        queued=tuple(str(v) for v in json.loads(r[3])),
        active=pairs(r[4]),
        moved=pairs(r[5]),
        failed=pairs(r[6]),
        finished_at=float(r[7]),
        cold=bool(r[8]),
    )


def token_row(t: JoinToken) -> tuple[Any, ...]:
    return tuple(int(v) if isinstance(v, bool) else v for v in astuple_shallow(t))


def token_from_row(r: Sequence[Any]) -> JoinToken:
    values = dict(zip(TOKEN_COLUMNS, r, strict=True))
    values["revoked"] = bool(values["revoked"])
    return JoinToken(**values)


def credential_row(c: NodeCredential) -> tuple[Any, ...]:
    return (c.node_id, c.epoch, c.enrolled_at, c.token_id, int(c.revoked), c.expires_at)


def credential_from_row(r: Sequence[Any]) -> NodeCredential:
    return NodeCredential(str(r[0]), int(r[1]), float(r[2]), str(r[3]), bool(r[4]), float(r[5]))


def astuple_shallow(record: Any) -> tuple[Any, ...]:
    """A dataclass's fields in order, not copied deeply (dataclasses.astuple recurses)."""
    return tuple(getattr(record, f.name) for f in fields(record))


def service_token_row(t: ServiceToken) -> tuple[Any, ...]:
    return tuple(int(v) if isinstance(v, bool) else v for v in astuple_shallow(t))


def service_token_from_row(r: Sequence[Any]) -> ServiceToken:
    values = dict(zip(SERVICE_TOKEN_COLUMNS, r, strict=True))
    values["revoked"] = bool(values["revoked"])
    return ServiceToken(**values)
