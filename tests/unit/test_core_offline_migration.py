"""Cold and snapshot migration in the core: the phases, and a failure at each of them leaves
the VM running on its source (started there again once the source had stopped it). The core
alone, driven by hand (tests/unit/core_driver.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.core import MigrationReport
from controller.core import events as ev
from controller.records import MigrationPhase
from shared import commands as c
from shared.domain import NEVER, DisconnectPolicy, VMState
from shared.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable
from tests.unit.core_driver import Driver, status

P = MigrationPhase
TARGET = c.MigrationTarget("qemu+tcp://n2/system", "tcp://n2", console_log="/v/x/console.log")
MODES = ["cold", "snapshot"]


@pytest.fixture
def d() -> Driver:
    driver = Driver()
    driver.hello("n1")
    driver.hello("n2")
    return driver


def start(d: Driver, vm_id: str, mode: str) -> c.Migrate:
    d.feed(ev.MigrateRequested, name_or_id=vm_id, target="n2", mode=mode, stimulus_id="mig")
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    cmd = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(cmd, c.Migrate)
    return cmd


def restarted_on_source(d: Driver, vm_id: str) -> None:
    start_cmd = d.sent(c.ChangePower, "n1").envelope.command
    assert isinstance(start_cmd, c.ChangePower)
    assert (start_cmd.action, start_cmd.generation) == (c.PowerAction.START, 1)
    assert (d.vm(vm_id).node_id, d.vm(vm_id).generation, d.vm(vm_id).migrating_to) == (
        "n1",
        1,
        "",
    )


@pytest.mark.parametrize("mode", MODES)
def test_the_phases_in_order_and_the_source_copy_goes_at_the_end(d: Driver, mode: str) -> None:
    vm = d.deploy("web", "n1")
    migrate = start(d, vm.id, mode)
    assert (migrate.mode, migrate.generation, migrate.postcopy) == (mode, 2, False)
    assert migrate.shutdown_timeout_s == 30.0  # controller.cold_shutdown_timeout
    mig = d.migration(vm.id)
    assert (mig.mode, mig.phase) == (mode, P.SNAPSHOT)
    d.report("n1", status(vm.id, "web", 1, VMState.STOPPED))  # stopped as it leaves: no restart
    assert not d.commands(c.ChangePower)

    d.feed(
        ev.AgentProgress,
        node_id="n1",
        session_id=d.sessions["n1"],
        progress=c.MigrationProgress(vm.id, mig.id, 1000, 400, 600),
    )
    d.answer(d.sent(c.Migrate, "n1"))  # the files are in the target's staged directory
    assert d.stored_migration(mig.id).bytes_remaining == 0  # all sent, also once landing
    land = d.sent(c.LandMigration, "n2").envelope.command
    assert isinstance(land, c.LandMigration) and land.generation == 2
    assert d.vm(vm.id).node_id == "n1"  # not moved before the target runs it
    assert not d.commands(c.DeleteVM)

    d.answer(d.sent(c.LandMigration, "n2"), vm=status(vm.id, "web", 2))
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
    release = d.sent(c.DeleteVM, "n1").envelope.command  # the source's stopped copy goes
    assert isinstance(release, c.DeleteVM) and release.generation == 1
    d.answer(d.sent(c.DeleteVM, "n1"))
    d.answer(d.sent(c.FinishMigration, "n2"), vm=status(vm.id, "web", 2))
    mig = d.migration(vm.id)
    assert mig.phase is P.SUCCEEDED
    assert [p for p, _ in mig.phase_times] == [
        "pre_checks",
        "snapshot",
        "transfer",
        "switchover",
        "cleanup",
        "succeeded",
    ]
    assert isinstance(d.reply("mig").value, MigrationReport)


@pytest.mark.parametrize("mode", MODES)
def test_the_target_refusing_in_pre_checks_leaves_the_vm_running(d: Driver, mode: str) -> None:
    vm = d.deploy("web", "n1")
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", mode=mode, stimulus_id="mig")
    d.answer(d.sent(c.PrepareMigration, "n2"), error=c.CommandError("FAILED_PRECONDITION", "no"))
    assert d.migration(vm.id).phase is P.FAILED
    d.answer(d.sent(c.DeleteVM, "n2"))
    assert isinstance(d.reply("mig").error, FailedPrecondition)
    assert d.vm(vm.id).node_id == "n1"


@pytest.mark.parametrize("mode", MODES)
def test_the_source_failing_to_stop_or_send_runs_it_there_again(d: Driver, mode: str) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, mode)
    error = c.CommandError("UNAVAILABLE", "upload: target unreachable; the vm runs here again")
    d.answer(d.sent(c.Migrate, "n1"), error=error)
    assert d.migration(vm.id).phase is P.FAILED
    restarted_on_source(d, vm.id)  # idempotent when its agent already did
    d.answer(d.sent(c.ChangePower, "n1"), vm=status(vm.id, "web", 1))
    d.answer(d.sent(c.DeleteVM, "n2"))  # the target's staging goes
    reply = d.reply("mig")
    assert isinstance(reply.error, Unavailable)
    assert str(reply.error).endswith("keeps running on 'n1'")
    assert d.vm(vm.id).state is VMState.RUNNING


@pytest.mark.parametrize("mode", MODES)
def test_the_target_failing_to_land_it_runs_it_on_the_source_again(d: Driver, mode: str) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, mode)
    d.answer(d.sent(c.Migrate, "n1"))
    d.answer(d.sent(c.LandMigration, "n2"), error=c.CommandError("INTERNAL", "restore failed"))
    mig = d.migration(vm.id)
    assert mig.phase is P.FAILED and not mig.arrived
    restarted_on_source(d, vm.id)
    d.answer(d.sent(c.DeleteVM, "n2"))
    assert isinstance(d.reply("mig").error, Internal)


@pytest.mark.parametrize("mode", MODES)
def test_the_target_leaving_before_landing_runs_it_on_the_source_again(
    d: Driver, mode: str
) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, mode)
    d.disconnect("n2")
    d.answer(d.sent(c.Migrate, "n1"))
    assert d.migration(vm.id).phase is P.FAILED
    restarted_on_source(d, vm.id)
    assert isinstance(d.reply("mig").error, Unavailable)


@pytest.mark.parametrize("mode", MODES)
def test_a_source_that_died_mid_transfer_runs_it_again_when_it_returns(
    d: Driver, mode: str
) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, mode)
    d.disconnect("n1")
    assert "may still complete" in str(d.reply("mig").error)
    d.hello("n1", status(vm.id, "web", 1, VMState.STOPPED))  # stopped, nobody moves it
    assert d.migration(vm.id).phase is P.FAILED
    restarted_on_source(d, vm.id)


@pytest.mark.parametrize("mode", MODES)
def test_a_landing_whose_answer_is_lost_settles_when_the_target_reports(
    d: Driver, mode: str
) -> None:
    vm = d.deploy("web", "n1")
    start(d, vm.id, mode)
    d.answer(d.sent(c.Migrate, "n1"))
    d.expire(d.sent(c.LandMigration, "n2"))
    assert "may be running on 'n2'" in str(d.reply("mig").error)
    d.report("n2", status(vm.id, "web", 2))
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
    d.answer(d.sent(c.DeleteVM, "n1"))
    d.answer(d.sent(c.FinishMigration, "n2"))
    assert d.migration(vm.id).phase is P.SUCCEEDED


def test_bad_modes_are_refused(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    d.feed(ev.MigrateRequested, name_or_id=vm.id, target="n2", mode="warm", stimulus_id="a")
    d.feed(
        ev.MigrateRequested,
        name_or_id=vm.id,
        target="n2",
        mode="cold",
        postcopy=True,
        stimulus_id="b",
    )
    first, second = d.reply("a").error, d.reply("b").error
    assert isinstance(first, InvalidArgument) and "unknown migration mode 'warm'" in str(first)
    assert isinstance(second, InvalidArgument) and "post-copy is a kind of live" in str(second)
    assert not d.commands(c.PrepareMigration)


def test_a_cold_drain_moves_with_cold_migrations(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    d.feed(ev.DrainRequested, node_id="n1", cold=True, stimulus_id="drain")
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    migrate = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(migrate, c.Migrate) and migrate.mode == "cold"
    assert d.migration(vm.id).reason == "drain of n1"


@pytest.mark.parametrize("lands", [True, False])
def test_a_restart_while_landing_waits_for_the_target(d: Driver, lands: bool) -> None:
    """The land command was out when the controller restarted: the source's stopped copy
    is not started (the target may run the VM); the target's hello decides."""
    vm = d.deploy("web", "n1")
    start(d, vm.id, "snapshot")
    d.answer(d.sent(c.Migrate, "n1"))
    assert d.stored_migration(d.migration(vm.id).id).phase is P.SWITCHOVER  # before it went
    sent = len(d.out)
    d.restart()
    d.hello("n1", status(vm.id, "web", 1, VMState.STOPPED))
    assert not [i for i in d.out[sent:] if getattr(i, "node_id", "") == "n1" and isinstance(
        getattr(getattr(i, "envelope", None), "command", None), c.ChangePower)]  # fmt: skip
    assert d.migration(vm.id).active
    if lands:
        d.hello("n2", status(vm.id, "web", 2))
        assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)
        assert d.sent(c.DeleteVM, "n1").envelope.command.generation == 1  # type: ignore[union-attr]
    else:
        d.hello("n2")
        assert d.migration(vm.id).phase is P.FAILED
        restarted_on_source(d, vm.id)


def stopped_vm(d: Driver, name: str) -> str:
    vm = d.deploy(name, "n1")
    d.report("n1", status(vm.id, name, 1, VMState.STOPPED))  # its guest powered off
    return vm.id


def test_a_stopped_vm_moves_cold_and_stays_stopped_on_the_target(d: Driver) -> None:
    vm_id = stopped_vm(d, "idle")
    live = d.feed(ev.MigrateRequested, name_or_id=vm_id, target="n2", stimulus_id="live")
    assert live and "a stopped one: with --mode cold" in str(d.reply("live").error)
    migrate = start(d, vm_id, "cold")
    assert d.migration(vm_id).stays_stopped
    d.answer(d.sent(c.Migrate, "n1"))
    land = d.sent(c.LandMigration, "n2").envelope.command
    assert isinstance(land, c.LandMigration) and land.stay_stopped and migrate.mode == "cold"
    d.answer(d.sent(c.LandMigration, "n2"), vm=status(vm_id, "idle", 2, VMState.STOPPED))
    vm = d.vm(vm_id)
    assert (vm.node_id, vm.generation, vm.state) == ("n2", 2, VMState.STOPPED)
    d.answer(d.sent(c.DeleteVM, "n1"))
    assert not d.commands(c.FinishMigration)  # nothing to route or cap: it is not running
    assert d.migration(vm_id).phase is P.SUCCEEDED
    assert not d.commands(c.ChangePower)  # never started, on either node
    assert d.stored_migration(d.migration(vm_id).id).stays_stopped  # kept across a restart


def test_a_stopped_vm_whose_cold_move_fails_stays_stopped_on_its_source(d: Driver) -> None:
    vm_id = stopped_vm(d, "idle")
    start(d, vm_id, "cold")
    d.answer(d.sent(c.Migrate, "n1"), error=c.CommandError("UNAVAILABLE", "target gone"))
    assert d.migration(vm_id).phase is P.FAILED
    assert d.vm(vm_id).node_id == "n1" and not d.commands(c.ChangePower)


def test_a_live_drain_moves_a_stopped_vm_cold(d: Driver) -> None:
    vm_id = stopped_vm(d, "idle")
    d.feed(ev.DrainRequested, node_id="n1", stimulus_id="drain")
    d.answer(d.sent(c.PrepareMigration, "n2"), migration_target=TARGET)
    migrate = d.sent(c.Migrate, "n1").envelope.command
    assert isinstance(migrate, c.Migrate) and migrate.mode == "cold"
    assert d.migration(vm_id).stays_stopped and not d.core.state.drains["n1"].failed


def lose_target_while_landing(d: Driver, vm_id: str, mode: str) -> float:
    """The files are in; LandMigration is out; then n2 goes silent (its stream closes)."""
    start(d, vm_id, mode)
    d.answer(d.sent(c.Migrate, "n1"))
    d.sent(c.LandMigration, "n2")
    heard = d.now
    d.disconnect("n2")  # the landing's outcome is unknown: n2 may have started it
    assert "may be running on 'n2'" in str(d.reply("mig").error)
    return heard


def tick_until(d: Driver, at: float) -> None:
    while d.now < at:
        d.now = min(at, d.now + 1.0)
        for node_id in list(d.sessions):
            d.heartbeat(node_id)
        d.feed(ev.Tick)


@pytest.mark.parametrize("mode", MODES)
def test_a_target_lost_while_landing_gives_the_vm_back_to_its_source(d: Driver, mode: str) -> None:
    """Not a wait for ever: once the copy the target may have started is provably stopped
    (the VM's stop_after + margin since n2 was last heard), the source's copy is the VM
    again, at a generation above the target's, and n2's copy is destroyed when it returns."""
    vm = d.deploy("web", "n1")
    heard = lose_target_while_landing(d, vm.id, mode)
    stopped_by = heard + 30.0 + 2.0  # the default stop_after, the clock margin
    tick_until(d, stopped_by - 1.0)
    assert not d.commands(c.ChangePower)
    assert d.migration(vm.id).phase is P.SWITCHOVER
    assert "back on n1 in" in d.core.state.failover_waiting[vm.id]
    # the source still reports its stopped copy at generation 1: it is the VM, not stale
    d.heartbeat("n1", status(vm.id, "web", 1, VMState.STOPPED))
    assert not d.commands(c.DeleteVM)
    tick_until(d, stopped_by + 0.5)
    start_cmd = d.sent(c.ChangePower, "n1").envelope.command
    assert isinstance(start_cmd, c.ChangePower)
    assert (start_cmd.action, start_cmd.generation) == (c.PowerAction.START, 3)
    stored = d.stored_vm(vm.id)
    assert (stored.node_id, stored.generation) == ("n1", 3)  # persisted before the command
    mig = d.stored_migration(d.migration(vm.id).id)
    assert mig.phase is P.FAILED and "was lost while landing it" in mig.error
    assert vm.id not in d.core.state.failover_waiting
    # n1's session restarts before it started it: its hello has the copy still at
    # generation 1, which is the VM (not stale), and the start is sent again
    d.disconnect("n1")
    d.hello("n1", status(vm.id, "web", 1, VMState.STOPPED))
    assert not d.commands(c.DeleteVM)
    again = d.sent(c.ChangePower, "n1")
    assert again is not d.commands(c.ChangePower)[0]
    assert isinstance(again.envelope.command, c.ChangePower)
    assert again.envelope.command.generation == 3  # the agent stamps it (a newer one)
    d.answer(again, vm=status(vm.id, "web", 3))
    assert d.vm(vm.id).state is VMState.RUNNING
    # n2 comes back with the copy it had started (and paused itself): destroyed, not adopted
    d.hello("n2", status(vm.id, "web", 2, VMState.PAUSED))
    delete = d.sent(c.DeleteVM, "n2").envelope.command
    assert isinstance(delete, c.DeleteVM) and delete.generation == 2
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n1", 3)


def test_a_target_lost_while_landing_is_waited_for_when_the_policy_says_never(
    d: Driver,
) -> None:
    vm = d.deploy("web", "n1")
    d.core.state.vms[vm.id] = replace(
        vm, spec=replace(vm.spec, disconnect=DisconnectPolicy(replace_after_s=NEVER))
    )
    heard = lose_target_while_landing(d, vm.id, "cold")
    tick_until(d, heard + 120.0)
    assert not d.commands(c.ChangePower)
    assert "waits for the node" in d.core.state.failover_waiting[vm.id]
    d.hello("n2", status(vm.id, "web", 2))  # it had landed: the target's report settles it
    assert (d.vm(vm.id).node_id, d.vm(vm.id).generation) == ("n2", 2)


def test_a_target_lost_while_landing_waits_for_a_source_that_is_away_too(d: Driver) -> None:
    vm = d.deploy("web", "n1")
    heard = lose_target_while_landing(d, vm.id, "snapshot")
    d.disconnect("n1")
    tick_until(d, heard + 40.0)
    assert not d.commands(c.ChangePower)
    assert d.migration(vm.id).phase is P.SWITCHOVER  # nothing to start it on
    d.hello("n1", status(vm.id, "web", 1, VMState.STOPPED))
    assert not d.commands(c.DeleteVM)  # its copy is the VM's only sure one
    tick_until(d, d.now + 1.0)
    start_cmd = d.sent(c.ChangePower, "n1").envelope.command
    assert isinstance(start_cmd, c.ChangePower) and start_cmd.generation == 3
