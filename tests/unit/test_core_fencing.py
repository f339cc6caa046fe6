"""Generations that fence, absence that is not deletion, and persist-then-act: the core alone."""

from __future__ import annotations

import pytest

from controller.core import events as ev
from shared import commands as c
from shared.domain import NodeCondition, VMSpec, VMState
from shared.errors import ResourceExhausted, Unavailable
from tests.unit.core_driver import Driver, status


def test_a_deploy_starts_at_generation_one_and_the_create_carries_it() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    assert vm.generation == 1 and d.stored_vm(vm.id).generation == 1
    cmd = d.sent(c.CreateVM, "n1").envelope.command
    assert isinstance(cmd, c.CreateVM) and cmd.generation == 1


def test_an_empty_store_never_destroys_what_nodes_run() -> None:
    """A controller started on an emptied state dir: every VM a node reports is an orphan,
    left running and listed; no DeleteVM goes out."""
    d = Driver()
    d.hello("n1", status("a", "web-a"), status("b", "web-b", 3))
    assert not d.commands(c.DeleteVM)
    orphans = sorted(o.status.name for o in d.core.state.orphans.values())
    assert orphans == ["web-a", "web-b"]
    assert all("no record" in o.reason for o in d.core.state.orphans.values())


def test_a_node_of_another_installation_is_left_alone() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    d.restart()
    d.hello("n1", status(vm.id, "web", 1), status("x", "stranger"), installation="other")
    assert not d.commands(c.DeleteVM)
    reasons = {o.status.name: o.reason for o in d.core.state.orphans.values()}
    assert "belongs to installation other" in reasons["stranger"]
    condition, why = d.core.state.condition(d.node("n1"), d.now)
    assert condition is NodeCondition.NOT_READY
    assert "--new-installation" in why


def test_an_orphan_can_be_adopted_or_deleted() -> None:
    d = Driver()
    d.hello("n1", status("a", "keep", 4), status("b", "drop"))
    d.feed(ev.AdoptRequested, node_id="n1", vm_id="keep", stimulus_id="adopt")
    assert d.reply("adopt").error is None
    vm = d.vm("a")
    assert (vm.node_id, vm.generation, vm.state) == ("n1", 4, VMState.RUNNING)
    assert d.stored_vm("a").spec.name == "keep"
    d.feed(ev.DeleteOrphanRequested, node_id="n1", vm_id="drop", stimulus_id="drop")
    delete = d.sent(c.DeleteVM, "n1")
    assert isinstance(delete.envelope.command, c.DeleteVM)
    assert delete.envelope.command.vm_id == "b"
    d.answer(delete)
    assert d.reply("drop").error is None
    assert list(d.core.state.orphans) == []
    d.heartbeat("n1", status("a", "keep", 4))  # adopted: observed like any VM
    assert d.vm("a").state is VMState.RUNNING


def test_a_deleted_vm_leaves_a_tombstone_and_a_returning_copy_is_destroyed() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    d.disconnect("n1")
    d.feed(ev.DeleteRequested, name_or_id="web", stimulus_id="del")
    assert d.vm(vm.id).state is VMState.DELETING  # deleted when it reconnects
    d.hello("n1")  # the node lost it meanwhile: forgotten, with a tombstone
    assert vm.id not in d.core.state.vms
    stone = d.tombstone(vm.id)
    assert stone is not None and stone.generation == 1
    d.hello("n1", status(vm.id, "web", 1))  # a copy comes back from a partition
    fence = d.sent(c.DeleteVM, "n1")
    assert isinstance(fence.envelope.command, c.DeleteVM)
    assert fence.envelope.command.vm_id == vm.id
    assert not d.core.state.orphans


def test_a_stale_copy_is_destroyed_but_a_newer_one_never() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    d.hello("n2", status(vm.id, "web", 0))  # an older copy elsewhere: fenced
    assert d.sent(c.DeleteVM, "n2")
    d.hello("n3", status(vm.id, "web", 1))  # the same generation elsewhere: not destroyed
    assert not d.commands(c.DeleteVM)[1:]
    assert ("n3", vm.id) in d.core.state.orphans


def test_a_failed_write_is_answered_and_nothing_is_acted_on() -> None:
    d = Driver()
    d.hello("n1")
    d.fail_next_persist = ResourceExhausted("controller.db: database or disk is full")
    d.feed(ev.DeployRequested, spec=VMSpec("web", "tiny", 1, 128), stimulus_id="full")
    reply = d.reply("full")
    assert isinstance(reply.error, ResourceExhausted)
    assert not d.commands(c.CreateVM)  # no command for a VM that does not exist
    assert d.core.state.vms == {} and d.store["vms"] == {}
    assert d.core.state.allocated("n1").memory_mib == 0
    vm = d.deploy("web", "n1")  # once the disk has room again, the same deploy works
    assert vm.generation == 1


def test_a_failed_delete_write_is_not_carried_out_later() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    d.fail_next_persist = Unavailable("controller.db: database is locked")
    d.feed(ev.DeleteRequested, name_or_id="web", stimulus_id="del")
    assert isinstance(d.reply("del").error, Unavailable)
    assert not d.commands(c.DeleteVM)
    d.hello("n1", status(vm.id, "web", 1))  # a reconnect re-compares: still wanted
    assert not d.commands(c.DeleteVM)
    assert d.vm(vm.id).state is VMState.RUNNING


def test_a_hello_that_cannot_be_stored_leaves_the_node_not_ready_saying_why() -> None:
    d = Driver()
    d.fail_next_persist = Unavailable("controller.db: database is locked")
    d.hello("n1")
    node = d.core.state.nodes.get("n1")
    assert node is None  # not recorded; shown not ready once its next hello is stored
    session = d.core.state.sessions["n1"]
    assert "could not be stored" in session.refused
    d.hello("n1")
    condition, _ = d.core.state.condition(d.node("n1"), d.now)
    assert condition is NodeCondition.READY


def test_vm_delete_finds_an_orphan_by_name_when_one_node_has_it() -> None:
    d = Driver()
    d.hello("n1", status("a", "lonely"))
    d.hello("n2", status("b", "twin"))
    d.hello("n3", status("c", "twin"))
    d.feed(ev.DeleteRequested, name_or_id="twin", stimulus_id="ambiguous")
    assert "several nodes (n2, n3)" in str(d.reply("ambiguous").error)
    d.feed(ev.DeleteRequested, name_or_id="lonely", stimulus_id="del")
    delete = d.sent(c.DeleteVM, "n1")
    d.answer(delete)
    assert d.reply("del").error is None
    assert ("n1", "a") not in d.core.state.orphans


def test_a_bug_in_a_handler_takes_the_event_back() -> None:
    d = Driver()
    d.hello("n1")
    core = d.core
    original = core.create_on_node

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug after the VM was recorded")

    core.create_on_node = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        d.feed(ev.DeployRequested, spec=VMSpec("web", "tiny", 1, 128), stimulus_id="bug")
    assert core.state.vms == {} and core.state.allocated("n1").memory_mib == 0
    core.create_on_node = original  # type: ignore[method-assign]
    assert d.deploy("web", "n1").generation == 1
