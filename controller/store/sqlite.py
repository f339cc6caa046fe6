"""The SQLite store (WAL), one transaction per event, and the `Store` protocol it keeps.

Every write is committed before the caller acknowledges anything to a client or an agent, so a
controller killed at any point restarts with every VM it ever accepted. `apply` writes all that
one `Persist` holds in one transaction: all of it, or (on any error) none of it.

Opening refuses, naming the file: a file that is not a SQLite database or fails
`PRAGMA quick_check` (`StoreCorrupt`), a schema this controller does not know
(`StoreSchemaUnsupported`) and, unless `create`, a missing database (`StoreMissing`). A new
database is built beside its final name and linked into place, so `controller.db` either does
not exist or holds the whole schema and the installation id.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from controller.core.instructions import Persist
from controller.records import (
    AuditEntry,
    Drain,
    FailoverRecord,
    JoinToken,
    MigrationRecord,
    NodeCredential,
    NodeRecord,
    ServiceToken,
    Tombstone,
    VMRecord,
)
from controller.store import codecs, schema
from controller.store.errors import (
    _UNCHANGED,
    BUSY_TIMEOUT_MS,
    StoreCorrupt,
    StoreError,
    StoreMissing,
    _store_error,
)
from controller.store.schema import FAILOVER_COLUMNS, MIGRATION_COLUMNS, SCHEMA_VERSION

log = structlog.get_logger(__name__)

TOMBSTONE_RETENTION_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything the store holds that a core is rebuilt from."""

    nodes: list[NodeRecord]
    vms: list[VMRecord]
    migrations: list[MigrationRecord]
    tombstones: list[Tombstone]
    installation_id: str
    failovers: list[FailoverRecord] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    tokens: list[JoinToken] = field(default_factory=list)
    credentials: list[NodeCredential] = field(default_factory=list)
    service_tokens: list[ServiceToken] = field(default_factory=list)


class Store(Protocol):
    name: str
    path: Path
    installation_id: str
    created: bool

    async def load(self) -> StoredState: ...
    async def apply(self, persist: Persist) -> None: ...
    async def audit_log(
        self, limit: int = 100, since: float = 0.0, actor: str = ""
    ) -> list[AuditEntry]: ...
    async def close(self) -> None: ...


_Batch = list[tuple[str, list[tuple[Any, ...]]]]  # statements with their parameter rows


class SQLiteStore:
    """One connection, used from worker threads one call at a time (sqlite3 is blocking).

    `SQLiteStore(path)` (or `SQLiteStore.open(path, create=...)`) opens `path`, creating it when
    it is missing and `create` is true; `created` says this open made a new database (a new
    installation). Tombstones older than `tombstone_retention_s` (by `clock`) go on open.
    """

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self.created = False
        self._lock = threading.Lock()
        if not path.exists():
            if not create:
                raise StoreMissing(
                    f"{path.parent} has no {path.name} (looked for {path}); {_UNCHANGED}."
                    " Restore the database there, or start the controller with"
                    f" `novacron-controller --state-dir {path.parent} --new-installation` to"
                    " begin a new installation (agents that remember another installation"
                    " are taken over: their VMs are shown as orphans, never deleted)",
                    path=path,
                )
            self.created = self._create()
        elif path.is_file() and path.stat().st_size == 0 and not _has_wal(path):
            raise StoreCorrupt(
                f"{path}: the file is empty (0 bytes), not a controller database; {_UNCHANGED}."
                f" Restore {path.name} from a backup, or remove it to begin a new installation",
                path=path,
            )
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_ms / 1e3
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "open the database") from exc
        try:
            self.installation_id = self._prepare()
            self._prune_tombstones(clock() - tombstone_retention_s)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        clock: Callable[[], float] = time.time,
    ) -> SQLiteStore:
        return cls(
            path,
            create=create,
            tombstone_retention_s=tombstone_retention_s,
            busy_timeout_ms=busy_timeout_ms,
            clock=clock,
        )

    def _error(self, exc: sqlite3.Error | OSError, doing: str) -> StoreError:
        return _store_error(exc, self.path, doing, waited_ms=self._busy_timeout_ms)

    # ------------------------------------------------------------------ opening

    def _create(self) -> bool:
        """Build a whole new database beside `path`, then link it into place (never over an
        existing file). False if another process created it meanwhile."""
        path = self.path
        wal = path.with_name(path.name + "-wal")
        if _has_wal(path):
            raise StoreCorrupt(
                f"{path}: missing, but {wal} exists: the database was removed or copied"
                f" without its write-ahead log; {_UNCHANGED}. Restore {path.name} from a"
                f" backup, or remove {wal.name} to begin a new installation",
                path=path,
            )
        tmp = path.with_name(f".{path.name}.new-{uuid.uuid4().hex[:8]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                schema.build(db)
            finally:
                db.close()
            try:
                os.link(tmp, path)  # never over a database another process just created
            except FileExistsError:
                return False
            _fsync_dir(path.parent)
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc, "create the database") from exc
        finally:
            tmp.unlink(missing_ok=True)
        log.info("created a new controller database", path=str(path))
        return True

    def _prepare(self) -> str:
        """Check, upgrade if older, set the connection up; returns the installation id."""
        db, path = self._db, self.path
        try:
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            problems = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                lines = "; ".join("\n".join(problems).splitlines()[:3])
                raise StoreCorrupt(
                    f"{path}: PRAGMA quick_check failed ({lines}); {_UNCHANGED}."
                    " Restore controller.db from a backup",
                    path=path,
                )
            version = schema.schema_version(db, path)
            if version < SCHEMA_VERSION:
                schema.upgrade(db, path, version)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            row = db.execute("SELECT value FROM meta WHERE key='installation_id'").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, "open the database") from exc
        if row is None or not row[0]:
            raise StoreCorrupt(f"{path}: no installation_id in meta; {_UNCHANGED}", path=path)
        return str(row[0])

    def _prune_tombstones(self, before: float) -> None:
        """Housekeeping: a failure is logged, not fatal (old tombstones only linger)."""
        try:
            (old,) = self._db.execute(
                "SELECT count(*) FROM tombstones WHERE deleted_at < ?", (before,)
            ).fetchone()
            if old:
                self._write([("DELETE FROM tombstones WHERE deleted_at < ?", [(before,)])])
                log.info("pruned tombstones", count=old, path=str(self.path))
        except (StoreError, sqlite3.Error) as exc:
            log.warning("could not prune tombstones", path=str(self.path), error=str(exc))

    # ------------------------------------------------------------------ reading

    def _read(self, *queries: str) -> list[list[tuple[Any, ...]]]:
        """Run `queries` in one read transaction (a consistent snapshot)."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    return [self._db.execute(q).fetchall() for q in queries]
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc, "read the database") from exc

    async def load(self) -> StoredState:
        (
            nodes,
            vms,
            migrations,
            tombstones,
            failovers,
            drains,
            tokens,
            creds,
            services,
        ) = await asyncio.to_thread(
            self._read,
            f"SELECT {schema.NODE_COLUMNS} FROM nodes ORDER BY node_id",
            f"SELECT {schema.VM_COLUMNS} FROM vms ORDER BY created_at, id",
            f"SELECT {', '.join(MIGRATION_COLUMNS)} FROM migrations ORDER BY started_at, id",
            "SELECT vm_id, name, generation, deleted_at FROM tombstones ORDER BY deleted_at, vm_id",
            f"SELECT {', '.join(FAILOVER_COLUMNS)} FROM failovers ORDER BY started_at, id",
            f"SELECT {', '.join(schema.DRAIN_COLUMNS)} FROM drains ORDER BY node_id",
            f"SELECT {', '.join(schema.TOKEN_COLUMNS)} FROM join_tokens ORDER BY created_at",
            f"SELECT {', '.join(schema.CREDENTIAL_COLUMNS)} FROM node_credentials",
            f"SELECT {', '.join(schema.SERVICE_TOKEN_COLUMNS)} FROM service_tokens",
        )
        return StoredState(
            nodes=[codecs.node_from_row(r) for r in nodes],
            vms=[codecs.vm_from_row(r) for r in vms],
            migrations=[codecs.migration_from_row(r) for r in migrations],
            tombstones=[Tombstone(*r) for r in tombstones],
            installation_id=self.installation_id,
            failovers=[FailoverRecord(*r) for r in failovers],
            drains=[codecs.drain_from_row(r) for r in drains],
            tokens=[codecs.token_from_row(r) for r in tokens],
            credentials=[codecs.credential_from_row(r) for r in creds],
            service_tokens=[codecs.service_token_from_row(r) for r in services],
        )

    async def load_nodes(self) -> list[NodeRecord]:
        (rows,) = await asyncio.to_thread(
            self._read, f"SELECT {schema.NODE_COLUMNS} FROM nodes ORDER BY node_id"
        )
        return [codecs.node_from_row(r) for r in rows]

    async def load_vms(self) -> list[VMRecord]:
        (rows,) = await asyncio.to_thread(
            self._read, f"SELECT {schema.VM_COLUMNS} FROM vms ORDER BY created_at, id"
        )
        return [codecs.vm_from_row(r) for r in rows]

    async def audit_log(
        self, limit: int = 100, since: float = 0.0, actor: str = ""
    ) -> list[AuditEntry]:
        """The newest `limit` records at or after `since` (by `actor`, if given), newest first."""
        query = (
            "SELECT at, action, target, detail, actor, result, request_id, seq FROM audit"
            " WHERE at >= ? AND (? = '' OR actor = ?) ORDER BY seq DESC LIMIT ?"
        )
        (rows,) = await asyncio.to_thread(
            self._read_params, query, (float(since), actor, actor, int(limit))
        )
        return [AuditEntry(*r) for r in rows]

    def _read_params(self, query: str, params: tuple[Any, ...]) -> list[list[tuple[Any, ...]]]:
        with self._lock:
            try:
                return [self._db.execute(query, params).fetchall()]
            except sqlite3.Error as exc:
                raise self._error(exc, "read the database") from exc

    # ------------------------------------------------------------------ writing

    def _write(self, batch: _Batch) -> None:
        """One transaction: every statement of `batch`, or (on any error) none of them."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, rows in batch:
                        db.executemany(sql, rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc, "write the database") from exc

    async def apply(self, persist: Persist) -> None:
        """Write everything `persist` holds in one transaction; raise a `StoreError` (and
        write nothing) if any part fails."""
        if not persist:
            return
        both = set(persist.forget_vms) & {vm.id for vm in persist.vms}
        if both:
            raise ValueError(f"a Persist both writes and forgets VM(s) {sorted(both)}")
        # Encoded here, before the thread runs: the rows are what the records were at the call.
        batch: _Batch = [
            ("DELETE FROM vms WHERE id = ?", [(vm_id,) for vm_id in persist.forget_vms]),
            (schema.PUT_VM, [codecs.vm_row(vm) for vm in persist.vms]),
            (schema.PUT_NODE, [codecs.node_row(node) for node in persist.nodes]),
            ("DELETE FROM nodes WHERE node_id = ?", [(n,) for n in persist.forget_nodes]),
            ("DELETE FROM drains WHERE node_id = ?", [(n,) for n in persist.forget_nodes]),
            (schema.PUT_MIGRATION, [codecs.migration_row(m) for m in persist.migrations]),
            (
                schema.PUT_TOMBSTONE,
                [(t.vm_id, t.name, t.generation, t.deleted_at) for t in persist.tombstones],
            ),
            (
                schema.PUT_FAILOVER,
                [tuple(getattr(f, c) for c in FAILOVER_COLUMNS) for f in persist.failovers],
            ),
            (schema.PUT_DRAIN, [codecs.drain_row(d) for d in persist.drains]),
            (schema.PUT_TOKEN, [codecs.token_row(t) for t in persist.tokens]),
            (schema.PUT_CREDENTIAL, [codecs.credential_row(c) for c in persist.credentials]),
            (
                schema.PUT_SERVICE_TOKEN,
                [codecs.service_token_row(t) for t in persist.service_tokens],
            ),
            (
                schema.PUT_AUDIT,
                [
                    (e.at, e.actor, e.action, e.target, e.detail, e.result, e.request_id)
                    for e in persist.audit
                ],
            ),
        ]
        await asyncio.to_thread(self._write, [(sql, rows) for sql, rows in batch if rows])

    async def probe(self) -> None:
        """A real one-row write (gRPC health): raises the `StoreError` a write would."""
        row = [("health_probe", repr(time.time()))]
        await asyncio.to_thread(self._write, [("INSERT OR REPLACE INTO meta VALUES (?, ?)", row)])

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                self._db.close()

        await asyncio.to_thread(work)


def _has_wal(path: Path) -> bool:
    """A non-empty write-ahead log: an old controller's database may live only there (a
    database created in WAL mode is 0 bytes until its first checkpoint)."""
    wal = path.with_name(path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
