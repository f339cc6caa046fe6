"""What the core asks the runner to do. Executed in order; a failed `Persist` stops the rest.

The core always puts the one `Persist` of an event first: persist, then act. A write that fails
means no command is sent, no success is replied and no timer is armed for that event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from shared.commands import Envelope
from shared.errors import NovaCronError


@dataclass(frozen=True, slots=True)
class Persist:
    """Everything one event changed in durable state, written in one transaction."""

    vms: tuple[VMRecord, ...] = ()
    forget_vms: tuple[str, ...] = ()  # VM ids whose record is removed (a tombstone replaces it)
    nodes: tuple[NodeRecord, ...] = ()
    forget_nodes: tuple[str, ...] = ()  # node ids whose record is removed (node remove)
    migrations: tuple[MigrationRecord, ...] = ()
    tombstones: tuple[Tombstone, ...] = ()
    failovers: tuple[FailoverRecord, ...] = ()
    drains: tuple[Drain, ...] = ()
    tokens: tuple[JoinToken, ...] = ()
    credentials: tuple[NodeCredential, ...] = ()
    service_tokens: tuple[ServiceToken, ...] = ()
    audit: tuple[AuditEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.vms
            or self.forget_vms
            or self.nodes
            or self.forget_nodes
            or self.migrations
            or self.tombstones
            or self.failovers
            or self.drains
            or self.tokens
            or self.credentials
            or self.service_tokens
            or self.audit
        )


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Send a command down `node_id`'s session (`session_id`: the one the core knows)."""

    node_id: str
    session_id: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the API request that had stimulus id `to`: a value, or an error."""

    to: str
    value: object = None
    error: NovaCronError | None = None


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Deliver `TimerFired(key)` at `at` (seconds, the core's clock)."""

    at: float
    key: str


@dataclass(frozen=True, slots=True)
class CloseSession:
    node_id: str
    session_id: str
    reason: str
    denied: bool = False  # the node may not connect at all (PERMISSION_DENIED, not retried)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer a hello: the session may start (after the hello's records are persisted)."""

    node_id: str
    session_id: str
    installation_id: str
    take_over: bool = False  # the operator started a new installation: adopt it


Instruction = Persist | SendCommand | Reply | ArmTimer | CloseSession | Welcome


@dataclass(slots=True)
class Outbox:
    """Collects one event's instructions; its `Persist` always comes out first."""

    vms: dict[str, VMRecord] = field(default_factory=dict)
    forget: dict[str, None] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    forget_nodes: dict[str, None] = field(default_factory=dict)
    migrations: dict[str, MigrationRecord] = field(default_factory=dict)
    tombstones: dict[str, Tombstone] = field(default_factory=dict)
    failovers: dict[str, FailoverRecord] = field(default_factory=dict)
    drains: dict[str, Drain] = field(default_factory=dict)
    tokens: dict[str, JoinToken] = field(default_factory=dict)
    credentials: dict[str, NodeCredential] = field(default_factory=dict)
    service_tokens: dict[str, ServiceToken] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    actions: list[Instruction] = field(default_factory=list)

    def instructions(self) -> list[Instruction]:
        persist = Persist(
            vms=tuple(v for k, v in self.vms.items() if k not in self.forget),
            forget_vms=tuple(self.forget),
            nodes=tuple(v for k, v in self.nodes.items() if k not in self.forget_nodes),
            forget_nodes=tuple(self.forget_nodes),
            migrations=tuple(self.migrations.values()),
            tombstones=tuple(self.tombstones.values()),
            failovers=tuple(self.failovers.values()),
            drains=tuple(self.drains.values()),
            tokens=tuple(self.tokens.values()),
            credentials=tuple(self.credentials.values()),
            service_tokens=tuple(self.service_tokens.values()),
            audit=tuple(self.audit),
        )
        return ([persist] if persist else []) + self.actions
