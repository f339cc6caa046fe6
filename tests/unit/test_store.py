from __future__ import annotations

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
