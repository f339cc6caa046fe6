"""What happens to the controller, as frozen values: API requests, agent traffic, timers.

Every event carries `stimulus_id` (the id every change it causes is logged with) and `now`
(the only clock the core knows). API requests are answered by a `Reply` to their stimulus id.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.commands import CommandResult, MigrationProgress
from shared.domain import ImageInfo, LatencyStats, NodeInfo, Utilization, VMSpec, VMStatus
from shared.errors import NovaCronError
from shared.mesh import MeshIdentity, MeshStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    stimulus_id: str
    now: float
    actor: str = ""  # who asked (the caller's certificate identity): what the audit records


# ---------------------------------------------------------------- API requests (each replied)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenCreateRequested(Event):
    """A join token; the runner drew its id and secret, the core sees the secret's hash."""

    token_id: str
    secret_hash: str
    node_id: str = ""
    uses: int = 1
    ttl: float = 3600.0
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRevokeRequested(Event):
    token_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrolRequested(Event):
    """An agent presents a join token: replied with the node's credential (its epoch goes
    into the certificate the API then signs), or refused."""

    token_id: str
    secret_hash: str
    node_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateIssued(Event):
    """The API signed a certificate for a node (its enrolment, or a renewal) and hands it out
    once this is replied: the expiry is kept with the node's credential, a renewal audited.
    Refused if the node's standing changed meanwhile (revoked, enrolled again)."""

    node_id: str
    epoch: int
    not_after: float
    renewal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRevokeRequested(Event):
    node_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceTokenCreateRequested(Event):
    token_id: str
    secret_hash: str
    name: str
    role: str
    ttl: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceTokenRevokeRequested(Event):
    token_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRemoveRequested(Event):
    node_id: str
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityRefused(Event):
    """A caller was refused for who it is or claims to be: only audited (then replied)."""

    action: str
    target: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployRequested(Event):
    spec: VMSpec
    request_id: str = ""
    timeout: float = 0.0  # 0 = the configured deploy timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployManyRequested(Event):
    specs: tuple[VMSpec, ...]
    request_id: str = ""
    timeout: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRequested(Event):
    name_or_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerRequested(Event):
    name_or_id: str
    paused: bool  # True: suspend; False: resume


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleRequested(Event):
    name_or_id: str
    max_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrateRequested(Event):
    name_or_id: str
    target: str = ""
    bandwidth_mbit: int = 0
    max_downtime_ms: int = 0
    timeout: float = 0.0
    postcopy: bool = False
    reason: str = ""
    priority: int = 0
    mode: str = "live"  # or "cold" / "snapshot" (controller.core.offline_migration)


@dataclass(frozen=True, slots=True, kw_only=True)
class CordonRequested(Event):
    node_id: str
    cordoned: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FailOverRequested(Event):
    """HandleEdgeFailure: replace a node's VMs now; `node_is_dead` vouches that the node is
    powered off, so its copies count as stopped."""

    node_id: str
    node_is_dead: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainRequested(Event):
    """DrainNode: cordon the node and live-migrate its VMs off, `parallel` at a time."""

    node_id: str
    parallel: int = 1
    cold: bool = False  # cold migrations instead of live ones


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateKeyRequested(Event):
    node_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptRequested(Event):
    """Take an orphan (a VM a node runs that the controller has no record of) under management."""

    node_id: str
    vm_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteOrphanRequested(Event):
    node_id: str
    vm_id: str


# ---------------------------------------------------------------- agent sessions


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHello(Event):
    node_id: str
    session_id: str
    info: NodeInfo
    images: tuple[ImageInfo, ...] = ()
    vms: tuple[VMStatus, ...] = ()
    mesh: MeshIdentity | None = None
    known_installation_id: str = ""
    hypervisor_problem: str = ""  # set: `vms` says nothing (libvirtd unreachable)
    epoch: int = -1  # the epoch of the node's certificate; -1: --insecure, nothing to check


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHeartbeat(Event):
    node_id: str
    session_id: str
    utilization: Utilization
    latencies: tuple[LatencyStats, ...] = ()
    mesh: MeshStatus | None = None
    vms: tuple[VMStatus, ...] = ()
    hypervisor_problem: str = ""  # set: `vms` says nothing (libvirtd unreachable)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentVMStatus(Event):
    """A lifecycle event: the VM's state on that node changed."""

    node_id: str
    session_id: str
    status: VMStatus
    lifecycle: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentResult(Event):
    node_id: str
    session_id: str
    result: CommandResult


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentProgress(Event):
    node_id: str
    session_id: str
    progress: MigrationProgress


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentContactConfirmed(Event):
    """The agent asked after its session on a connection of its own (ConfirmContact): it is
    alive and reaches the controller, though its session's heartbeats may be stuck in TCP.
    Replied: True if it counted as contact (the agent may then count from its send time)."""

    node_id: str
    session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentDisconnected(Event):
    node_id: str
    session_id: str
    reason: str = "disconnected"


# ---------------------------------------------------------------- time and the runner


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    """Periodic: liveness (close silent sessions)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Event):
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandUndeliverable(Event):
    """The runner could not hand a command to the node's session (it had just closed)."""

    node_id: str
    command_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistFailed(Event):
    """The `Persist` of the event `failed_stimulus_id` was not written: the core has already
    rolled that event back; it answers whoever waits on it."""

    failed: Event
    error: NovaCronError


@dataclass(frozen=True, slots=True, kw_only=True)
class Started(Event):
    """The runner loaded the store: resume what the records say was under way."""


__all__ = [
    "AdoptRequested",
    "AgentContactConfirmed",
    "AgentDisconnected",
    "AgentHeartbeat",
    "AgentHello",
    "AgentProgress",
    "AgentResult",
    "AgentVMStatus",
    "CertificateIssued",
    "CommandUndeliverable",
    "ConsoleRequested",
    "CordonRequested",
    "DeleteOrphanRequested",
    "DeleteRequested",
    "DeployManyRequested",
    "DeployRequested",
    "EnrolRequested",
    "Event",
    "IdentityRefused",
    "MigrateRequested",
    "NodeRemoveRequested",
    "NodeRevokeRequested",
    "PersistFailed",
    "PowerRequested",
    "RotateKeyRequested",
    "ServiceTokenCreateRequested",
    "ServiceTokenRevokeRequested",
    "Started",
    "Tick",
    "TimerFired",
    "TokenCreateRequested",
    "TokenRevokeRequested",
]
