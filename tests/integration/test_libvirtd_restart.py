"""Issue 10 item 5: libvirtd killed with SIGKILL and started again, under a real agent with a
real guest. The agent notices, says so (the node is not ready, its VM unknown, never
"running"), reconnects by itself, and the controller sees the VM again. QEMU runs on
throughout: its process is the witness, and `virsh list` on the restarted daemon."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from lab.libvirtd import PrivateLibvirtd
from lab.processes import free_port, node_ready, start_agent, start_controller, wait_until
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually
from tests.integration.libvirtd_faults import alive, kill, qemu_pid, restart
from tests.integration.test_state_faults import deploy, virsh_names


@pytest.mark.qemu
async def test_the_agent_gets_libvirt_back_by_itself(
    cluster: Cluster, own_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> None:
    agent = await cluster.start_agent("edge-k", own_libvirtd.uri, tiny_image_dir)
    vm = await deploy(cluster, "survivor")
    assert vm.state == pb.VM_STATE_RUNNING
    guest = qemu_pid(own_libvirtd, "survivor")
    sessions = agent.session.sessions

    kill(own_libvirtd)

    async def degraded() -> bool:
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-k"))
        shown = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="survivor"))
        return (
            node.condition == pb.NODE_CONDITION_NOT_READY
            and "hypervisor unavailable" in node.condition_reason
            and shown.state == pb.VM_STATE_UNKNOWN
        )

    await eventually(degraded, 30, "the node not ready and its VM unknown")
    assert alive(guest), "QEMU must run on without libvirtd"
    spec = pb.VMSpec(name="not-now", image="tiny", vcpus=1, memory_mib=128)
    with pytest.raises(Exception, match="nodes fit"):  # placement skips the node
        await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec))

    restart(own_libvirtd)

    async def recovered() -> bool:
        node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-k"))
        shown = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="survivor"))
        return node.condition == pb.NODE_CONDITION_READY and shown.state == pb.VM_STATE_RUNNING

    await eventually(recovered, 60, "the node ready and its VM running again")
    assert agent.session.sessions > sessions  # a new session: a full inventory was compared
    assert not agent.hypervisor.problem()
    assert qemu_pid(own_libvirtd, "survivor") == guest  # the same guest, never restarted
    assert "nc-survivor" in virsh_names(own_libvirtd.uri)
    # and the reconnected driver works: events and commands
    suspended = await cluster.api.SuspendVM(epb.VMRef(name_or_id="survivor"))
    assert suspended.state == pb.VM_STATE_PAUSED


@pytest.mark.qemu
def test_an_agent_stopped_for_40s_recovers_its_libvirt_connection_and_session(
    tmp_path: Path, own_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> None:
    """SIGSTOP longer than libvirtd's keepalive (it drops a silent client after 5 s + 5 x 5 s)
    and the controller's patience: after SIGCONT both connections are gone; the agent gets
    both back (it used to exit, code 2)."""
    address = f"127.0.0.1:{free_port()}"
    controller = start_controller(tmp_path, address, "--metrics-listen", "")
    agent = start_agent(tmp_path, address, "edge-s", own_libvirtd.uri, tiny_image_dir)
    try:
        wait_until(lambda: node_ready(address, "edge-s"), 60, "edge-s ready", [controller, agent])
        os.kill(agent.process.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: not node_ready(address, "edge-s"), 60, "edge-s not ready")
            time.sleep(40)  # the fault itself lasts 40 s (not a wait for something to happen)
        finally:
            os.kill(agent.process.pid, signal.SIGCONT)
        wait_until(
            lambda: node_ready(address, "edge-s"), 90, "edge-s ready again", [agent, controller]
        )
        assert agent.alive()
        log = agent.log_path.read_text()
        assert "libvirt_connection_lost" in log and "libvirt_reconnected" in log, log[-3000:]
    finally:
        for daemon in (agent, controller):
            daemon.stop()
