"""The controller's metrics over a hand-driven core: the fleet's gauges (conditions,
heartbeat lag, capacity, streams), placement decisions timed by the engine, and migrations
and failovers observed once when their records end. Linted by promtool."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.core import events as ev
from controller.core.instructions import Persist
from controller.metrics import ControllerCollector, _Histograms
from controller.metrics_records import Observations, TimedEngine
from controller.records import FailoverRecord, MigrationPhase, MigrationRecord
from shared.domain import VMSpec
from tests.metrics_check import promtool_check, samples, value
from tests.unit.core_driver import Driver
from tests.unit.metrics_fixtures import FakeRunner, exposition, observations_text


def scrape(runner: FakeRunner, observations: Observations) -> str:
    fleet = ControllerCollector(runner)  # type: ignore[arg-type]
    return exposition(fleet, _Histograms(runner, observations))  # type: ignore[arg-type]


def test_fleet_gauges_and_placement_decisions() -> None:
    d = Driver()
    d.core.engine = TimedEngine()  # as controller/server.py builds it
    runner = FakeRunner(d, sessions_opened=3, open_sessions=2)
    d.hello("edge-a")
    d.hello("edge-b")
    d.heartbeat("edge-a")
    d.deploy("web-1", "edge-a")
    d.now += 2.5
    text = scrape(runner, Observations())
    promtool_check(text)
    assert value(text, "novacron_nodes", condition="ready") == 2.0
    assert value(text, "novacron_nodes", condition="lost") == 0.0  # every condition, always
    assert value(text, "novacron_node_condition", node="edge-a", condition="ready") == 1.0
    assert value(text, "novacron_node_condition", node="edge-a", condition="suspect") == 0.0
    assert value(text, "novacron_node_heartbeat_age_seconds", node="edge-a") == 2.5
    assert value(text, "novacron_vms", state="running") == 1.0
    assert value(text, "novacron_node_allocated_vcpus", node="edge-a") == 1.0
    assert value(text, "novacron_node_allocated_memory_bytes", node="edge-a") == 128 * 2**20
    assert value(text, "novacron_node_memory_bytes", node="edge-b") == 1024 * 2**20
    assert value(text, "novacron_agent_streams") == 2.0
    assert value(text, "novacron_agent_streams_opened_total") == 3.0
    assert value(text, "novacron_placement_decision_seconds_count") == 1.0  # the deploy
    assert (value(text, "novacron_placement_decision_seconds_sum") or 0) > 0
    assert value(text, "novacron_migrations_active", phase="transfer") == 0.0
    assert value(text, "novacron_batch_placement_seconds_count") == 0.0


def test_a_batch_deploy_is_timed_as_one_plan() -> None:
    d = Driver()
    d.core.engine = TimedEngine()
    runner = FakeRunner(d, sessions_opened=1, open_sessions=1)
    d.hello("edge-a")
    specs = tuple(VMSpec(f"web-{i}", "tiny", 1, 128) for i in range(3))
    d.feed(ev.DeployManyRequested, specs=specs, stimulus_id="batch")
    text = scrape(runner, Observations())
    promtool_check(text)
    assert value(text, "novacron_batch_placement_seconds_count") == 1.0  # one plan, 3 VMs
    assert (value(text, "novacron_batch_placement_seconds_sum") or 0) > 0
    assert value(text, "novacron_placement_decision_seconds_count") == 0.0  # not per VM


def migration(phase: MigrationPhase, **kw: Any) -> MigrationRecord:
    base = MigrationRecord(
        id="m1",
        vm_id="v1",
        vm_name="web-1",
        source="edge-a",
        target="edge-b",
        phase=phase,
        from_generation=1,
        to_generation=2,
        started_at=100.0,
    )
    return replace(base, **kw)


def failover(outcome: str, fid: str = "f1", running_at: float = 0.0) -> FailoverRecord:
    return FailoverRecord(
        id=fid,
        vm_id="v1",
        vm_name="web-1",
        source="edge-a",
        target="edge-b",
        reason="node lost",
        from_generation=1,
        to_generation=2,
        last_heard_at=50.0,
        lost_at=60.0,
        started_at=61.0,
        running_at=running_at,
        outcome=outcome,
    )


def test_a_migration_is_observed_once_when_it_ends() -> None:
    obs = Observations()
    obs.persisted(Persist(migrations=(migration(MigrationPhase.TRANSFER),)))
    assert _count(obs, "novacron_migration_duration_seconds_count") == 0
    done = migration(
        MigrationPhase.SUCCEEDED, finished_at=104.5, downtime_ms=120.0, switched_at=104.0
    )
    obs.persisted(Persist(migrations=(done,)))
    obs.persisted(Persist(migrations=(done,)))  # persisted again (settled after a restart)
    text = _text(obs)
    promtool_check(text)
    labels = {"mode": "live", "outcome": "succeeded"}
    assert value(text, "novacron_migration_duration_seconds_count", **labels) == 1.0
    assert value(text, "novacron_migration_duration_seconds_sum", **labels) == 4.5
    assert value(text, "novacron_migration_downtime_seconds_sum", mode="live") == 0.12

    failed = replace(migration(MigrationPhase.FAILED, finished_at=130.0), id="m2")
    obs.persisted(Persist(migrations=(failed,)))
    text = _text(obs)
    assert value(text, "novacron_migration_duration_seconds_sum", outcome="failed") == 30.0
    assert value(text, "novacron_migration_downtime_seconds_count", mode="live") == 1.0


def test_jobs_that_ended_before_the_metrics_started_are_not_counted() -> None:
    obs = Observations()
    old = migration(MigrationPhase.SUCCEEDED, finished_at=104.0)
    obs.already_finished([old], [failover("running", running_at=70.0)])
    obs.persisted(Persist(migrations=(old,), failovers=(failover("running", running_at=70.0),)))
    assert _count(obs, "novacron_migration_duration_seconds_count") == 0
    assert _count(obs, "novacron_failover_duration_seconds_count") == 0


def test_failovers_durations_downtimes_and_outcomes() -> None:
    obs = Observations()
    obs.persisted(Persist(failovers=(failover(""),)))  # under way: nothing yet
    obs.persisted(Persist(failovers=(failover("running", running_at=75.0),)))
    obs.persisted(Persist(failovers=(failover("failed", fid="f2"),)))
    text = _text(obs)
    promtool_check(text)
    assert value(text, "novacron_failover_duration_seconds_sum") == 15.0  # lost -> running
    assert value(text, "novacron_failover_downtime_seconds_sum") == 25.0  # last heard -> running
    assert value(text, "novacron_failovers_finished_total", outcome="running") == 1.0
    assert value(text, "novacron_failovers_finished_total", outcome="failed") == 1.0


_text = observations_text


def _count(obs: Observations, name: str) -> float:
    return sum(v for _, v in samples(_text(obs)).get(name, []))
