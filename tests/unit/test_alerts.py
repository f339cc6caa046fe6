"""The alert rules (controller/alerts.py): each fires on its facts and resolves when they go,
with time an input; `advance` keeps `since` and reports only changes."""

from __future__ import annotations

import dataclasses

import pytest

from controller.alerts import (
    RULES,
    AlertsConfig,
    AlertSnapshot,
    CertFacts,
    FiringAlert,
    NodeFacts,
    Severity,
    VMFacts,
    advance,
    evaluate,
)
from controller.records import FailoverRecord, MigrationPhase, MigrationRecord
from shared.domain import Capacity, NodeCondition
from shared.errors import ConfigError

T0 = 1_800_000_000.0
NONE = Capacity()
DAY = 86400.0
CONFIG = AlertsConfig()


def node(
    node_id: str = "edge-a",
    condition: NodeCondition = NodeCondition.READY,
    allocated: Capacity = NONE,
    rtt: tuple[float, float, float] | None = None,
) -> NodeFacts:
    return NodeFacts(node_id, condition, "why", Capacity(10, 1000, 100), allocated, rtt)


def migration(phase: MigrationPhase, started: float, finished: float = 0.0) -> MigrationRecord:
    return MigrationRecord(
        id=f"mig-{started:.0f}",
        vm_id="vm-1",
        vm_name="web",
        source="edge-a",
        target="edge-b",
        phase=phase,
        from_generation=1,
        to_generation=2,
        started_at=started,
        finished_at=finished,
        error="target refused" if phase is MigrationPhase.FAILED else "",
    )


def failover(outcome: str, started: float) -> FailoverRecord:
    return FailoverRecord(
        id=f"fo-{started:.0f}",
        vm_id="vm-1",
        vm_name="web",
        source="edge-a",
        target="edge-b",
        reason="node lost",
        from_generation=1,
        to_generation=2,
        last_heard_at=started - 30,
        lost_at=started - 5,
        started_at=started,
        outcome=outcome,
        error="no image" if outcome == "failed" else "",
    )


def names(snapshot: AlertSnapshot, now: float = T0) -> dict[str, str]:
    return {a.key: a.name for a in evaluate(snapshot, now, CONFIG)}


def test_a_quiet_fleet_fires_nothing() -> None:
    assert evaluate(AlertSnapshot(nodes=(node(),)), T0, CONFIG) == []


@pytest.mark.parametrize(
    ("condition", "name", "severity"),
    [
        (NodeCondition.SUSPECT, "NodeSuspect", Severity.WARNING),
        (NodeCondition.LOST, "NodeLost", Severity.CRITICAL),
        (NodeCondition.NOT_READY, "NodeNotReady", Severity.WARNING),
    ],
)
def test_node_conditions_fire_and_resolve(
    condition: NodeCondition, name: str, severity: Severity
) -> None:
    [alert] = evaluate(AlertSnapshot(nodes=(node(condition=condition),)), T0, CONFIG)
    assert (alert.name, alert.severity, alert.key) == (name, severity, f"{name}:node edge-a")
    assert "why" in alert.message
    assert evaluate(AlertSnapshot(nodes=(node(),)), T0 + 1, CONFIG) == []


def test_over_capacity_is_per_resource_and_strictly_over_the_ratio() -> None:
    at_90 = node(allocated=Capacity(9, 900))
    assert names(AlertSnapshot(nodes=(at_90,))) == {}
    cpu = node(allocated=Capacity(10, 100))
    both = node(allocated=Capacity(10, 950))
    assert names(AlertSnapshot(nodes=(cpu,))) == {
        "NodeOverCapacity:node edge-a:cpu": "NodeOverCapacity"
    }
    found = evaluate(AlertSnapshot(nodes=(both,)), T0, CONFIG)
    assert [a.key for a in found] == [
        "NodeOverCapacity:node edge-a:cpu",
        "NodeOverCapacity:node edge-a:memory",
    ]
    assert "memory 95% allocated (950/1000 MiB)" in found[1].message
    lower = dataclasses.replace(CONFIG, capacity_ratio=0.5)
    assert len(evaluate(AlertSnapshot(nodes=(node(allocated=Capacity(6, 0)),)), T0, lower)) == 1


def test_a_node_without_capacity_never_counts_as_full() -> None:
    empty = NodeFacts("gw", NodeCondition.READY, "", Capacity(), Capacity(1, 1), None)
    assert evaluate(AlertSnapshot(nodes=(empty,)), T0, CONFIG) == []


def test_vm_latency_over_its_bound_at_its_percentile() -> None:
    slow = node(rtt=(20.0, 60.0, 90.0))
    p95 = VMFacts("web", "edge-a", 50.0, 95)
    [alert] = evaluate(AlertSnapshot(nodes=(slow,), vms=(p95,)), T0, CONFIG)
    assert alert.key == "VMLatencyOverBound:vm web"
    assert "p95 RTT of node edge-a is 60.0 ms, over its bound of 50 ms" in alert.message
    p50 = VMFacts("web", "edge-a", 50.0, 50)
    assert evaluate(AlertSnapshot(nodes=(slow,), vms=(p50,)), T0, CONFIG) == []
    fast = node(rtt=(5.0, 10.0, 20.0))  # the node's RTT improved: resolved
    assert evaluate(AlertSnapshot(nodes=(fast,), vms=(p95,)), T0, CONFIG) == []


def test_vm_latency_needs_a_bound_and_a_measurement() -> None:
    unbounded = VMFacts("web", "edge-a", 0.0)
    bounded = VMFacts("web", "edge-a", 1.0)
    assert (
        evaluate(AlertSnapshot(nodes=(node(rtt=(99, 99, 99)),), vms=(unbounded,)), T0, CONFIG) == []
    )
    assert evaluate(AlertSnapshot(nodes=(node(),), vms=(bounded,)), T0, CONFIG) == []
    assert evaluate(AlertSnapshot(vms=(bounded,)), T0, CONFIG) == []  # node gone


def test_a_failed_migration_fires_for_the_window_or_until_a_later_one_succeeds() -> None:
    failed = migration(MigrationPhase.FAILED, T0 - 100, T0 - 90)
    [alert] = evaluate(AlertSnapshot(migrations=(failed,)), T0, CONFIG)
    assert alert.name == "MigrationFailed" and "target refused" in alert.message
    assert "(edge-a -> edge-b)" in alert.message
    later = T0 - 90 + CONFIG.failure_window + 1
    assert evaluate(AlertSnapshot(migrations=(failed,)), later, CONFIG) == []
    again = migration(MigrationPhase.SUCCEEDED, T0 - 50, T0 - 40)
    assert evaluate(AlertSnapshot(migrations=(failed, again)), T0, CONFIG) == []
    running = migration(MigrationPhase.TRANSFER, T0 - 50)
    assert evaluate(AlertSnapshot(migrations=(again, running)), T0, CONFIG) == []


def test_a_failed_failover_is_critical_and_resolved_by_a_later_success() -> None:
    failed = failover("failed", T0 - 10)
    [alert] = evaluate(AlertSnapshot(failovers=(failed,)), T0, CONFIG)
    assert (alert.name, alert.severity) == ("FailoverFailed", Severity.CRITICAL)
    assert "no image" in alert.message
    ok = failover("running", T0 - 5)
    assert evaluate(AlertSnapshot(failovers=(failed, ok)), T0, CONFIG) == []
    assert evaluate(AlertSnapshot(failovers=(failed,)), T0 + 2 * 3600, CONFIG) == []


def test_certificates_warn_within_the_days_and_are_critical_once_expired() -> None:
    cert = CertFacts("controller serving certificate", T0 + 5 * DAY)
    assert evaluate(AlertSnapshot(certificates=(cert,)), T0 - 21 * DAY, CONFIG) == []
    [soon] = evaluate(AlertSnapshot(certificates=(cert,)), T0, CONFIG)
    assert soon.severity is Severity.WARNING and "expires in 5.0 days" in soon.message
    [gone] = evaluate(AlertSnapshot(certificates=(cert,)), T0 + 6 * DAY, CONFIG)
    assert gone.severity is Severity.CRITICAL and "expired at" in gone.message
    assert soon.key == gone.key == "CertificateExpiring:controller serving certificate"
    renewed = CertFacts(cert.subject, T0 + 365 * DAY)
    assert evaluate(AlertSnapshot(certificates=(renewed,)), T0 + 6 * DAY, CONFIG) == []


def test_every_listed_rule_can_fire() -> None:
    snapshot = AlertSnapshot(
        nodes=(
            node("a", NodeCondition.SUSPECT),
            node("b", NodeCondition.LOST),
            node("c", NodeCondition.NOT_READY),
            node("d", allocated=Capacity(10, 0), rtt=(100, 100, 100)),
        ),
        vms=(VMFacts("web", "d", 10.0),),
        migrations=(migration(MigrationPhase.FAILED, T0, T0),),
        failovers=(failover("failed", T0),),
        certificates=(CertFacts("x", T0),),
    )
    fired = {a.name for a in evaluate(snapshot, T0, CONFIG)}
    assert fired == set(RULES)


def test_advance_fires_new_keys_keeps_since_and_resolves_gone_ones() -> None:
    lost = AlertSnapshot(nodes=(node(condition=NodeCondition.SUSPECT),))
    firing, changes = advance({}, evaluate(lost, T0, CONFIG), T0)
    assert [(c.state, c.alert.name, c.since) for c in changes] == [("firing", "NodeSuspect", T0)]
    worse = dataclasses.replace(
        lost, nodes=(node(condition=NodeCondition.SUSPECT, allocated=Capacity(10)),)
    )
    firing, changes = advance(firing, evaluate(worse, T0 + 5, CONFIG), T0 + 5)
    assert [c.alert.name for c in changes] == ["NodeOverCapacity"]
    assert firing["NodeSuspect:node edge-a"].since == T0  # still firing: no change, same since
    firing, changes = advance(firing, [], T0 + 9)
    assert sorted((c.state, c.alert.name, c.since, c.at) for c in changes) == [
        ("resolved", "NodeOverCapacity", T0 + 5, T0 + 9),
        ("resolved", "NodeSuspect", T0, T0 + 9),
    ]
    assert firing == {}


def test_advance_takes_a_new_message_without_a_change() -> None:
    cert = CertFacts("ca", T0 + DAY)
    before = {
        a.key: FiringAlert(a, T0 - 50)
        for a in evaluate(AlertSnapshot(certificates=(cert,)), T0 - 10, CONFIG)
    }
    after, changes = advance(
        before, evaluate(AlertSnapshot(certificates=(cert,)), T0 + 2 * DAY, CONFIG), T0 + 2 * DAY
    )
    assert changes == []
    [kept] = after.values()
    assert kept.since == T0 - 50 and kept.alert.severity is Severity.CRITICAL


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"interval": 0}, "interval and health_probe_interval must be > 0"),
        ({"capacity_ratio": 1.5}, "capacity_ratio: must be in (0, 1]"),
        ({"certificate_warning_days": -1}, "certificate_warning_days"),
        ({"events_kept": 5}, "events_kept: must be in [10, 100000]"),
    ],
)
def test_bad_alert_settings_are_refused_naming_the_key(
    fields: dict[str, float], named: str
) -> None:
    with pytest.raises(ConfigError, match=r"controller\.alerts") as refused:
        AlertsConfig(**fields)  # type: ignore[arg-type]
    assert named in str(refused.value)
