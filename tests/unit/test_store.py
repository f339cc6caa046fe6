from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from controller.core.instructions import Persist
from controller.records import (
    AuditEntry,
    Drain,
    JoinToken,
    MigrationPhase,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    Tombstone,
    VMRecord,
)
from controller.store import (
    MIGRATION_COLUMNS,
    SCHEMA_VERSION,
    SQLiteStore,
    StoreConflict,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreMissing,
    StoreSchemaUnsupported,
    StoreUnavailable,
    _store_error,
)
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
from shared.errors import AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable
from shared.mesh import MeshIdentity

DAY = 86400.0


def a_node(node_id: str = "n1") -> NodeRecord:
    return NodeRecord(
        info=NodeInfo(
            node_id,
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
        cordoned=True,
        mesh=MeshIdentity("cHVibGlj", "192.0.2.1:51820", behind_nat=True),
        mesh_address="10.250.0.2/32",
    )


def a_vm(vm_id: str = "id-1", name: str = "web", created_at: float = 1.0) -> VMRecord:
    return VMRecord(
        id=vm_id,
        spec=VMSpec(
            name,
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
        created_at=created_at,
        updated_at=2.0,
        state_reason="ok",
        request_id=f"r-{vm_id}",
        placement_reason="n1 score 0.9",
        address="10.251.0.5/32",
        migrating_to="n2",
    )


def a_migration(migration_id: str = "m-1") -> MigrationRecord:
    """Every field differs from its default, so a column that is not stored shows."""
    return MigrationRecord(
        id=migration_id,
        vm_id="id-1",
        vm_name="web",
        source="n1",
        target="n2",
        phase=MigrationPhase.TRANSFER,
        from_generation=3,
        to_generation=4,
        mode="postcopy",
        reason="requested",
        priority=5,
        max_downtime_ms=300,
        bandwidth_mbit=100,
        bytes_total=2**40,
        bytes_transferred=2**33,
        bytes_remaining=2**40 - 2**33,
        started_at=10.0,
        updated_at=12.5,
        finished_at=13.0,
        switched_at=12.75,
        phase_times=(("pre_checks", 10.0), ("snapshot", 10.5), ("transfer", 11.25)),
        downtime_ms=12.5,
        elapsed_ms=2500.0,
        error="none yet",
        error_code="UNAVAILABLE",
        stimulus_id="req-7",
        timeout_s=45.5,
    )


async def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    node, vm = a_node(), a_vm()
    await store.apply(Persist(nodes=(node,)))
    await store.apply(Persist(vms=(vm,)))
    vm = dataclasses.replace(vm, state=VMState.PAUSED)
    await store.apply(Persist(vms=(vm,)))
    await store.apply(Persist(audit=(AuditEntry(at=1.0, action="vm.deploy", target="id-1"),)))
    await store.close()

    reopened = SQLiteStore(path)
    assert (await reopened.load()).nodes == [node]
    assert (await reopened.load()).vms == [vm]
    assert [e.action for e in await reopened.audit_log()] == ["vm.deploy"]
    await reopened.apply(Persist(forget_vms=("id-1",)))
    assert (await reopened.load()).vms == []
    await reopened.close()


async def test_apply_and_load_round_trip_every_record_type(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    store = SQLiteStore.open(path, create=True, clock=lambda: 100 * DAY)
    vm2 = a_vm("id-2", "db", created_at=5.0)
    tomb = Tombstone(vm_id="id-0", name="old", generation=7, deleted_at=100 * DAY - 1.5)
    entry = AuditEntry(
        at=3.0, action="vm.migrate", target="id-1", detail="to n2", actor="op", request_id="r1"
    )
    token = JoinToken("abc123", "f" * 64, "n3", 2, 50.0, 1.0, "client:admin", description="x")
    credential = NodeCredential("n1", 2, 7.0, "abc123")
    migration = a_migration()
    drain = Drain("n1", 4.0, 2, queued=("id-2",), active=(("id-1", "m-1"),), failed=(("x", "why"),))
    await store.apply(
        Persist(
            vms=(a_vm(), vm2),
            nodes=(a_node("n1"), a_node("n2")),
            migrations=(migration,),
            tombstones=(tomb,),
            drains=(drain,),
            tokens=(token,),
            credentials=(credential,),
            audit=(entry,),
        )
    )
    token = dataclasses.replace(token, uses_left=1, revoked=True)
    credential = dataclasses.replace(credential, revoked=True, epoch=3)
    drain = dataclasses.replace(
        drain, queued=(), active=(), moved=(("db", "n2"), ("web", "n2")), finished_at=9.0
    )
    finished = dataclasses.replace(
        migration,
        phase=MigrationPhase.SUCCEEDED,
        phase_times=(*migration.phase_times, ("succeeded", 14.0)),
        bytes_remaining=0,
    )
    await store.apply(
        Persist(
            forget_vms=("id-2",),
            migrations=(finished,),
            drains=(drain,),
            tokens=(token,),
            credentials=(credential,),
        )
    )
    await store.close()

    reopened = SQLiteStore.open(path, create=False, clock=lambda: 100 * DAY)
    state = await reopened.load()
    assert state.nodes == [a_node("n1"), a_node("n2")]
    assert state.vms == [a_vm()]
    assert state.migrations == [finished]
    assert state.tombstones == [tomb]
    assert state.drains == [drain]
    assert state.installation_id == reopened.installation_id == store.installation_id
    assert state.tokens == [token]
    assert state.credentials == [credential]
    assert await reopened.audit_log() == [dataclasses.replace(entry, seq=1)]
    await reopened.close()


async def test_an_empty_persist_writes_nothing_and_a_contradictory_one_is_refused(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "controller.db")
    await store.apply(Persist())
    with pytest.raises(ValueError, match="id-1"):
        await store.apply(Persist(vms=(a_vm(),), forget_vms=("id-1",)))
    assert (await store.load()).vms == []
    await store.close()


def test_the_migrations_table_stores_every_field_of_the_record(tmp_path: Path) -> None:
    assert tuple(f.name for f in dataclasses.fields(MigrationRecord)) == MIGRATION_COLUMNS
    SQLiteStore(tmp_path / "controller.db")
    db = sqlite3.connect(tmp_path / "controller.db")
    assert tuple(r[1] for r in db.execute("PRAGMA table_info(migrations)")) == MIGRATION_COLUMNS
    db.close()


async def test_a_persist_is_one_transaction(tmp_path: Path) -> None:
    """Its VMs are written first and the second one fails (a duplicate name): the forget, the
    first VM and the node, migration, tombstone and audit after it are all left unwritten."""
    path = tmp_path / "controller.db"
    store = SQLiteStore(path)
    await store.apply(Persist(vms=(a_vm("id-1", "web"), a_vm("id-9", "keep"))))
    before = await store.load()
    persist = Persist(
        forget_vms=("id-9",),
        vms=(a_vm("id-2", "new"), a_vm("id-3", "web")),
        nodes=(a_node(),),
        migrations=(a_migration(),),
        tombstones=(Tombstone("id-9", "keep", 3, 5.0),),
        audit=(AuditEntry(at=1.0, action="vm.deploy", target="id-2"),),
    )
    with pytest.raises(StoreConflict) as caught:
        await store.apply(persist)
    assert isinstance(caught.value, AlreadyExists)
    assert str(path) in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    assert "vms.name" in str(caught.value)
    assert await store.load() == before
    assert await store.audit_log() == []
    await store.apply(dataclasses.replace(persist, vms=(a_vm("id-2", "new"),)))  # still usable
    assert [vm.id for vm in (await store.load()).vms] == ["id-1", "id-2"]
    await store.close()


def _write_schema_2(path: Path) -> None:
    """What a controller before migrations-as-records wrote (schema 2)."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY, info TEXT NOT NULL, images TEXT NOT NULL,
            registered_at REAL NOT NULL, last_heartbeat REAL NOT NULL,
            cordoned INTEGER NOT NULL DEFAULT 0, mesh TEXT NOT NULL DEFAULT '',
            mesh_address TEXT NOT NULL DEFAULT ''
        );
        INSERT INTO nodes VALUES ('n1', '{"node_id": "n1", "hostname": "h", "arch": "x86_64",
            "edge_type": "iot", "capacity": {"vcpus": 4, "memory_mib": 2048, "storage_gib": 10},
            "location": null, "labels": {}}', '[]', 1.0, 2.0, 1, '', '10.250.0.2/32');
        CREATE TABLE vms (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
            node_id TEXT NOT NULL, desired TEXT NOT NULL, state TEXT NOT NULL,
            state_reason TEXT NOT NULL, generation INTEGER NOT NULL, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, request_id TEXT,
            placement_reason TEXT NOT NULL DEFAULT '', address TEXT NOT NULL DEFAULT '',
            migrating_to TEXT NOT NULL DEFAULT ''
        );
        CREATE UNIQUE INDEX vms_request_id ON vms(request_id) WHERE request_id != '';
        INSERT INTO vms VALUES ('id-1', 'web', '{"name": "web", "image": "tiny", "vcpus": 1,
            "memoryMib": "64"}', 'n1', 'running', 'running', 'ok', 3, 1.0, 2.0, 'r1', 'why',
            '10.251.0.5/32', 'n2');
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL
        );
        INSERT INTO audit(at, actor, action, target, detail)
            VALUES (1.0, 'api', 'vm.deploy', 'id-1', '');
        """
    )
    db.close()


def _meta(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()


async def test_a_schema_2_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    _write_schema_2(path)
    ids = set()
    for opened in range(2):  # the second open finds schema 3: nothing to do
        store = SQLiteStore.open(path, create=False)
        assert not store.created
        state = await store.load()
        [node] = state.nodes
        assert (node.node_id, node.cordoned, node.mesh_address) == ("n1", True, "10.250.0.2/32")
        [vm] = state.vms
        assert (vm.id, vm.spec.name, vm.node_id, vm.generation) == ("id-1", "web", "n1", 3)
        assert (vm.address, vm.migrating_to, vm.request_id) == ("10.251.0.5/32", "n2", "r1")
        assert (state.migrations, state.tombstones) == ([a_migration()] * opened, [])
        assert [e.action for e in await store.audit_log()] == ["vm.deploy"]
        await store.apply(Persist(migrations=(a_migration(),)))
        assert (await store.load()).migrations == [a_migration()]
        ids.add(store.installation_id)
        await store.close()
    assert len(ids) == 1
    assert _meta(path) == {"schema_version": str(SCHEMA_VERSION), "installation_id": ids.pop()}


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
        [vm] = (await store.load()).vms
        assert (vm.id, vm.spec.name, vm.node_id, vm.generation) == ("id-1", "web", "n1", 3)
        assert (vm.address, vm.placement_reason, vm.migrating_to) == ("10.251.0.5/32", "why", "")
        await store.apply(Persist(vms=(dataclasses.replace(vm, migrating_to="n2"),)))
        assert (await store.load()).vms[0].migrating_to == "n2"
        await store.apply(Persist(vms=(vm,)))
        await store.close()
    assert _meta(path)["schema_version"] == str(SCHEMA_VERSION)


async def test_a_schema_6_database_gains_credential_expiry(tmp_path: Path) -> None:
    """Schema 6 kept no certificate expiry with a node's credential: its credentials load
    with none (0) and keep what is written from then on."""
    path = tmp_path / "six.db"
    store = SQLiteStore(path)
    await store.load()
    await store.close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        ALTER TABLE node_credentials DROP COLUMN expires_at;
        INSERT INTO node_credentials VALUES ('gw-1', 2, 10.0, 'tok1', 0);
        UPDATE meta SET value = '6' WHERE key = 'schema_version';
        """
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    [credential] = (await store.load()).credentials
    assert credential == NodeCredential("gw-1", 2, 10.0, "tok1", False, 0.0)
    await store.apply(Persist(credentials=(dataclasses.replace(credential, expires_at=99.5),)))
    assert (await store.load()).credentials[0].expires_at == 99.5
    await store.close()
    assert _meta(path)["schema_version"] == str(SCHEMA_VERSION) == "7"


def _corrupt_a_page(path: Path, page: int | None = None) -> None:
    """A database of many pages, one b-tree page overwritten (by default one in the middle,
    which makes reading fail; page 4's header makes `quick_check` report instead)."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    db.executemany("INSERT INTO t(v) VALUES (?)", [(f"value-{i}" * 10,) for i in range(3000)])
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    size = 4096
    start = (page - 1) * size if page else (len(data) // size // 2) * size
    data[start : start + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))


def _a_controller_db(path: Path) -> bytes:
    SQLiteStore(path)  # a real one, then damaged below
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("text", "not a SQLite database"),
        ("truncated-header", "corrupt"),
        ("empty", r"empty \(0 bytes\)"),
        ("page", "corrupt|quick_check failed"),
    ],
)
def test_a_damaged_or_foreign_file_stops_start_up_naming_the_file(
    tmp_path: Path, damage: str, says: str
) -> None:
    path = tmp_path / "controller.db"
    if damage == "text":
        path.write_text("listen: 127.0.0.1:7700\nstate_dir: /var/lib/novacron\n" * 50)
    elif damage == "truncated-header":
        path.write_bytes(_a_controller_db(path)[:60])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        _corrupt_a_page(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt, match=says) as caught:
        SQLiteStore.open(path, create=True)
    assert str(path) in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    assert caught.value.code == "DATA_LOSS"
    assert path.read_bytes() == before  # not "repaired" into a new, empty installation


def test_quick_check_failure_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    _corrupt_a_page(path, page=4)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA quick_check").fetchall() != [("ok",)]  # the premise
    db.close()
    with pytest.raises(
        StoreCorrupt, match=r"PRAGMA quick_check failed \(\*\*\* in database main"
    ) as e:
        SQLiteStore(path)
    assert str(path) in str(e.value)


def test_a_missing_database_is_created_only_when_asked(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = state_dir / "controller.db"
    with pytest.raises(StoreMissing) as caught:
        SQLiteStore.open(path, create=False)
    message = str(caught.value)
    assert isinstance(caught.value, FailedPrecondition)
    assert f"{state_dir} has no controller.db" in message
    assert "--new-installation" in message
    assert not state_dir.exists()

    store = SQLiteStore.open(path, create=True)
    assert store.created and store.path == path
    assert sorted(p.name for p in state_dir.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "controller.db"
    ]  # the file built beside it is gone


def test_a_write_ahead_log_without_its_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    (tmp_path / "controller.db-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 28)
    with pytest.raises(StoreCorrupt, match=r"controller\.db-wal"):
        SQLiteStore.open(path, create=True)
    assert not path.exists()


@pytest.mark.parametrize("version", [str(SCHEMA_VERSION + 1), "99", "two"])
def test_an_unknown_schema_version_is_refused_untouched(tmp_path: Path, version: str) -> None:
    path = tmp_path / "controller.db"
    _write_schema_2(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreSchemaUnsupported) as caught:
        SQLiteStore.open(path, create=False)
    assert str(path) in str(caught.value)
    assert f"schema version {version!r}" in str(caught.value)
    assert path.read_bytes() == before


def test_a_sqlite_file_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(StoreSchemaUnsupported, match="not a NovaCron controller database"):
        SQLiteStore(path)


def test_the_installation_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "a" / "controller.db")
    assert first.created
    assert len(first.installation_id) == 32 and int(first.installation_id, 16) >= 0
    again = SQLiteStore.open(tmp_path / "a" / "controller.db", create=False)
    assert not again.created
    assert again.installation_id == first.installation_id
    other = SQLiteStore(tmp_path / "b" / "controller.db")
    assert other.installation_id != first.installation_id


async def test_tombstones_past_their_retention_are_pruned_on_open(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    now = 1000 * DAY
    store = SQLiteStore(path, clock=lambda: now)
    tombs = [
        Tombstone("old", "a", 1, now - 31 * DAY),
        Tombstone("edge", "b", 1, now - 29 * DAY),
        Tombstone("new", "c", 2, now - 1.0),
    ]
    await store.apply(Persist(tombstones=tuple(tombs)))
    await store.close()
    assert [t.vm_id for t in (await SQLiteStore(path, clock=lambda: now).load()).tombstones] == [
        "edge",
        "new",
    ]
    later = SQLiteStore(path, clock=lambda: now + 2 * DAY)
    assert [t.vm_id for t in (await later.load()).tombstones] == ["new"]
    short = SQLiteStore(path, clock=lambda: now + 2 * DAY, tombstone_retention_s=1.0)
    assert (await short.load()).tombstones == []


def _sqlite_error(cls: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
    err = cls(message)
    err.sqlite_errorcode = code
    err.sqlite_errorname = "X"
    return err


@pytest.mark.parametrize(
    ("error", "kind", "base", "says"),
    [
        (
            _sqlite_error(sqlite3.OperationalError, "database or disk is full", 13),
            StoreFull,
            ResourceExhausted,
            "the disk is full",
        ),
        (
            _sqlite_error(sqlite3.OperationalError, "database is locked", 5),
            StoreUnavailable,
            Unavailable,
            "locked by another process",
        ),
        (
            _sqlite_error(sqlite3.OperationalError, "database table is locked", 6),
            StoreUnavailable,
            Unavailable,
            "locked by another process",
        ),
        (
            _sqlite_error(sqlite3.OperationalError, "disk I/O error", 778),  # IOERR_WRITE
            StoreUnavailable,
            Unavailable,
            "disk I/O error",
        ),
        (
            _sqlite_error(sqlite3.OperationalError, "attempt to write a readonly database", 8),
            StoreUnavailable,
            Unavailable,
            "read-only",
        ),
        (
            _sqlite_error(sqlite3.DatabaseError, "database disk image is malformed", 11),
            StoreCorrupt,
            StoreError,
            "corrupt",
        ),
        (OSError(28, "No space left on device"), StoreFull, ResourceExhausted, "disk is full"),
        (OSError(13, "Permission denied"), StoreUnavailable, Unavailable, "Permission denied"),
        (
            sqlite3.ProgrammingError("Cannot operate on a closed database."),
            StoreError,
            StoreError,
            "closed",
        ),
    ],
)
def test_every_store_failure_maps_to_one_domain_error(
    error: sqlite3.Error | OSError, kind: type[StoreError], base: type[Exception], says: str
) -> None:
    path = Path("/var/lib/novacron/controller/controller.db")
    mapped = _store_error(error, path, "write the database")
    assert type(mapped) is kind and isinstance(mapped, base)
    assert says in str(mapped)
    assert str(mapped).startswith(f"{path}: cannot write the database: ")
    assert "nothing was changed" in str(mapped)
    assert mapped.path == path


def test_the_controller_prints_a_store_error_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import controller.main  # here: the daemon's imports are not the store's

    # structlog must not be bound to this test's captured stderr once it is closed
    monkeypatch.setattr(controller.main, "configure_logging", lambda *a, **k: None)
    main = controller.main.main

    (tmp_path / "controller.db").write_text("not a database\n" * 100)
    args = ["--insecure", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0"]
    code = main([*args, "--metrics-listen", ""])
    assert code != 0
    last = capsys.readouterr().err.splitlines()[-1]  # after the insecure-mode warning
    assert last.startswith(f"novacron-controller: {tmp_path / 'controller.db'}: ")
    assert "not a SQLite database" in last


async def test_the_audit_log_is_append_only_and_filtered_by_time_and_actor(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    store = SQLiteStore.open(path, create=True)
    entries = [
        AuditEntry(at=10.0, action="vm.deploy", target="a", actor="client:alice"),
        AuditEntry(at=20.0, action="vm.delete", target="a", actor="client:bob"),
        AuditEntry(at=30.0, action="node.enrol", target="n1", actor="token:abc123"),
    ]
    await store.apply(Persist(audit=tuple(entries)))
    newest_first = await store.audit_log()
    assert [e.action for e in newest_first] == ["node.enrol", "vm.delete", "vm.deploy"]
    assert [e.target for e in await store.audit_log(since=15.0)] == ["n1", "a"]
    assert [e.action for e in await store.audit_log(actor="client:bob")] == ["vm.delete"]
    await store.close()
    db = sqlite3.connect(path)
    for statement in ("UPDATE audit SET actor = 'nobody'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.close()


async def test_a_removed_node_is_deleted_with_its_drain(tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path / "controller.db", create=True)
    drain = Drain("n2", 4.0, 1)
    await store.apply(Persist(nodes=(a_node("n1"), a_node("n2")), drains=(drain,)))
    await store.apply(Persist(forget_nodes=("n2",)))
    state = await store.load()
    assert [n.info.node_id for n in state.nodes] == ["n1"] and state.drains == []
    await store.close()
