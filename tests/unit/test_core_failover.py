"""Failover decided by the core alone: when a lost node's VMs are replaced, where, at which
generation, what waits and why, and what happens to the original when its node returns."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.core import events as ev
from controller.core.disconnect import FailoverSettings, detection_s, expected_failover
from controller.core.failover import FailoverOutcome
from controller.records import FailoverRecord
from shared import commands as c
from shared.domain import NEVER, DisconnectPolicy, NodeCondition, VMSpec, VMState
from shared.errors import FailedPrecondition, InvalidArgument
from tests.unit.core_driver import Driver, status

MARGIN = FailoverSettings().clock_margin_s


def deploy(d: Driver, name: str, node_id: str, **policy: float | None) -> str:
    spec = VMSpec(name, "tiny", 1, 128, disconnect=DisconnectPolicy(**policy))  # type: ignore[arg-type]
    if "pin" in name:
        spec = replace(
            spec, placement=replace(spec.placement, required_labels=(("site", node_id),))
        )
    d.feed(ev.DeployRequested, spec=spec, stimulus_id=f"deploy-{name}")
    create = d.sent(c.CreateVM, node_id)
    cmd = create.envelope.command
    assert isinstance(cmd, c.CreateVM)
    d.answer(create, vm=status(cmd.vm_id, name, cmd.generation))
    assert d.reply(f"deploy-{name}").error is None
    return cmd.vm_id


def tick(d: Driver, at: float) -> None:
    """Time passes; the nodes still connected heartbeat just before the tick."""
    d.now = at
    for node_id in list(d.sessions):
        d.heartbeat(node_id)
    d.feed(ev.Tick)


def failovers(d: Driver) -> list[FailoverRecord]:
    return list(d.store["failovers"].values())


def lose_n1(d: Driver) -> float:
    """n1 falls silent: its stream closes now (lost 10 s later, by default)."""
    heard = d.now
    d.disconnect("n1")
    return heard


def test_a_lost_nodes_vm_is_replaced_once_its_original_has_stopped_itself() -> None:
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm_id = deploy(d, "web", "n1", stop_after_s=15.0)
    stored = d.stored_vm(vm_id).spec.disconnect
    assert stored == DisconnectPolicy(replace_after_s=0.0, stop_after_s=15.0)  # defaults filled
    heard = lose_n1(d)
    tick(d, heard + 9.0)  # suspect, not lost
    assert not d.commands(c.CreateVM)[1:]
    tick(d, heard + 10.5)  # lost, but the original may run until heard + 15 + margin
    assert len(d.commands(c.CreateVM)) == 1
    assert "replaced in" in d.core.state.failover_waiting[vm_id]
    tick(d, heard + 15.0 + MARGIN + 0.1)
    create = d.sent(c.CreateVM, "n2")
    cmd = create.envelope.command
    assert isinstance(cmd, c.CreateVM) and cmd.generation == 2
    assert cmd.spec.disconnect.stop_after_s == 15.0  # the new node self-fences it too
    vm = d.stored_vm(vm_id)
    assert (vm.node_id, vm.generation) == ("n2", 2)  # persisted before the command went out
    (record,) = failovers(d)
    assert (record.source, record.target, record.from_generation, record.to_generation) == (
        "n1",
        "n2",
        1,
        2,
    )
    assert record.last_heard_at == heard and record.active
    d.answer(create, vm=status(vm_id, "web", 2))
    (record,) = failovers(d)
    assert record.outcome == "running" and record.running_at == d.now
    assert d.vm(vm_id).state is VMState.RUNNING
    # n1 returns with its self-paused original: it is destroyed, never resumed
    d.hello("n1", status(vm_id, "web", 1, VMState.PAUSED))
    delete = d.sent(c.DeleteVM, "n1")
    assert isinstance(delete.envelope.command, c.DeleteVM)
    assert delete.envelope.command.generation == 1
    assert not d.commands(c.ChangePower)


def test_a_vm_placement_cannot_put_elsewhere_waits_with_the_reasons() -> None:
    """Residency and the other constraints hold in a failover: a VM pinned to its node by a
    label stays recorded there, waiting, with the placement's reasons."""
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm_id = deploy(d, "pin-db", "n1", stop_after_s=11.0)
    heard = lose_n1(d)
    tick(d, heard + 14.0)
    waiting = d.core.state.failover_waiting[vm_id]
    assert waiting.startswith("cannot be placed:") and "label" in waiting, waiting
    vm = d.stored_vm(vm_id)
    assert (vm.node_id, vm.generation) == ("n1", 1) and not failovers(d)


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ({"replace_after_s": NEVER}, "waits for the node"),
        ({"stop_after_s": NEVER}, "not provably stopped"),
    ],
)
def test_a_vm_that_cannot_be_proven_stopped_waits_until_the_node_is_declared_dead(
    policy: dict[str, float], why: str
) -> None:
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm_id = deploy(d, "web", "n1", **policy)
    if "replace_after_s" in policy:  # waiting for the node: it keeps running on its own
        assert d.stored_vm(vm_id).spec.disconnect.stop_after_s == NEVER
    heard = lose_n1(d)
    tick(d, heard + 600.0)
    assert why in d.core.state.failover_waiting[vm_id]
    assert len(d.commands(c.CreateVM)) == 1
    d.feed(ev.FailOverRequested, node_id="n1", node_is_dead=True, stimulus_id="dead")
    reply = d.reply("dead")
    assert reply.error is None
    assert reply.value == [FailoverOutcome(vm_id, "web", target="n2")]
    assert d.stored_vm(vm_id).node_id == "n2"
    assert failovers(d)[0].reason == "operator: the node is dead"


def test_a_stop_after_a_healthy_node_could_reach_is_refused() -> None:
    """A healthy agent confirms its contact about once per heartbeat (5 s here): a VM asking
    to pause after 3 s alone would pause on a merely slow link."""
    d = Driver()
    d.hello("n1")
    spec = VMSpec("web", "tiny", 1, 128, disconnect=DisconnectPolicy(stop_after_s=3.0))
    d.feed(ev.DeployRequested, spec=spec, stimulus_id="short")
    error = d.reply("short").error
    assert isinstance(error, InvalidArgument) and "use at least 11s (or never)" in str(error)
    assert not d.commands(c.CreateVM)


def test_an_operator_failover_of_a_ready_node_is_refused() -> None:
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    deploy(d, "web", "n1")
    d.feed(ev.FailOverRequested, node_id="n1", node_is_dead=True, stimulus_id="no")
    error = d.reply("no").error
    assert isinstance(error, FailedPrecondition) and "is ready" in str(error)
    assert len(d.commands(c.CreateVM)) == 1 and not d.core.state.declared_dead


def test_failovers_are_rate_limited_and_the_rest_wait_their_turn() -> None:
    d = Driver()
    d.core.state.settings.failover = FailoverSettings(max_per_interval=2, interval_s=30.0)
    d.hello("n1")
    ids = [deploy(d, f"web-{i}", "n1", stop_after_s=11.0) for i in range(3)]
    d.hello("n2")
    heard = lose_n1(d)
    tick(d, heard + 14.0)
    moved = [i for i in ids if d.stored_vm(i).node_id == "n2"]
    (held,) = [i for i in ids if i not in moved]
    assert len(moved) == 2
    assert d.core.state.failover_waiting[held].startswith("rate limited: 2 failovers")
    tick(d, heard + 40.0)  # still inside the interval
    assert d.stored_vm(held).node_id == "n1"
    tick(d, heard + 45.0)
    assert d.stored_vm(held).node_id == "n2" and held not in d.core.state.failover_waiting


def test_a_node_back_before_its_vms_are_due_keeps_them() -> None:
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm_id = deploy(d, "web", "n1", stop_after_s=30.0)
    heard = lose_n1(d)
    tick(d, heard + 11.0)  # lost, but not due before heard + 32
    d.hello("n1", status(vm_id, "web", 1, VMState.PAUSED))  # it had paused itself
    power = d.sent(c.ChangePower, "n1").envelope.command  # the VM is still its: resumed
    assert isinstance(power, c.ChangePower) and power.action is c.PowerAction.RESUME
    tick(d, heard + 40.0)
    assert d.stored_vm(vm_id).node_id == "n1" and not failovers(d)
    assert "n1" not in d.core.state.lost_at


def test_after_a_restart_nothing_is_replaced_before_stop_after_from_the_start() -> None:
    """The restarted controller never heard the node: its agent may have heard the old
    controller until the restart, so stop_after counts from the start."""
    d = Driver()
    d.hello("n1")
    d.hello("n2")
    vm_id = deploy(d, "web", "n1", stop_after_s=30.0)
    d.now += 100.0
    d.restart()
    start = d.now
    d.hello("n2")
    tick(d, start + 15.0)  # n1 lost (never reconnected), but not provably stopped yet
    assert d.stored_vm(vm_id).node_id == "n1"
    tick(d, start + 30.0 + MARGIN + 0.5)
    assert d.stored_vm(vm_id).node_id == "n2"


def test_expected_failover_time_reflects_detection_and_policy() -> None:
    d = Driver()
    detection = detection_s(d.core.settings.detector, None, 5.0)
    assert 15.0 < detection < 30.0
    line = expected_failover(DisconnectPolicy(0.0, 20.0), detection, 10.0, 2.0)
    assert line.startswith(f"~{max(detection, 22.0):.0f}s after its node falls silent")
    assert "~22s after its stream closes" in line
    assert "never" in expected_failover(DisconnectPolicy(NEVER, NEVER), detection, 10.0, 2.0)
    assert "declares" in expected_failover(DisconnectPolicy(0.0, None), detection, 10.0, 2.0)


def test_a_node_whose_heartbeats_are_stuck_but_confirms_contact_is_not_failed_over() -> None:
    """A lossy link stalls the session's agent-to-controller half in TCP backoff: no heartbeat
    arrives for longer than the detector's limit, but ConfirmContact, on a connection of its
    own, still does. The node is alive, so nothing is replaced; once the confirmations stop
    too, the silence and the failover count from the last of them."""
    d = Driver()
    d.hello("n1")
    vm_id = deploy(d, "web", "n1", stop_after_s=15.0)
    d.hello("n2")
    stuck_at = d.now
    for t in range(5, 60, 5):  # heartbeats of n2 only; n1 confirms every interval
        d.now = stuck_at + t
        d.feed(
            ev.AgentContactConfirmed,
            node_id="n1",
            session_id=d.sessions["n1"],
            stimulus_id=f"confirm-{t}",
        )
        assert d.reply(f"confirm-{t}").value is True  # the agent may count from it
        d.heartbeat("n2")
        d.feed(ev.Tick)
        assert d.core.state.condition(d.node("n1"), d.now) == (NodeCondition.READY, ""), t
    assert not d.commands(c.CreateVM)[1:]
    confirmed, session = d.now, d.sessions["n1"]
    d.feed(ev.AgentContactConfirmed, node_id="n1", session_id="old", stimulus_id="stale")
    assert d.reply("stale").value is False  # not its current session: nothing counted
    for t in range(5, 65, 5):  # now n1 is silent on both paths
        d.now = confirmed + t
        d.heartbeat("n2")
        d.feed(ev.Tick)
    create = d.sent(c.CreateVM, "n2")
    assert isinstance(create.envelope.command, c.CreateVM)
    (record,) = failovers(d)
    assert record.last_heard_at == confirmed
    # once lost, its (closed) session's confirmation does not count: the agent fences
    d.feed(ev.AgentContactConfirmed, node_id="n1", session_id=session, stimulus_id="late")
    assert d.reply("late").value is False
    assert d.vm(vm_id).node_id == "n2"
