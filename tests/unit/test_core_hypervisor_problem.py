"""A node whose agent cannot read libvirt (libvirtd killed, restarting): the core shows it not
ready with the reason and its VMs unknown, changes nothing on it, and takes it back once its
agent reads libvirt again."""

from __future__ import annotations

from controller.core import events as ev
from shared import commands as c
from shared.domain import ImageInfo, NodeCondition, Utilization, VMState
from tests.unit.core_driver import INSTALLATION, Driver, node_info, status

PROBLEM = "libvirtd at qemu:///system unreachable (libvirtd closed the connection); reconnecting"


def heartbeat(d: Driver, node_id: str, *vms: object, problem: str = "") -> None:
    d.feed(
        ev.AgentHeartbeat,
        node_id=node_id,
        session_id=d.sessions[node_id],
        utilization=Utilization(),
        vms=vms,
        hypervisor_problem=problem,
    )


def test_a_node_without_libvirt_is_not_ready_and_its_vms_unknown() -> None:
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    heartbeat(d, "n1", problem=PROBLEM)
    condition, why = d.core.state.condition(d.node("n1"), d.now)
    assert condition is NodeCondition.NOT_READY and why == f"hypervisor unavailable: {PROBLEM}"
    assert d.vm(vm.id).state is VMState.UNKNOWN
    table = d.core.state.node_table(d.now)
    assert not table.ready[table.index["n1"]]  # placement skips it
    heartbeat(d, "n1", status(vm.id, "web"))  # libvirt back: what it reports counts again
    assert d.core.state.condition(d.node("n1"), d.now)[0] is NodeCondition.READY
    assert d.vm(vm.id).state is VMState.RUNNING


def test_a_hello_without_inventory_changes_nothing_on_the_node() -> None:
    """No VM list is not "no VMs": nothing is re-created, nothing deleted, no orphan."""
    d = Driver()
    d.hello("n1")
    vm = d.deploy("web", "n1")
    creates = len(d.commands(c.CreateVM))
    d.sessions["n1"] = "n1-again"
    d.feed(
        ev.AgentHello,
        node_id="n1",
        session_id="n1-again",
        info=node_info("n1"),
        images=(ImageInfo("tiny", "kernel", "x86_64"),),
        vms=(),
        known_installation_id=INSTALLATION,
        hypervisor_problem=PROBLEM,
    )
    assert len(d.commands(c.CreateVM)) == creates and not d.commands(c.DeleteVM)
    assert d.vm(vm.id).state is VMState.UNKNOWN
    assert d.core.state.condition(d.node("n1"), d.now)[0] is NodeCondition.NOT_READY
    d.hello("n1", status(vm.id, "web"))  # the session after libvirt came back
    assert d.core.state.condition(d.node("n1"), d.now)[0] is NodeCondition.READY
    assert d.vm(vm.id).state is VMState.RUNNING
