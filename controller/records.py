"""What the controller keeps about nodes and VMs (its desired state plus what it last observed)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shared.domain import (
    Capacity,
    DesiredState,
    ImageInfo,
    LatencyStats,
    NodeInfo,
    Utilization,
    VMSpec,
    VMState,
)
from shared.mesh import MeshIdentity, MeshStatus

# VMs in these states hold no capacity on their node.
NON_RESERVING_STATES = frozenset({VMState.FAILED})


@dataclass(frozen=True, slots=True)
class VMRecord:
    id: str
    spec: VMSpec
    node_id: str
    desired: DesiredState
    state: VMState
    generation: int
    created_at: float
    updated_at: float
    state_reason: str = ""
    request_id: str = ""
    placement_reason: str = ""
    address: str = ""  # on the VM network (CIDR /32), when its node is in the mesh
    migrating_to: str = ""  # a live migration to this node is under way (it holds capacity)

    @property
    def reserves_capacity(self) -> bool:
        return self.state not in NON_RESERVING_STATES


@dataclass(frozen=True, slots=True)
class NodeRecord:
    info: NodeInfo
    registered_at: float
    last_heartbeat: float = 0.0
    connected: bool = False
    utilization: Utilization = field(default_factory=Utilization)
    images: tuple[ImageInfo, ...] = ()
    cordoned: bool = False
    latencies: tuple[LatencyStats, ...] = ()  # as measured by the agent, latest heartbeat
    mesh: MeshIdentity | None = None  # the node's end of the mesh, from its hello
    mesh_address: str = ""  # its overlay address (IPAM), held while the node exists
    mesh_status: MeshStatus | None = None  # what its agent last reported applied

    def controller_rtt_ms(self) -> tuple[float, float, float] | None:
        """The agent's measured RTT to the controller (p50, p95, p99), if it reported one."""
        for stats in self.latencies:
            if stats.target == "controller":
                return stats.p50_ms, stats.p95_ms, stats.p99_ms
        return None

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def capacity(self) -> Capacity:
        return self.info.capacity


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    action: str
    target: str
    detail: str = ""
    actor: str = "api"
    result: str = "ok"  # or "refused: <why>"
    request_id: str = ""  # the stimulus id: every log line of the request carries it
    seq: int = 0  # its place in the log (set when read back)


class MigrationPhase(enum.StrEnum):
    """The spec's five phases (and the progress each one reaches), then how it ended."""

    PRE_CHECKS = "pre_checks"  # target chosen and asked to stage the VM
    SNAPSHOT = "snapshot"  # target staged; the source's job starts
    TRANSFER = "transfer"  # memory (and disk) moving; bytes from the source's job stats
    SWITCHOVER = "switchover"  # the VM lives on the target now (generation raised)
    CLEANUP = "cleanup"  # target routes and caps it; the source has released it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # it keeps running where it was (or, after post-copy, where it ran last)

    @property
    def progress_pct(self) -> int:
        return _PHASE_PCT[self]

    @property
    def terminal(self) -> bool:
        return self in (MigrationPhase.SUCCEEDED, MigrationPhase.FAILED)


_PHASE_PCT = {
    MigrationPhase.PRE_CHECKS: 10,
    MigrationPhase.SNAPSHOT: 30,
    MigrationPhase.TRANSFER: 70,
    MigrationPhase.SWITCHOVER: 90,
    MigrationPhase.CLEANUP: 100,
    MigrationPhase.SUCCEEDED: 100,
    MigrationPhase.FAILED: 100,
}


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    """One migration job, persisted before each step that acts on it, so a restarted
    controller knows where it was."""

    id: str
    vm_id: str
    vm_name: str
    source: str
    target: str
    phase: MigrationPhase
    from_generation: int  # the VM's generation on the source
    to_generation: int  # the generation it has once it lives on the target
    mode: str = "live"  # "live" (pre-copy) or "postcopy"
    reason: str = ""  # why this target ("requested", or the placement's one line)
    priority: int = 0
    max_downtime_ms: int = 0
    bandwidth_mbit: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0
    bytes_remaining: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    switched_at: float = 0.0  # when the VM started living on the target (0 = it has not)
    phase_times: tuple[tuple[str, float], ...] = ()  # (phase, entered at), in order
    downtime_ms: float = 0.0
    elapsed_ms: float = 0.0  # the libvirt job's own time
    error: str = ""
    error_code: str = ""  # the gRPC status code name of `error`
    stimulus_id: str = ""  # the request that started it
    timeout_s: float = 0.0  # how long the source may take (0 = the deploy timeout)
    stays_stopped: bool = False  # a stopped VM's cold move: it lands defined, not started

    @property
    def active(self) -> bool:
        return not self.phase.terminal

    @property
    def arrived(self) -> bool:
        """The one fact that decides where the VM lives: it switched over to the target."""
        return self.switched_at > 0

    @property
    def offline(self) -> bool:
        """Cold or snapshot: the guest stops while it moves (controller.core.offline_migration)."""
        return self.mode in OFFLINE_MODES


OFFLINE_MODES = ("cold", "snapshot")


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A deleted VM, remembered long enough to outlive any partition: a node that comes back
    with a copy of it is told to destroy that copy instead of the VM being shown as an orphan."""

    vm_id: str
    name: str
    generation: int
    deleted_at: float


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    """One VM recreated elsewhere because its node was lost: where from and to, why, and when
    (the node was last heard from, declared lost, the VM re-placed, the target ran it)."""

    id: str
    vm_id: str
    vm_name: str
    source: str  # the lost node
    target: str
    reason: str  # "node lost: ..." or "operator: the node is dead"
    from_generation: int
    to_generation: int
    last_heard_at: float  # the lost node, last heard from
    lost_at: float  # declared lost (or dead)
    started_at: float  # re-placed: the new generation recorded
    running_at: float = 0.0  # the target reported it running
    outcome: str = ""  # "" while under way, "running" or "failed"
    error: str = ""

    @property
    def active(self) -> bool:
        return not self.outcome


@dataclass(frozen=True, slots=True)
class Drain:
    """A node's drain (controller/core/drain.py): its plan and progress, stored with the
    node's other records so that a controller restart goes on with it."""

    node_id: str
    started_at: float
    parallel: int
    queued: tuple[str, ...] = ()  # VM ids still to move
    active: tuple[tuple[str, str], ...] = ()  # (VM id, migration id) under way
    moved: tuple[tuple[str, str], ...] = ()  # (VM name, to node)
    failed: tuple[tuple[str, str], ...] = ()  # (VM name, why): could not move, or failed
    finished_at: float = 0.0
    cold: bool = False  # cold migrations (the guests reboot on their new node)

    @property
    def done(self) -> bool:
        return not self.queued and not self.active


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A join token (kubeadm's model): `<id>.<secret>`; only the secret's SHA-256 is kept."""

    id: str
    secret_hash: str
    node_id: str  # "" = any node id not enrolled yet
    uses_left: int
    expires_at: float
    created_at: float
    created_by: str
    revoked: bool = False
    description: str = ""

    def usable(self, now: float) -> bool:
        return not self.revoked and self.uses_left > 0 and now < self.expires_at


@dataclass(frozen=True, slots=True)
class NodeCredential:
    """A node's standing with the CA. Its certificates carry `epoch`; one of an older epoch
    (before a revocation or a re-enrolment) is refused, as is every one while `revoked`."""

    node_id: str
    epoch: int
    enrolled_at: float
    token_id: str
    revoked: bool = False
    expires_at: float = 0.0  # the newest certificate issued to it (0: none since schema 7)

    def accepts(self, epoch: int) -> bool:
        return not self.revoked and epoch == self.epoch


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """A bearer token of one role (`ncs.<id>.<secret>`); only the secret's SHA-256 is kept."""

    id: str
    secret_hash: str
    name: str
    role: str  # viewer, operator, admin
    expires_at: float
    created_at: float
    created_by: str
    revoked: bool = False

    def usable(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at
