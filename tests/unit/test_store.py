from __future__ import annotations

import sqlite3
from pathlib import Path

from controller.records import AuditEntry, NodeRecord, VMRecord
from controller.store import SQLiteStore
from shared.domain import (
    Capacity,
    DesiredState,
    EdgeType,
    ImageInfo,
    Location,
    NodeInfo,
    PlacementConstraints,
    PlacementMode,
    SpreadScope,
    VMSpec,
    VMState,
)


async def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    node = NodeRecord(
        info=NodeInfo(
            "n1",
            "h",
            "x86_64",
            EdgeType.IOT,
            Capacity(4, 2048, 10),
            Location(52.5, 13.4, "DE"),
            {"a": "b"},
        ),
        registered_at=1.0,
        last_heartbeat=2.0,
        images=(ImageInfo("tiny", "kernel", "x86_64", 5),),
    )
    vm = VMRecord(
        id="id-1",
        spec=VMSpec(
            "web",
            "tiny",
            1,
            64,
            {"k": "v"},
            placement=PlacementConstraints(
                near=Location(48.85, 2.35, ""),
                max_latency_ms=20,
                countries=("DE", "FR"),
                edge_types=(EdgeType.MEC,),
                required_labels=(("zone", "a"),),
                spread_group="web",
                spread_scope=SpreadScope.SITE,
                mode=PlacementMode.BINPACK,
            ),
        ),
        node_id="n1",
        desired=DesiredState.RUNNING,
        state=VMState.RUNNING,
        generation=3,
        created_at=1.0,
        updated_at=2.0,
        state_reason="ok",
        request_id="r1",
        placement_reason="n1 score 0.9",
    )
    node.cordoned = True
    await store.put_node(node)
    await store.put_vm(vm)
    vm.state = VMState.PAUSED
    await store.put_vm(vm)
    await store.audit(AuditEntry(at=1.0, action="vm.deploy", target="id-1"))
    await store.close()

    reopened = SQLiteStore(path)
    assert await reopened.load_nodes() == [node]
    assert await reopened.load_vms() == [vm]
    assert [e.action for e in await reopened.audit_log()] == ["vm.deploy"]
    await reopened.delete_vm("id-1")
    assert await reopened.load_vms() == []
    await reopened.close()


async def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """Controllers before live migration wrote schema 1 (no vms.migrating_to): its VMs load
    unchanged, the column appears with its default, and a second open is a no-op."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE vms (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
            node_id TEXT NOT NULL, desired TEXT NOT NULL, state TEXT NOT NULL,
            state_reason TEXT NOT NULL, generation INTEGER NOT NULL, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, request_id TEXT,
            placement_reason TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT ''
        );
        INSERT INTO vms VALUES ('id-1', 'web', '{"name": "web", "image": "tiny", "vcpus": 1,
            "memoryMib": "64"}', 'n1', 'running', 'running', 'ok', 3, 1.0, 2.0, 'r1', 'why',
            '10.251.0.5/32');
        """
    )
    db.close()
    for _ in range(2):
        store = SQLiteStore(path)
        [vm] = await store.load_vms()
        assert (vm.id, vm.spec.name, vm.node_id, vm.generation) == ("id-1", "web", "n1", 3)
        assert (vm.address, vm.placement_reason, vm.migrating_to) == ("10.251.0.5/32", "why", "")
        vm.migrating_to = "n2"
        await store.put_vm(vm)
        assert (await store.load_vms())[0].migrating_to == "n2"
        vm.migrating_to = ""
        await store.put_vm(vm)
        await store.close()
    version = sqlite3.connect(path).execute("SELECT value FROM meta").fetchone()
    assert version == ("2",)
