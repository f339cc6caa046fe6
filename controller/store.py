"""Persistence of the controller's state behind a small interface; SQLite (WAL) is the default.

Every write is committed before the caller acknowledges anything to a client or an agent, so a
controller killed at any point restarts with every VM it ever accepted.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format

from controller.records import AuditEntry, NodeRecord, VMRecord
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

SCHEMA_VERSION = 2  # 2: vms.migrating_to

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    images TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    cordoned INTEGER NOT NULL DEFAULT 0,
    mesh TEXT NOT NULL DEFAULT '',
    mesh_address TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    node_id TEXT NOT NULL,
    desired TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    request_id TEXT,
    placement_reason TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    migrating_to TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS vms_request_id ON vms(request_id) WHERE request_id != '';
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class Store(Protocol):
    name: str

    async def load_nodes(self) -> list[NodeRecord]: ...
    async def load_vms(self) -> list[VMRecord]: ...
    async def put_node(self, node: NodeRecord) -> None: ...
    async def put_vm(self, vm: VMRecord) -> None: ...
    async def delete_vm(self, vm_id: str) -> None: ...
    async def audit(self, entry: AuditEntry) -> None: ...
    async def audit_log(self, limit: int = 100) -> list[AuditEntry]: ...
    async def close(self) -> None: ...


def _node_info_to_json(info: NodeInfo) -> str:
    return json.dumps(asdict(info))


def _node_info_from_json(text: str) -> NodeInfo:
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


def _spec_to_json(spec: VMSpec) -> str:
    """Through the wire format: one conversion for specs, nested constraints included."""
    return json_format.MessageToJson(convert.spec_to_pb(spec), indent=None)


def _spec_from_json(text: str) -> VMSpec:
    return convert.spec_from_pb(json_format.Parse(text, pb.VMSpec()))


class SQLiteStore:
    """One connection, used from worker threads one call at a time (sqlite3 is blocking)."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._check_schema_version()

    def _check_schema_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) == 1:  # upgrade in place: a column with a default loses nothing
            self._db.executescript(  # one transaction: SQLite's DDL is transactional
                "BEGIN; ALTER TABLE vms ADD COLUMN migrating_to TEXT NOT NULL DEFAULT '';"
                f" UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';"
                " COMMIT;"
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {row[0]}, this controller understands "
                f"{SCHEMA_VERSION}; refusing to touch it"
            )

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def work() -> list[tuple[Any, ...]]:
            with self._lock:
                return self._db.execute(sql, params).fetchall()

        return await asyncio.to_thread(work)

    async def load_nodes(self) -> list[NodeRecord]:
        rows = await self._run(
            "SELECT info, images, registered_at, last_heartbeat, cordoned, mesh, mesh_address"
            " FROM nodes ORDER BY node_id"
        )
        return [
            NodeRecord(
                info=_node_info_from_json(info),
                images=tuple(ImageInfo(**i) for i in json.loads(images)),
                registered_at=registered_at,
                last_heartbeat=last_heartbeat,
                cordoned=bool(cordoned),
                mesh=MeshIdentity(**json.loads(mesh)) if mesh else None,
                mesh_address=mesh_address,
            )
            for info, images, registered_at, last_heartbeat, cordoned, mesh, mesh_address in rows
        ]

    async def load_vms(self) -> list[VMRecord]:
        rows = await self._run(
            "SELECT id, spec, node_id, desired, state, state_reason, generation, created_at,"
            " updated_at, request_id, placement_reason, address, migrating_to FROM vms"
            " ORDER BY created_at"
        )
        return [
            VMRecord(
                id=r[0],
                spec=_spec_from_json(r[1]),
                node_id=r[2],
                desired=DesiredState(r[3]),
                state=VMState(r[4]),
                state_reason=r[5],
                generation=r[6],
                created_at=r[7],
                updated_at=r[8],
                request_id=r[9] or "",
                placement_reason=r[10],
                address=r[11],
                migrating_to=r[12],
            )
            for r in rows
        ]

    async def put_node(self, node: NodeRecord) -> None:
        await self._run(
            "INSERT INTO nodes(node_id, info, images, registered_at, last_heartbeat, cordoned,"
            " mesh, mesh_address) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE"
            " SET info=excluded.info, images=excluded.images,"
            " last_heartbeat=excluded.last_heartbeat, cordoned=excluded.cordoned,"
            " mesh=excluded.mesh, mesh_address=excluded.mesh_address",
            (
                node.node_id,
                _node_info_to_json(node.info),
                json.dumps([asdict(i) for i in node.images]),
                node.registered_at,
                node.last_heartbeat,
                int(node.cordoned),
                json.dumps(asdict(node.mesh)) if node.mesh else "",
                node.mesh_address,
            ),
        )

    async def put_vm(self, vm: VMRecord) -> None:
        await self._run(
            "INSERT INTO vms(id, name, spec, node_id, desired, state, state_reason, generation,"
            " created_at, updated_at, request_id, placement_reason, address, migrating_to)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET spec=excluded.spec, node_id=excluded.node_id,"
            " desired=excluded.desired, state=excluded.state, state_reason=excluded.state_reason,"
            " generation=excluded.generation, updated_at=excluded.updated_at,"
            " placement_reason=excluded.placement_reason, address=excluded.address,"
            " migrating_to=excluded.migrating_to",
            (
                vm.id,
                vm.spec.name,
                _spec_to_json(vm.spec),
                vm.node_id,
                vm.desired.value,
                vm.state.value,
                vm.state_reason,
                vm.generation,
                vm.created_at,
                vm.updated_at,
                vm.request_id,
                vm.placement_reason,
                vm.address,
                vm.migrating_to,
            ),
        )

    async def delete_vm(self, vm_id: str) -> None:
        await self._run("DELETE FROM vms WHERE id = ?", (vm_id,))

    async def audit(self, entry: AuditEntry) -> None:
        await self._run(
            "INSERT INTO audit(at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (entry.at, entry.actor, entry.action, entry.target, entry.detail),
        )

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        rows = await self._run(
            "SELECT at, actor, action, target, detail FROM audit ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [
            AuditEntry(at=at, actor=actor, action=action, target=target, detail=detail)
            for at, actor, action, target, detail in rows
        ]

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(work)
