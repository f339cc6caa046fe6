"""The database's layout: file name, schema version, tables, column order and the statements
that write them; a new database's schema, and the in-place upgrade of an older one."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import structlog

from controller.store.errors import _UNCHANGED, StoreSchemaUnsupported

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 7  # 2: vms.migrating_to; 3: migrations, tombstones, meta.installation_id;
# 4: failovers; 5: drains, migrations.stays_stopped; 6: join_tokens, node_credentials,
# service_tokens,
# audit.result and audit.request_id, the audit table append-only; 7: node_credentials.expires_at
DB_NAME = "controller.db"

TABLES = (  # schema 7; IF NOT EXISTS so that an upgrade adds what an older schema lacks
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, info TEXT NOT NULL, images TEXT NOT NULL,
        registered_at REAL NOT NULL, last_heartbeat REAL NOT NULL,
        cordoned INTEGER NOT NULL DEFAULT 0, mesh TEXT NOT NULL DEFAULT '',
        mesh_address TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS vms (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
        node_id TEXT NOT NULL, desired TEXT NOT NULL, state TEXT NOT NULL,
        state_reason TEXT NOT NULL, generation INTEGER NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, request_id TEXT, placement_reason TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '', migrating_to TEXT NOT NULL DEFAULT '')""",
    "CREATE UNIQUE INDEX IF NOT EXISTS vms_request_id ON vms(request_id) WHERE request_id != ''",
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL,
        result TEXT NOT NULL DEFAULT 'ok', request_id TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS migrations (
        id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, vm_name TEXT NOT NULL, source TEXT NOT NULL,
        target TEXT NOT NULL, phase TEXT NOT NULL, from_generation INTEGER NOT NULL,
        to_generation INTEGER NOT NULL, mode TEXT NOT NULL, reason TEXT NOT NULL,
        priority INTEGER NOT NULL, max_downtime_ms INTEGER NOT NULL,
        bandwidth_mbit INTEGER NOT NULL, bytes_total INTEGER NOT NULL,
        bytes_transferred INTEGER NOT NULL, bytes_remaining INTEGER NOT NULL,
        started_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL NOT NULL,
        switched_at REAL NOT NULL, phase_times TEXT NOT NULL, downtime_ms REAL NOT NULL,
        elapsed_ms REAL NOT NULL, error TEXT NOT NULL, error_code TEXT NOT NULL,
        stimulus_id TEXT NOT NULL, timeout_s REAL NOT NULL,
        stays_stopped INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS migrations_vm ON migrations(vm_id)",
    """CREATE TABLE IF NOT EXISTS tombstones (
        vm_id TEXT PRIMARY KEY, name TEXT NOT NULL, generation INTEGER NOT NULL,
        deleted_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS failovers (
        id TEXT PRIMARY KEY, vm_id TEXT NOT NULL, vm_name TEXT NOT NULL, source TEXT NOT NULL,
        target TEXT NOT NULL, reason TEXT NOT NULL, from_generation INTEGER NOT NULL,
        to_generation INTEGER NOT NULL, last_heard_at REAL NOT NULL, lost_at REAL NOT NULL,
        started_at REAL NOT NULL, running_at REAL NOT NULL, outcome TEXT NOT NULL,
        error TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS failovers_vm ON failovers(vm_id)",
    """CREATE TABLE IF NOT EXISTS drains (
        node_id TEXT PRIMARY KEY, started_at REAL NOT NULL, parallel INTEGER NOT NULL,
        queued TEXT NOT NULL, active TEXT NOT NULL, moved TEXT NOT NULL, failed TEXT NOT NULL,
        finished_at REAL NOT NULL, cold INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS join_tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, node_id TEXT NOT NULL,
        uses_left INTEGER NOT NULL, expires_at REAL NOT NULL, created_at REAL NOT NULL,
        created_by TEXT NOT NULL, revoked INTEGER NOT NULL, description TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS node_credentials (
        node_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, enrolled_at REAL NOT NULL,
        token_id TEXT NOT NULL, revoked INTEGER NOT NULL, expires_at REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS service_tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
        expires_at REAL NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL,
        revoked INTEGER NOT NULL)""",
)
APPEND_ONLY = tuple(  # made after the audit table's upgrade (a trigger would block it)
    f"""CREATE TRIGGER IF NOT EXISTS audit_no_{verb.lower()} BEFORE {verb} ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"""
    for verb in ("UPDATE", "DELETE")
)

TOKEN_COLUMNS = (  # in JoinToken's field order
    "id", "secret_hash", "node_id", "uses_left", "expires_at", "created_at", "created_by",
    "revoked", "description",
)  # fmt: skip
PUT_TOKEN = (
    f"INSERT OR REPLACE INTO join_tokens({', '.join(TOKEN_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(TOKEN_COLUMNS))})"
)
SERVICE_TOKEN_COLUMNS = (  # in ServiceToken's field order
    "id", "secret_hash", "name", "role", "expires_at", "created_at", "created_by", "revoked",
)  # fmt: skip
PUT_SERVICE_TOKEN = (
    f"INSERT OR REPLACE INTO service_tokens({', '.join(SERVICE_TOKEN_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(SERVICE_TOKEN_COLUMNS))})"
)
CREDENTIAL_COLUMNS = ("node_id", "epoch", "enrolled_at", "token_id", "revoked", "expires_at")
PUT_CREDENTIAL = (
    f"INSERT OR REPLACE INTO node_credentials({', '.join(CREDENTIAL_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(CREDENTIAL_COLUMNS))})"
)

DRAIN_COLUMNS = (  # the drains table, in Drain's field order
    "node_id", "started_at", "parallel", "queued", "active", "moved", "failed", "finished_at",
    "cold",
)  # fmt: skip
PUT_DRAIN = (
    f"INSERT OR REPLACE INTO drains({', '.join(DRAIN_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(DRAIN_COLUMNS))})"
)

FAILOVER_COLUMNS = (  # the failovers table, in FailoverRecord's field order
    "id", "vm_id", "vm_name", "source", "target", "reason", "from_generation",
    "to_generation", "last_heard_at", "lost_at", "started_at", "running_at", "outcome", "error",
)  # fmt: skip
PUT_FAILOVER = (
    f"INSERT OR REPLACE INTO failovers({', '.join(FAILOVER_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(FAILOVER_COLUMNS))})"
)

MIGRATION_COLUMNS = (  # the migrations table, in MigrationRecord's field order
    "id", "vm_id", "vm_name", "source", "target", "phase", "from_generation", "to_generation",
    "mode", "reason", "priority", "max_downtime_ms", "bandwidth_mbit", "bytes_total",
    "bytes_transferred", "bytes_remaining", "started_at", "updated_at", "finished_at",
    "switched_at", "phase_times", "downtime_ms", "elapsed_ms", "error", "error_code",
    "stimulus_id", "timeout_s", "stays_stopped",
)  # fmt: skip

VM_COLUMNS = (
    "id, spec, node_id, desired, state, state_reason, generation, created_at, updated_at,"
    " request_id, placement_reason, address, migrating_to"
)
NODE_COLUMNS = "info, images, registered_at, last_heartbeat, cordoned, mesh, mesh_address"
PUT_VM = (
    "INSERT INTO vms(name, " + VM_COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET name=excluded.name, spec=excluded.spec,"
    " node_id=excluded.node_id, desired=excluded.desired, state=excluded.state,"
    " state_reason=excluded.state_reason, generation=excluded.generation,"
    " updated_at=excluded.updated_at, placement_reason=excluded.placement_reason,"
    " address=excluded.address, migrating_to=excluded.migrating_to"
)
PUT_NODE = (  # registered_at stays the first registration's
    "INSERT INTO nodes(node_id, " + NODE_COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(node_id) DO UPDATE SET info=excluded.info, images=excluded.images,"
    " last_heartbeat=excluded.last_heartbeat, cordoned=excluded.cordoned,"
    " mesh=excluded.mesh, mesh_address=excluded.mesh_address"
)
PUT_MIGRATION = (
    f"INSERT OR REPLACE INTO migrations({', '.join(MIGRATION_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(MIGRATION_COLUMNS))})"
)
PUT_TOMBSTONE = (
    "INSERT OR REPLACE INTO tombstones(vm_id, name, generation, deleted_at) VALUES (?, ?, ?, ?)"
)
PUT_AUDIT = (
    "INSERT INTO audit(at, actor, action, target, detail, result, request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def new_id() -> str:
    return uuid.uuid4().hex


def build(db: sqlite3.Connection) -> None:
    """Schema `SCHEMA_VERSION` and a new installation id, in one transaction, into an empty `db`."""
    db.execute("BEGIN IMMEDIATE")
    for statement in TABLES + APPEND_ONLY:
        db.execute(statement)
    db.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)",
        [("schema_version", str(SCHEMA_VERSION)), ("installation_id", new_id())],
    )
    db.execute("COMMIT")


def schema_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of `db` (at `path`); refuses what this controller does not know."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    row = (
        db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if "meta" in tables
        else None
    )
    if row is None:
        raise StoreSchemaUnsupported(
            f"{path}: a SQLite database, but not a NovaCron controller database (no"
            f" schema_version); {_UNCHANGED}. Point --state-dir at the controller's state",
            path=path,
        )
    version = int(row[0]) if str(row[0]).isdigit() else -1
    if not 1 <= version <= SCHEMA_VERSION:
        raise StoreSchemaUnsupported(
            f"{path}: schema version {row[0]!r}, this controller understands 1 to"
            f" {SCHEMA_VERSION}; refusing to touch it (written by a newer controller?);"
            f" {_UNCHANGED}",
            path=path,
        )
    return version


def upgrade(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Schema 1 to 7, in place, in one transaction (SQLite's DDL is transactional)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(vms)")}
        if columns and "migrating_to" not in columns:  # 1 -> 2
            db.execute("ALTER TABLE vms ADD COLUMN migrating_to TEXT NOT NULL DEFAULT ''")
        for statement in TABLES:  # 2 -> 3: migrations, tombstones; 3 -> 4: failovers; 4 -> 5
            # drains
            db.execute(statement)
        columns = {r[1] for r in db.execute("PRAGMA table_info(migrations)")}
        if "stays_stopped" not in columns:  # 4 -> 5
            db.execute("ALTER TABLE migrations ADD COLUMN stays_stopped INTEGER NOT NULL DEFAULT 0")
        columns = {r[1] for r in db.execute("PRAGMA table_info(audit)")}
        if "result" not in columns:  # 5 -> 6
            db.execute("ALTER TABLE audit ADD COLUMN result TEXT NOT NULL DEFAULT 'ok'")
            db.execute("ALTER TABLE audit ADD COLUMN request_id TEXT NOT NULL DEFAULT ''")
        columns = {r[1] for r in db.execute("PRAGMA table_info(node_credentials)")}
        if "expires_at" not in columns:  # 6 -> 7
            db.execute("ALTER TABLE node_credentials ADD COLUMN expires_at REAL NOT NULL DEFAULT 0")
        for statement in APPEND_ONLY:
            db.execute(statement)
        db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('installation_id', ?)", (new_id(),)
        )
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.info("upgraded the controller database", path=str(path), schema_from=version)
