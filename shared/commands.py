"""The commands a controller sends an agent, and their results, as typed domain objects.

Both sides speak these; `shared.convert` is the one place they become protobuf
(`envelope_to_pb`/`envelope_from_pb`, `result_to_pb`/`result_from_pb`,
`migration_progress_to_pb`/`migration_progress_from_pb`). An error crosses the wire
as one `CommandError` (a gRPC status code name and a message); `CommandError.to_exception()`
and `CommandError.of()` are the only mapping between it and the `shared.errors` hierarchy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.domain import VMSpec, VMStatus
from shared.errors import Internal, NovaCronError, error_from_code
from shared.mesh import MeshConfig, MeshStatus


class PowerAction(enum.StrEnum):
    SUSPEND = "suspend"
    RESUME = "resume"
    START = "start"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class CreateVM:
    """Create and start (or start paused) a VM at `generation` on this node."""

    vm_id: str
    spec: VMSpec
    generation: int
    start_paused: bool = False
    address: str = ""  # its VM-network address (CIDR /32), "" = no NIC
    gateway: str = ""  # the anycast gateway every site's VM bridge answers on


@dataclass(frozen=True, slots=True)
class DeleteVM:
    """Destroy the VM and its files. `generation` 0 = whatever copy this node holds."""

    vm_id: str
    name: str
    generation: int = 0
    address: str = ""  # so the node withdraws its local route


@dataclass(frozen=True, slots=True)
class ChangePower:
    vm_id: str
    name: str
    generation: int
    action: PowerAction


@dataclass(frozen=True, slots=True)
class ReadConsole:
    vm_id: str
    name: str
    max_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class ApplyMesh:
    config: MeshConfig


@dataclass(frozen=True, slots=True)
class RotateKey:
    pass


@dataclass(frozen=True, slots=True)
class MigrationTarget:
    """Where a live migration goes: the destination's libvirtd (the source's libvirtd opens a
    peer-to-peer control connection to it), the destination's migration data address, and the
    destination's own paths for the files the domain references (the source rewrites its
    domain XML with them, since every node keeps VMs under its own state directory)."""

    libvirt_uri: str  # e.g. qemu+tcp://10.213.0.3/system
    data_uri: str  # e.g. tcp://10.213.0.3
    kernel: str = ""
    initrd: str = ""
    disk: str = ""
    console_log: str = ""
    listen_address: str = ""  # where the destination's QEMU listens ("" = qemu.conf's)


@dataclass(frozen=True, slots=True)
class MigrationStats:
    """A finished migration as libvirt measured it (the destination's completed job)."""

    elapsed_ms: float
    downtime_ms: float
    memory_bytes: int  # guest memory transferred


@dataclass(frozen=True, slots=True)
class PrepareMigration:
    """On the destination: stage the VM's media and network (no domain yet)."""

    vm_id: str
    spec: VMSpec
    generation: int  # the generation the VM will have once it lives here
    address: str = ""
    gateway: str = ""


@dataclass(frozen=True, slots=True)
class Migrate:
    """On the source: send the VM to the destination; returns once it runs there. The copy
    that arrives carries `generation` (the source's own copy keeps the older one)."""

    vm_id: str
    name: str
    target: MigrationTarget
    generation: int
    migration_id: str = ""  # progress reports name it
    bandwidth_mbit: int = 0  # 0 = no cap
    max_downtime_ms: int = 0  # 0 = libvirt's default
    address: str = ""  # its VM-network address: the source withdraws its local route
    postcopy: bool = False
    # "live"; or "cold" / "snapshot": the guest stops (shut down / saved) and its files go
    # into the target's staged directory; the call returns then, before the target runs it
    mode: str = "live"
    shutdown_timeout_s: float = 0.0  # cold: ACPI shutdown this long, then forced (0 = 30 s)
    # live pre-copy: its pause allowed is raised step by step within this, then it is
    # aborted (0 = unbounded); the controller leaves a margin before its own deadline
    time_budget_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FinishMigration:
    """On the destination once the VM runs there: its route, its cap, the job's figures."""

    vm_id: str
    spec: VMSpec
    generation: int
    address: str = ""
    gateway: str = ""


@dataclass(frozen=True, slots=True)
class LandMigration:
    """On the destination of a cold or snapshot migration, once the source's files are in:
    define the VM and run it (restored from its save file, or booted)."""

    vm_id: str
    spec: VMSpec
    generation: int
    address: str = ""
    gateway: str = ""
    stay_stopped: bool = False  # a stopped VM's cold move: defined there, not started


AgentCommand = (
    CreateVM
    | DeleteVM
    | ChangePower
    | ReadConsole
    | ApplyMesh
    | RotateKey
    | PrepareMigration
    | Migrate
    | FinishMigration
    | LandMigration
)


def command_vm_id(command: AgentCommand) -> str:
    """The VM a command is about ("" for node-wide commands): commands for one VM run in
    order on the agent."""
    return getattr(command, "vm_id", "")


def command_name(command: AgentCommand) -> str:
    """A short name for logs and messages, e.g. "create" or "suspend"."""
    if isinstance(command, ChangePower):
        return command.action.value
    return _NAMES[type(command)]


_NAMES: dict[type, str] = {
    CreateVM: "create",
    DeleteVM: "delete",
    ReadConsole: "read_console",
    ApplyMesh: "mesh_config",
    RotateKey: "rotate_key",
    PrepareMigration: "prepare_migration",
    Migrate: "migrate",
    FinishMigration: "finish_migration",
    LandMigration: "land_migration",
}


@dataclass(frozen=True, slots=True)
class CommandError:
    code: str  # a gRPC status code name, e.g. "FAILED_PRECONDITION"
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> CommandError:
        if isinstance(exc, NovaCronError):
            return cls(exc.code, str(exc))
        return cls(Internal.code, f"agent error: {exc}")

    def to_exception(self, context: str = "") -> NovaCronError:
        return error_from_code(self.code, f"{context}: {self.message}" if context else self.message)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What an agent answers. `vm` is the VM as the node holds it after the command (also when
    the command was refused as stale: then it says which generation the node holds)."""

    command_id: str
    error: CommandError | None = None
    vm: VMStatus | None = None
    console: str = ""
    mesh: MeshStatus | None = None
    migration_target: MigrationTarget | None = None
    migration_stats: MigrationStats | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A command with its idempotency key and its absolute deadline (seconds since the epoch)."""

    id: str
    deadline: float
    command: AgentCommand


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """The source's libvirt job as it runs (`virDomainGetJobStats`), sent while migrating."""

    vm_id: str
    migration_id: str
    data_total: int
    data_processed: int
    data_remaining: int
    memory_dirty_rate: int = 0  # bytes/s
    postcopy: bool = False  # the guest already runs on the destination
