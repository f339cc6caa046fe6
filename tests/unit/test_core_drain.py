"""Drain decided by the core alone: cordon, then live migrations through placement, a few at a
time; what cannot move is listed with the reason; the drain is answered at once."""

from __future__ import annotations

from controller.core import events as ev
from controller.core.instructions import Persist
from controller.records import Drain
from controller.records import MigrationPhase as P
from shared import commands as c
from shared.domain import VMState
from shared.errors import InvalidArgument
from tests.unit.core_driver import Driver, status
from tests.unit.test_core_migration import TARGET


def move(d: Driver, vm_id: str, name: str, target: str) -> None:
    """Walk the migration of `vm_id` to `target` through to success."""
    prepare = [p for p in d.commands(c.PrepareMigration) if p.envelope.command.vm_id == vm_id]
    d.answer(prepare[-1], migration_target=TARGET)
    migrate = [m for m in d.commands(c.Migrate) if m.envelope.command.vm_id == vm_id][-1]
    d.report(target, status(vm_id, name, 2))
    d.answer(migrate)
    finish = [f for f in d.commands(c.FinishMigration) if f.envelope.command.vm_id == vm_id]
    d.answer(finish[-1], vm=status(vm_id, name, 2))
    assert d.migration(vm_id).phase is P.SUCCEEDED


def test_a_drain_moves_everything_one_at_a_time_and_lists_what_cannot_move() -> None:
    d = Driver()
    d.hello("n1")
    a, b = d.deploy("a", "n1"), d.deploy("b", "n1")
    crashed = d.deploy("c", "n1")
    d.heartbeat(
        "n1", status(a.id, "a"), status(b.id, "b"), status(crashed.id, "c", 1, VMState.CRASHED)
    )
    d.hello("n2")
    d.feed(ev.DrainRequested, node_id="n1", parallel=1, stimulus_id="drain")
    drain = d.reply("drain").value
    assert isinstance(drain, Drain)
    assert d.node("n1").cordoned and d.store["nodes"]["n1"].cordoned
    assert drain.queued == (b.id,) and [v for v, _ in drain.active] == [a.id]
    assert drain.failed == (("c", "it is crashed: only a running, paused or stopped VM moves"),)
    assert len(d.commands(c.PrepareMigration)) == 1  # one at a time
    move(d, a.id, "a", "n2")
    d.feed(ev.Tick)
    assert [v for v, _ in d.core.state.drains["n1"].active] == [b.id]
    move(d, b.id, "b", "n2")
    d.feed(ev.Tick)
    drain = d.core.state.drains["n1"]
    assert drain.done and drain.moved == (("a", "n2"), ("b", "n2")) and drain.finished_at
    assert {d.vm(a.id).node_id, d.vm(b.id).node_id} == {"n2"}
    assert d.migration(a.id).reason == "drain of n1"
    assert not d.replied("mig")  # each move answers nobody: the drain was answered


def test_a_drain_goes_on_after_a_controller_restart() -> None:
    """The drain is stored with each change; a restarted controller (memory gone, the store
    kept) finishes the move under way and starts the next, and the history stays whole."""
    d = Driver()
    d.hello("n1")
    a, b = d.deploy("a", "n1"), d.deploy("b", "n1")
    d.heartbeat("n1", status(a.id, "a"), status(b.id, "b"))
    d.hello("n2")
    d.feed(ev.DrainRequested, node_id="n1", parallel=1, stimulus_id="drain")
    assert d.store["drains"]["n1"] == d.core.state.drains["n1"]  # stored as it started
    move(d, a.id, "a", "n2")
    d.restart()
    assert d.core.state.drains["n1"] == d.store["drains"]["n1"]
    d.hello("n1", status(b.id, "b"))
    d.hello("n2", status(a.id, "a", 2))
    d.feed(ev.Tick)
    drain = d.core.state.drains["n1"]
    assert drain.moved == (("a", "n2"),) and [v for v, _ in drain.active] == [b.id]
    move(d, b.id, "b", "n2")
    d.feed(ev.Tick)
    stored = d.store["drains"]["n1"]
    assert stored.done and stored.moved == (("a", "n2"), ("b", "n2")) and stored.finished_at
    ticks = len(d.out)
    d.feed(ev.Tick)  # a finished drain is not written again at every tick
    assert not any(isinstance(i, Persist) and i.drains for i in d.out[ticks:])


def test_a_vm_with_nowhere_to_go_is_reported_and_the_rest_still_move() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("only", "n1")
    d.feed(ev.DrainRequested, node_id="n1", parallel=2, stimulus_id="drain")
    drain = d.reply("drain").value
    assert isinstance(drain, Drain) and drain.done
    ((name, why),) = drain.failed
    assert name == "only" and "no other node can take VM 'only'" in why
    assert d.vm(vm.id).node_id == "n1" and not d.commands(c.PrepareMigration)


def test_a_bad_parallel_is_refused_and_nothing_is_cordoned() -> None:
    d = Driver()
    d.hello("n1")
    d.feed(ev.DrainRequested, node_id="n1", parallel=99, stimulus_id="drain")
    error = d.reply("drain").error
    assert isinstance(error, InvalidArgument) and "parallel" in str(error)
    assert not d.node("n1").cordoned
