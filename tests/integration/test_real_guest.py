"""A real controller and agent on loopback deploy a real QEMU guest and read its console."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.libvirtd import PrivateLibvirtd
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually

pytestmark = pytest.mark.qemu


async def test_deploy_real_guest_and_see_its_console(
    cluster: Cluster, private_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> None:
    agent = await cluster.start_agent("edge-qemu", private_libvirtd.uri, tiny_image_dir)
    node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-qemu"))
    assert "tcg" in node.info.hypervisor or "kvm" in node.info.hypervisor

    vm = await cluster.api.DeployVM(
        epb.DeployVMRequest(
            spec=pb.VMSpec(name="guest-1", image="tiny", vcpus=1, memory_mib=128),
            request_id="real-1",
        )
    )
    try:
        assert vm.state == pb.VM_STATE_RUNNING
        on_node = agent.hypervisor.get_vm(vm.id)
        assert on_node is not None and on_node.state.value == "running"

        console = ""

        async def booted() -> bool:
            nonlocal console
            reply = await cluster.api.GetVMConsole(epb.GetVMConsoleRequest(name_or_id="guest-1"))
            console = reply.text
            return "NovaCron guest guest-1 booted" in console

        await eventually(booted, 90, "the guest's first console line", interval=0.5)
        assert reply_node(console)

        paused = await cluster.api.SuspendVM(epb.VMRef(name_or_id="guest-1"))
        assert paused.state == pb.VM_STATE_PAUSED
        resumed = await cluster.api.ResumeVM(epb.VMRef(name_or_id="guest-1"))
        assert resumed.state == pb.VM_STATE_RUNNING
    finally:
        await cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="guest-1"))
    assert agent.hypervisor.get_vm(vm.id) is None


def reply_node(console: str) -> bool:
    """The console came from the guest's kernel, not from us: it names the kernel release."""
    return "kernel " in console.split("NovaCron guest guest-1 booted", 1)[1][:40]
