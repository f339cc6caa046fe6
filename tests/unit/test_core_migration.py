"""Every transition of the migration state machine, and every failure point: the target
refuses, the source fails or dies before or after the switchover, the controller restarts in
each phase. The core alone, driven by hand (tests/unit/core_driver.py)."""

from __future__ import annotations

import pytest

from controller.core import MigrationReport
from controller.core import events as ev
from controller.records import MigrationPhase
from shared import commands as c
from shared.domain import VMState
from shared.errors import DeadlineExceeded, FailedPrecondition, Internal, Unavailable
from tests.unit.core_driver import Driver, status

P = MigrationPhase
TARGET = c.MigrationTarget("qemu+tcp://n2/system", "tcp://n2")


@pytest.fixture
def d() -> Driver:
    driver = Driver()
    driver.hello("n1")
    driver.hello("n2")
    return driver


def start(d: Driver, vm_id: str, postcopy: bool = False) -> None:
    d.feed(ev.MigrateRequested, name_or_id=vm_id, target="n2", postcopy=postcopy, stimulus_id="mig")


def to_snapshot(d: Driver, vm_id: str) -> c.Migrate:
    start(d, vm_id)
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    cmd = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(cmd, c.Migrate)
    return cmd


def progress(d: Driver, vm_id: str, mig_id: str, remaining: int) -> None:
    d.feed(
        ev.AgentProgress,
        node_id="n1",
        session_id=d.sessions["n1"],
        progress=c.MigrationProgress(vm_id, mig_id, 1000, 1000 - remaining, remaining),
    )


def test_a_live_migration_goes_through_the_five_phases_in_order(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id)
    mig = d.migration(vm.id)
    assert (mig.phase, mig.from_generation, mig.to_generation) == (P.PRE_CHECKS, 1, 2)
    assert d.stored_migration(mig.id).phase is P.PRE_CHECKS  # persisted before prepare went out
    prepare = d.sent(c.PrepareMigration, "n2")
    assert isinstance(prepare.envelope.command, c.PrepareMigration)
    assert prepare.envelope.command.generation == 2
    assert d.vm(vm.id).migrating_to == "n2"  # capacity held on both nodes
    assert d.core.state.allocated("n2").memory_mib == 128

    d.answer(prepare, migration_target=TARGET)
    assert d.migration(vm.id).phase is P.SNAPSHOT
    migrate = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(migrate, c.Migrate)
    assert (migrate.generation, migrate.migration_id) == (2, mig.id)

    progress(d, vm.id, mig.id, remaining=600)
    progress(d, vm.id, mig.id, remaining=0)
    mig = d.migration(vm.id)
    assert (mig.phase, mig.bytes_transferred, mig.bytes_remaining) == (P.TRANSFER, 1000, 0)

    d.report("n2", status(vm.id, "web", 2))  # resumed on the target: the one transition
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
    assert d.stored_vm(vm.id).node_id == "n2"
    assert d.migration(vm.id).phase is P.SWITCHOVER

    d.answer(d.sent(c.Migrate, "n1"))
    assert d.migration(vm.id).phase is P.CLEANUP
    assert d.vm(vm.id).migrating_to == ""
    assert d.core.state.allocated("n1").memory_mib == 0
    finish = d.sent(c.FinishMigration, "n2")
    assert isinstance(finish.envelope.command, c.FinishMigration)
    assert finish.envelope.command.generation == 2
    d.answer(finish, vm=status(vm.id, "web", 2), migration_stats=c.MigrationStats(600, 40, 900))

    mig = d.migration(vm.id)
    assert mig.phase is P.SUCCEEDED and not mig.active
    assert [p for p, _ in mig.phase_times] == [
        "pre_checks",
        "snapshot",
        "transfer",
        "switchover",
        "cleanup",
        "succeeded",
    ]
    assert (mig.downtime_ms, mig.elapsed_ms) == (40, 600)
    reply = d.reply("mig")
    assert isinstance(reply.value, MigrationReport)
    assert reply.value.vm.node_id == "n2" and reply.value.downtime_ms == 40
    assert d.stored_migration(mig.id).phase is P.SUCCEEDED


def test_the_source_job_completing_first_also_switches_over_once(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.answer(d.sent(c.Migrate, "n1"))  # no arrival event seen yet
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
    d.report("n2", status(vm.id, "web", 2))  # the late arrival event changes nothing
    mig = d.migration(vm.id)
    assert [p for p, _ in mig.phase_times].count("switchover") == 1


def test_the_target_refusing_leaves_the_vm_where_it_was(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id)
    d.answer(d.sent(c.PrepareMigration, "n2"), error=c.CommandError("FAILED_PRECONDITION", "no"))
    mig = d.migration(vm.id)
    assert mig.phase is P.FAILED and "no" in mig.error
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation, d.vm(vm.id).migrating_to) == ("n1", 1, "")
    assert not d.replied("mig")  # first the target removes what it staged
    unstage = d.sent(c.DeleteVM, "n2")
    d.answer(unstage)
    reply = d.reply("mig")
    assert isinstance(reply.error, FailedPrecondition)
    assert str(reply.error).endswith("; VM 'web' keeps running on 'n1'")


def test_the_source_failing_rolls_back(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.answer(d.sent(c.Migrate, "n1"), error=c.CommandError("INTERNAL", "libvirt said no"))
    assert d.migration(vm.id).phase is P.FAILED
    assert d.vm(vm.id).node_id == "n1"
    d.answer(d.sent(c.DeleteVM, "n2"))
    assert isinstance(d.reply("mig").error, Internal)


def test_the_source_dying_before_the_switchover_leaves_the_outcome_to_the_reports(
    d: Driver,
) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.disconnect("n1")
    reply = d.reply("mig")
    assert isinstance(reply.error, Unavailable)
    assert "may still complete" in str(reply.error)
    mig = d.migration(vm.id)
    assert mig.active and d.vm(vm.id).state is VMState.UNKNOWN
    d.hello("n1", status(vm.id, "web", 1))  # it never left
    assert d.migration(vm.id).phase is P.FAILED
    assert (d.vm(vm.id).node_id, d.vm(vm.id).state) == ("n1", VMState.RUNNING)
    assert d.commands(c.CreateVM)[-1].node_id == "n1"  # the deploy's only, no re-create


def test_a_call_that_times_out_but_lands_is_followed(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.expire(d.sent(c.Migrate, "n1"))
    assert isinstance(d.reply("mig").error, DeadlineExceeded)
    d.report("n2", status(vm.id, "web", 2))
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
    d.answer(d.sent(c.FinishMigration, "n2"))
    assert d.migration(vm.id).phase is P.SUCCEEDED


def test_the_source_dying_after_the_switchover_still_completes(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.report("n2", status(vm.id, "web", 2))
    d.disconnect("n1")
    assert d.migration(vm.id).phase is P.CLEANUP
    d.answer(d.sent(c.FinishMigration, "n2"))
    assert d.migration(vm.id).phase is P.SUCCEEDED
    assert isinstance(d.reply("mig").value, MigrationReport)
    # the source comes back with its old copy: fenced by generation, not resurrected
    d.hello("n1", status(vm.id, "web", 1, VMState.PAUSED))
    fence = d.sent(c.DeleteVM, "n1")
    assert isinstance(fence.envelope.command, c.DeleteVM)
    assert d.vm(vm.id).node_id == "n2"


def test_a_postcopy_failing_after_arrival_keeps_the_record_on_the_target(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, postcopy=True)
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    d.report("n2", status(vm.id, "web", 2))
    d.answer(d.sent(c.Migrate, "n1"), error=c.CommandError("INTERNAL", "link lost in post-copy"))
    d.answer(d.sent(c.FinishMigration, "n2"))
    mig = d.migration(vm.id)
    assert mig.phase is P.FAILED and mig.arrived
    assert (d.vm(vm.id).node_id, d.vm(vm.id).migrating_to) == ("n2", "")
    reply = d.reply("mig")
    assert isinstance(reply.error, Internal)
    assert "is recorded on 'n2', where it ran last" in str(reply.error)


@pytest.mark.parametrize("phase", [P.PRE_CHECKS, P.SNAPSHOT, P.TRANSFER])
def test_a_restart_before_the_switchover_settles_on_the_source(d: Driver, phase: P) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id)
    mig_id = d.migration(vm.id).id
    if phase is not P.PRE_CHECKS:
        d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    if phase is P.TRANSFER:
        progress(d, vm.id, mig_id, remaining=500)
    assert d.stored_migration(mig_id).phase is phase
    d.restart()
    assert d.migration(vm.id).phase is phase  # the record says where the job was
    d.hello("n2")
    assert d.migration(vm.id).active  # the target alone proves nothing yet
    d.hello("n1", status(vm.id, "web", 1))
    assert d.migration(vm.id).phase is P.FAILED
    assert (d.vm(vm.id).node_id, d.vm(vm.id).migrating_to, d.vm(vm.id).generation) == ("n1", "", 1)


@pytest.mark.parametrize("phase", [P.SWITCHOVER, P.CLEANUP])
def test_a_restart_after_the_switchover_settles_on_the_target(d: Driver, phase: P) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.report("n2", status(vm.id, "web", 2))
    if phase is P.CLEANUP:
        d.answer(d.sent(c.Migrate, "n1"))
    mig_id = d.migration(vm.id).id
    assert d.stored_migration(mig_id).phase is phase
    d.restart()
    d.hello("n1")  # the source no longer has it: nothing is re-created there
    assert not [s for s in d.commands(c.CreateVM) if s.node_id == "n1"][1:]
    d.hello("n2", status(vm.id, "web", 2))
    finish = d.sent(c.FinishMigration, "n2")
    d.answer(finish)
    assert d.migration(vm.id).phase is P.SUCCEEDED
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)


def test_a_restart_while_the_target_already_runs_it_switches_over_then(d: Driver) -> None:
    """Restarted during the transfer; the guest had resumed on the target meanwhile."""
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.restart()
    d.hello("n2", status(vm.id, "web", 2))
    assert d.migration(vm.id).arrived
    assert d.vm(vm.id).node_id == "n2"
    d.answer(d.sent(c.FinishMigration, "n2"))
    assert d.migration(vm.id).phase is P.SUCCEEDED


def test_refusals_change_nothing(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    before = dict(d.store["vms"])
    d.feed(ev.MigrateRequested, name_or_id="web", target="n1", stimulus_id="same")
    assert "already runs on 'n1'" in str(d.reply("same").error)
    start(d, vm.id)
    d.feed(ev.MigrateRequested, name_or_id="web", target="n2", stimulus_id="again")
    assert "already migrating" in str(d.reply("again").error)
    assert before[vm.id].generation == d.stored_vm(vm.id).generation == 1


def test_deleting_a_migrating_vm_ends_the_job_and_fences_both_copies(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    to_snapshot(d, vm.id)
    d.feed(ev.DeleteRequested, name_or_id="web", stimulus_id="del")
    assert "deleted while migrating" in str(d.reply("mig").error)
    assert d.migration(vm.id).phase is P.FAILED
    assert {s.node_id for s in d.commands(c.DeleteVM)} == {"n1", "n2"}
    d.answer(d.sent(c.DeleteVM, "n1"))
    stone = d.tombstone(vm.id)
    assert stone is not None and stone.generation == 2  # the arriving copy's too
    d.hello("n2", status(vm.id, "web", 2))  # it had landed after all: destroyed, no orphan
    assert len(d.commands(c.DeleteVM)) == 3 and not d.core.state.orphans


def test_a_live_move_gets_the_default_pause_aim_and_a_bounded_budget(d: Driver) -> None:
    """controller.max_downtime (150 ms) unless the request says; the agent's pre-copy budget
    ends before the controller's own deadline, so a move that cannot converge is aborted by
    the agent (which says why) rather than left unknown."""
    vm = d.deploy("web", "n1")
    migrate = to_snapshot(d, vm.id)
    assert (migrate.max_downtime_ms, migrate.time_budget_s) == (150, 110.0)
    assert d.migration(vm.id).max_downtime_ms == 150
    d.answer(d.sent(c.Migrate, "n1"), error=c.CommandError("DEADLINE_EXCEEDED", "did not converge"))
    d.answer(d.sent(c.DeleteVM, "n2"))
    assert d.vm(vm.id).node_id == "n1" and d.migration(vm.id).phase is P.FAILED
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", max_downtime_ms=20, timeout=30)
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    custom = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(custom, c.Migrate)
    assert (custom.max_downtime_ms, custom.time_budget_s) == (20, 20.0)
