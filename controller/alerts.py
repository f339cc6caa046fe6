"""The controller's alert rules: a pure function of a state snapshot and `now`.

No clock, no I/O, no asyncio: what is firing is decided from facts the caller gathered
(controller/alert_runner.py does, from the view), so every rule is tested with time as an
input. `advance` turns two successive evaluations into firing/resolved changes, keeping
when each alert began (its `since`) across evaluations.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from controller.records import FailoverRecord, MigrationPhase, MigrationRecord
from shared.config import Seconds
from shared.domain import Capacity, NodeCondition
from shared.errors import ConfigError

_Job = TypeVar("_Job", MigrationRecord, FailoverRecord)


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


# every rule, with the severity it usually fires at (the metrics list each one, firing or not)
RULES: dict[str, Severity] = {
    "NodeSuspect": Severity.WARNING,
    "NodeLost": Severity.CRITICAL,
    "NodeNotReady": Severity.WARNING,
    "NodeOverCapacity": Severity.WARNING,
    "VMLatencyOverBound": Severity.WARNING,
    "MigrationFailed": Severity.WARNING,
    "FailoverFailed": Severity.CRITICAL,
    "CertificateExpiring": Severity.WARNING,
}


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """`controller.alerts`: how often the rules run and their thresholds."""

    interval: Seconds = Seconds(10.0)  # also run on every persisted change (at most this often)
    capacity_ratio: float = 0.9  # allocated / capacity (vCPUs or memory) above which it fires
    certificate_warning_days: float = 7.0  # under the renewal point (10 of 30 days left)
    failure_window: Seconds = Seconds(3600.0)  # a failed migration/failover fires this long
    events_kept: int = 1000  # the event feed's ring buffer (novacron events)
    health_probe_interval: Seconds = Seconds(5.0)  # the store's write probe (gRPC health)

    def __post_init__(self) -> None:
        where = "controller.alerts"
        if self.interval <= 0 or self.health_probe_interval <= 0:
            raise ConfigError(f"{where}: interval and health_probe_interval must be > 0")
        if not 0 < self.capacity_ratio <= 1:
            raise ConfigError(f"{where}.capacity_ratio: must be in (0, 1]")
        if self.certificate_warning_days < 0 or self.failure_window < 0:
            raise ConfigError(f"{where}: certificate_warning_days and failure_window >= 0")
        if not 10 <= self.events_kept <= 100_000:
            raise ConfigError(f"{where}.events_kept: must be in [10, 100000]")


@dataclass(frozen=True, slots=True)
class NodeFacts:
    node_id: str
    condition: NodeCondition
    reason: str
    capacity: Capacity
    allocated: Capacity
    rtt_ms: tuple[float, float, float] | None = None  # to the controller: p50, p95, p99


@dataclass(frozen=True, slots=True)
class VMFacts:
    name: str
    node_id: str
    max_latency_ms: float  # its own bound (0 = none asked for)
    percentile: int = 95


@dataclass(frozen=True, slots=True)
class CertFacts:
    subject: str  # "controller serving certificate", "node edge-a"
    not_after: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class AlertSnapshot:
    nodes: tuple[NodeFacts, ...] = ()
    vms: tuple[VMFacts, ...] = ()
    migrations: tuple[MigrationRecord, ...] = ()
    failovers: tuple[FailoverRecord, ...] = ()
    certificates: tuple[CertFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # stable while the same thing is wrong: "<name>:<subject>[:<detail>]"
    name: str
    severity: Severity
    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class FiringAlert:
    alert: Alert
    since: float


@dataclass(frozen=True, slots=True)
class Change:
    state: str  # "firing" or "resolved"
    alert: Alert
    since: float
    at: float


@dataclass(slots=True)
class _Found:
    alerts: list[Alert] = field(default_factory=list)

    def add(self, name: str, subject: str, message: str, detail: str = "", **kw: Severity) -> None:
        key = f"{name}:{subject}" + (f":{detail}" if detail else "")
        severity = kw.get("severity", RULES[name])
        self.alerts.append(Alert(key, name, severity, subject, message))


def evaluate(snapshot: AlertSnapshot, now: float, config: AlertsConfig) -> list[Alert]:
    """Every alert that fires in `snapshot` at `now`, sorted by key."""
    found = _Found()
    nodes = {n.node_id: n for n in snapshot.nodes}
    for node in snapshot.nodes:
        _node_alerts(found, node, config.capacity_ratio)
    for vm in snapshot.vms:
        _latency_alert(found, vm, nodes.get(vm.node_id))
    _migration_alerts(found, snapshot.migrations, now, config.failure_window)
    _failover_alerts(found, snapshot.failovers, now, config.failure_window)
    warning_s = config.certificate_warning_days * 86400
    for cert in snapshot.certificates:
        left = cert.not_after - now
        if left < warning_s:
            when = dt.datetime.fromtimestamp(cert.not_after, dt.UTC).strftime("%Y-%m-%d %H:%M")
            if left <= 0:
                text = f"{cert.subject} expired at {when} UTC"
                found.add("CertificateExpiring", cert.subject, text, severity=Severity.CRITICAL)
            else:
                text = f"{cert.subject} expires in {left / 86400:.1f} days ({when} UTC)"
                found.add("CertificateExpiring", cert.subject, text)
    return sorted(found.alerts, key=lambda a: a.key)


def _node_alerts(found: _Found, node: NodeFacts, ratio: float) -> None:
    subject = f"node {node.node_id}"
    if node.condition is NodeCondition.LOST:
        found.add("NodeLost", subject, f"{subject} is lost: {node.reason}")
    elif node.condition is NodeCondition.SUSPECT:
        found.add("NodeSuspect", subject, f"{subject} is suspect: {node.reason}")
    elif node.condition is NodeCondition.NOT_READY:
        found.add("NodeNotReady", subject, f"{subject} is not ready: {node.reason}")
    for resource, used, total, unit in (
        ("cpu", node.allocated.vcpus, node.capacity.vcpus, " vCPUs"),
        ("memory", node.allocated.memory_mib, node.capacity.memory_mib, " MiB"),
    ):
        if total > 0 and used / total > ratio:
            text = (
                f"{subject}: {resource} {used / total:.0%} allocated ({used}/{total}{unit}),"
                f" over {ratio:.0%}"
            )
            found.add("NodeOverCapacity", subject, text, detail=resource)


def _latency_alert(found: _Found, vm: VMFacts, node: NodeFacts | None) -> None:
    if vm.max_latency_ms <= 0 or node is None or node.rtt_ms is None:
        return
    index = {50: 0, 95: 1, 99: 2}.get(vm.percentile, 1)
    measured = node.rtt_ms[index]
    if measured > vm.max_latency_ms:
        text = (
            f"VM {vm.name}: p{vm.percentile} RTT of node {node.node_id} is {measured:.1f} ms,"
            f" over its bound of {vm.max_latency_ms:g} ms"
        )
        found.add("VMLatencyOverBound", f"vm {vm.name}", text)


def _latest_per_vm(records: Sequence[_Job]) -> list[_Job]:
    """Each VM's newest record: a later move that worked clears the failed one."""
    latest: dict[str, _Job] = {}
    for rec in records:
        seen = latest.get(rec.vm_id)
        if seen is None or rec.started_at > seen.started_at:
            latest[rec.vm_id] = rec
    return list(latest.values())


def _migration_alerts(
    found: _Found, migrations: Sequence[MigrationRecord], now: float, window: float
) -> None:
    for mig in _latest_per_vm(migrations):
        if mig.phase is MigrationPhase.FAILED and now - mig.finished_at <= window:
            text = (
                f"migration {mig.id[:8]} of VM {mig.vm_name} ({mig.source} -> {mig.target})"
                f" failed: {mig.error or 'no reason given'}"
            )
            found.add("MigrationFailed", f"vm {mig.vm_name}", text)


def _failover_alerts(
    found: _Found, failovers: Sequence[FailoverRecord], now: float, window: float
) -> None:
    for rec in _latest_per_vm(failovers):
        ended = rec.running_at or rec.started_at
        if rec.outcome == "failed" and now - ended <= window:
            text = (
                f"failover of VM {rec.vm_name} from lost node {rec.source} to {rec.target}"
                f" failed: {rec.error or 'no reason given'}"
            )
            found.add("FailoverFailed", f"vm {rec.vm_name}", text)


def advance(
    firing: Mapping[str, FiringAlert], current: Sequence[Alert], now: float
) -> tuple[dict[str, FiringAlert], list[Change]]:
    """The alerts firing after this evaluation, and what changed: new keys fire (since
    `now`), keys gone resolve. A key still firing keeps its `since` and takes the new
    message and severity without a change of its own."""
    after: dict[str, FiringAlert] = {}
    changes: list[Change] = []
    for alert in current:
        before = firing.get(alert.key)
        if before is None:
            after[alert.key] = FiringAlert(alert, now)
            changes.append(Change("firing", alert, now, now))
        else:
            after[alert.key] = FiringAlert(alert, before.since)
    for key, gone in firing.items():
        if key not in after:
            changes.append(Change("resolved", gone.alert, gone.since, now))
    return after, changes
