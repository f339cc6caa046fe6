"""The agent's own record of what the controller last wanted here, in a small SQLite file, so
an edge node that reboots while its uplink is down can bring its VMs and tunnels back alone.

Written after each command that changes it succeeds: a create, a power change, a delete, a
migration in or out (with its generation, desired power state and stop_after), and each mesh
config (the peer set); and the controller's last settings for this agent (its welcome's
heartbeat and probe intervals), which a restarted agent uses until it is welcomed again. Read
at start (`agent/offline.py`, `agent/session.py`). The controller stays the authority:
on reconnect the hello reports what is, and its reconcile decides (the newer generation wins).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared import convert
from shared.commands import (
    AgentCommand,
    ApplyMesh,
    ChangePower,
    CommandResult,
    CreateVM,
    DeleteVM,
    FinishMigration,
    LandMigration,
    Migrate,
    PowerAction,
)
from shared.mesh import MeshConfig
from shared.pb.v1 import types_pb2 as pb

log = structlog.get_logger(__name__)

CACHE_FILE = "desired.db"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS vms (
        vm_id TEXT PRIMARY KEY, name TEXT NOT NULL, generation INTEGER NOT NULL,
        desired TEXT NOT NULL, stop_after REAL)""",
    "CREATE TABLE IF NOT EXISTS mesh (id INTEGER PRIMARY KEY CHECK (id = 1), config BLOB)",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value REAL NOT NULL)",
)
# the controller's settings for this agent, from its last welcome (seconds)
HEARTBEAT_INTERVAL, PROBE_INTERVAL = "heartbeat_interval_s", "probe_interval_s"
RUNNING, PAUSED, STOPPED = "running", "paused", "stopped"  # what the controller wants here
_POWER = {
    PowerAction.START: RUNNING,
    PowerAction.RESUME: RUNNING,
    PowerAction.SUSPEND: PAUSED,
    PowerAction.STOP: STOPPED,
}


@dataclass(frozen=True, slots=True)
class DesiredVM:
    vm_id: str
    name: str
    generation: int
    desired: str  # RUNNING, PAUSED or STOPPED
    stop_after_s: float | None


class DesiredStateCache:
    """Blocking (SQLite): called off the event loop, or from its thread pool."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / CACHE_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA:
            self._db.execute(statement)

    def record(self, command: AgentCommand, result: CommandResult) -> None:
        """What a command that succeeded means for the desired state here."""
        if result.error is not None:
            return
        try:
            self._record(command)
        except sqlite3.Error as err:  # the VM is fine; only offline autonomy is the poorer
            log.error("desired state not cached", path=str(self.path), error=str(err))

    def _record(self, command: AgentCommand) -> None:
        if isinstance(command, CreateVM | FinishMigration | LandMigration):
            start_paused = isinstance(command, CreateVM) and command.start_paused
            stays_stopped = isinstance(command, LandMigration) and command.stay_stopped
            if isinstance(command, FinishMigration) and self._desired(command.vm_id) == STOPPED:
                return  # a stopped VM's cold move finished: it stays stopped
            stop_after = command.spec.disconnect.stop_after_s
            self._put(
                DesiredVM(
                    command.vm_id,
                    command.spec.name,
                    command.generation,
                    STOPPED if stays_stopped else PAUSED if start_paused else RUNNING,
                    stop_after if stop_after is not None and stop_after < float("inf") else None,
                )
            )
        elif isinstance(command, ChangePower):
            with self._lock:
                self._db.execute(
                    "UPDATE vms SET desired = ? WHERE vm_id = ?",
                    (_POWER[command.action], command.vm_id),
                )
        elif isinstance(command, Migrate) and command.mode != "live":
            # stopped for a cold/snapshot move: kept (a failed move starts it again), but
            # never started offline (the target may run it already)
            with self._lock:
                self._db.execute(
                    "UPDATE vms SET desired = ? WHERE vm_id = ?", (STOPPED, command.vm_id)
                )
        elif isinstance(command, DeleteVM | Migrate):  # gone from here
            with self._lock:
                self._db.execute("DELETE FROM vms WHERE vm_id = ?", (command.vm_id,))
        elif isinstance(command, ApplyMesh):
            blob = convert.mesh_config_to_pb(command.config).SerializeToString()
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO mesh(id, config) VALUES (1, ?)", (blob,))

    def _desired(self, vm_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT desired FROM vms WHERE vm_id = ?", (vm_id,)).fetchone()
        return str(row[0]) if row else None

    def _put(self, vm: DesiredVM) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO vms(vm_id, name, generation, desired, stop_after)"
                " VALUES (?, ?, ?, ?, ?)",
                (vm.vm_id, vm.name, vm.generation, vm.desired, vm.stop_after_s),
            )

    def vms(self) -> list[DesiredVM]:
        with self._lock:
            rows = self._db.execute(
                "SELECT vm_id, name, generation, desired, stop_after FROM vms ORDER BY name"
            ).fetchall()
        return [DesiredVM(r[0], r[1], int(r[2]), str(r[3]), r[4]) for r in rows]

    def mesh(self) -> MeshConfig | None:
        with self._lock:
            row = self._db.execute("SELECT config FROM mesh WHERE id = 1").fetchone()
        if row is None or row[0] is None:
            return None
        return convert.mesh_config_from_pb(pb.MeshConfig.FromString(row[0]))

    def remember_settings(self, settings: dict[str, float]) -> None:
        """The controller's settings from a welcome (only the ones it gave: > 0)."""
        rows = [(k, float(v)) for k, v in settings.items() if v > 0]
        try:
            with self._lock:
                self._db.executemany(
                    "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", rows
                )
        except sqlite3.Error as err:  # the next start uses the config file's values
            log.error("controller settings not cached", path=str(self.path), error=str(err))

    def settings(self) -> dict[str, float]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM settings").fetchall()
        return {str(k): float(v) for k, v in rows if float(v) > 0}

    def close(self) -> None:
        with self._lock:
            self._db.close()
