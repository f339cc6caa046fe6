"""Persistence of the controller's state: SQLite (WAL), one transaction per event.

`errors` holds `StoreError`, its kinds and the one translation of sqlite3 and file-system
failures into them; `schema` the tables, their version and the in-place upgrade; `codecs` the
records' rows; `sqlite` the `SQLiteStore` itself and the `Store` protocol it keeps.
"""

from controller.store.errors import (
    BUSY_TIMEOUT_MS,
    StoreConflict,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreMissing,
    StoreSchemaUnsupported,
    StoreUnavailable,
)
from controller.store.errors import _store_error as _store_error
from controller.store.schema import DB_NAME, MIGRATION_COLUMNS, SCHEMA_VERSION
from controller.store.sqlite import TOMBSTONE_RETENTION_S, SQLiteStore, Store, StoredState

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DB_NAME",
    "MIGRATION_COLUMNS",
    "SCHEMA_VERSION",
    "TOMBSTONE_RETENTION_S",
    "SQLiteStore",
    "Store",
    "StoreConflict",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreMissing",
    "StoreSchemaUnsupported",
    "StoreUnavailable",
    "StoredState",
]
