"""The store's errors, and the one translation of sqlite3 and file-system failures into them.

Every failure leaves the store as a `StoreError` that names the database file and says that
nothing was changed; `_store_error` is the only place sqlite3 and file-system errors are
translated.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NovaCronError,
    ResourceExhausted,
    Unavailable,
)

BUSY_TIMEOUT_MS = 2000  # a locked database answers within this, not after minutes


class StoreError(NovaCronError):
    """A store failure (INTERNAL unless a subclass says otherwise); the message names the file."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreFull(StoreError, ResourceExhausted):
    """The disk (or the file system holding the database) is full."""


class StoreUnavailable(StoreError, Unavailable):
    """Locked by another process, an I/O error, read-only, cannot be opened."""


class StoreCorrupt(StoreError, Internal):
    """Not a SQLite database, or it fails `PRAGMA quick_check`. gRPC: DATA_LOSS."""

    code = "DATA_LOSS"


class StoreMissing(StoreError, FailedPrecondition):
    """The state dir has no database and the caller did not ask to create one."""


class StoreSchemaUnsupported(StoreError, FailedPrecondition):
    """A newer (or unknown) schema, or a SQLite file that is not a controller database."""


class StoreConflict(StoreError, AlreadyExists):
    """A uniqueness rule of the schema refused the write (e.g. a second VM with one name)."""


_UNCHANGED = "nothing was changed"


def _store_error(
    exc: sqlite3.Error | OSError, path: Path, doing: str, *, waited_ms: int = BUSY_TIMEOUT_MS
) -> StoreError:
    """The one translation of sqlite3 and file-system failures into the domain's errors."""
    where = f"{path}: cannot {doing}"
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(f"{where}: the disk is full ({cause}); {_UNCHANGED}", path=path)
        return StoreUnavailable(f"{where}: {cause}; {_UNCHANGED}", path=path)
    code = getattr(exc, "sqlite_errorcode", -1)
    primary = code & 0xFF if code >= 0 else code
    cause = f"{exc} [{getattr(exc, 'sqlite_errorname', type(exc).__name__)}]"
    if primary == sqlite3.SQLITE_FULL:
        return StoreFull(f"{where}: the disk is full ({cause}); {_UNCHANGED}", path=path)
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailable(
            f"{where}: database is locked by another process (waited {waited_ms} ms;"
            f" {cause}); {_UNCHANGED}",
            path=path,
        )
    if primary == sqlite3.SQLITE_NOTADB:
        return StoreCorrupt(
            f"{where}: it is not a SQLite database ({cause}); {_UNCHANGED}. Restore"
            " controller.db from a backup, or move it away to start a new installation",
            path=path,
        )
    if primary == sqlite3.SQLITE_CORRUPT:
        return StoreCorrupt(
            f"{where}: the database is corrupt ({cause}); {_UNCHANGED}."
            " Restore controller.db from a backup",
            path=path,
        )
    if primary == sqlite3.SQLITE_CONSTRAINT:
        return StoreConflict(f"{where}: refused by the schema ({cause}); {_UNCHANGED}", path=path)
    if primary == sqlite3.SQLITE_READONLY:
        return StoreUnavailable(
            f"{where}: the database is read-only ({cause}); {_UNCHANGED}", path=path
        )
    if primary in (
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
    ):
        return StoreUnavailable(f"{where}: {cause}; {_UNCHANGED}", path=path)
    return StoreError(f"{where}: {cause}; {_UNCHANGED}", path=path)
