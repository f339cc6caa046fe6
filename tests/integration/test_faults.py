"""Faults on the control path: a silent or vanishing agent, a restarted controller, drift."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


def spec(name: str = "web-1") -> pb.VMSpec:
    return pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)


class ScriptedAgent:
    """Speaks the session protocol by hand, to misbehave in ways a real agent would not."""

    def __init__(self, address: str, node_id: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.outbox: asyncio.Queue[apb.AgentMessage | None] = asyncio.Queue()
        self.commands: asyncio.Queue[apb.Command] = asyncio.Queue()
        self.outbox.put_nowait(
            apb.AgentMessage(
                hello=apb.Hello(
                    node=pb.NodeInfo(
                        node_id=node_id,
                        arch="x86_64",
                        edge_type=pb.EDGE_TYPE_IOT,
                        capacity=pb.Capacity(vcpus=4, memory_mib=4096, storage_gib=10),
                    ),
                    images=[pb.ImageInfo(name="tiny", kind="kernel", arch="x86_64")],
                )
            )
        )
        self.call = agent_pb2_grpc.AgentSessionStub(self.channel).Connect(self._drain())
        self.reader = asyncio.create_task(self._read())

    async def _drain(self) -> AsyncIterator[apb.AgentMessage]:
        while (message := await self.outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        async for message in self.call:
            if message.WhichOneof("body") == "command":
                self.commands.put_nowait(message.command)

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.channel.close()


async def wait_ready(cluster: Cluster, node_id: str) -> None:
    async def ready() -> bool:
        nodes = (await cluster.api.ListNodes(epb.ListNodesRequest())).nodes
        return any(
            n.info.node_id == node_id and n.condition == pb.NODE_CONDITION_READY for n in nodes
        )

    await eventually(ready, 10, f"{node_id} ready")


async def test_command_times_out_and_state_is_unknown(cluster: Cluster) -> None:
    silent = ScriptedAgent(cluster.address, "gw-1")
    try:
        await wait_ready(cluster, "gw-1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec(), timeout_seconds=1))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer" in (info.value.details() or "")
        command = silent.commands.get_nowait()
        assert command.WhichOneof("action") == "create"
        assert command.HasField("deadline")
        vm = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
        assert vm.state == pb.VM_STATE_UNKNOWN
        assert vm.node_id == "gw-1"
    finally:
        await silent.close()


async def test_agent_vanishing_mid_command_leaves_state_unknown(cluster: Cluster) -> None:
    flaky = ScriptedAgent(cluster.address, "gw-1")
    await wait_ready(cluster, "gw-1")
    deploy = asyncio.ensure_future(cluster.api.DeployVM(epb.DeployVMRequest(spec=spec())))
    await asyncio.wait_for(flaky.commands.get(), 10)
    await flaky.close()  # gone before answering
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await deploy
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    vm = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
    assert vm.state == pb.VM_STATE_UNKNOWN


async def test_hello_must_come_first(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        call = agent_pb2_grpc.AgentSessionStub(channel).Connect(
            iter([apb.AgentMessage(heartbeat=apb.Heartbeat(seq=1))])
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_controller_restart_keeps_state_and_reconciles(
    cluster: Cluster, images: Path
) -> None:
    agent = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images)
    vm = await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec()))
    sessions_before = agent.session.sessions
    await cluster.stop_controller()
    await cluster.start_controller()

    async def running_again() -> bool:
        got = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="web-1"))
        return got.state == pb.VM_STATE_RUNNING and agent.session.sessions > sessions_before

    await eventually(running_again, 20, "the agent to reconnect and report the VM")
    vms = (await cluster.api.ListVMs(epb.ListVMsRequest())).vms
    assert [v.id for v in vms] == [vm.id]
    assert [v.vm_id for v in agent.hypervisor.list_vms()] == [vm.id]
    node = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-a"))
    assert node.condition == pb.NODE_CONDITION_READY


async def test_reconnect_recreates_missing_and_removes_deleted(
    cluster: Cluster, images: Path
) -> None:
    uri = cluster.test_uri("edge-a")
    agent = await cluster.start_agent("edge-a", uri, images)
    keep = await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec("keep")))
    drop = await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec("drop")))
    hypervisor = agent.hypervisor
    # The agent goes away but its hypervisor (and the VMs on it) stay, as after a partition.
    await cluster.stop_agent("edge-a", close_hypervisor=False)
    # While it is away: someone removes "keep" by hand, and the operator deletes "drop".
    await asyncio.to_thread(hypervisor.delete, keep.id)
    pending = (await cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="drop"))).vm
    assert pending.state == pb.VM_STATE_DELETING
    assert "reconnects" in pending.state_reason
    assert hypervisor.get_vm(drop.id) is not None

    # Back online with the same hypervisor: the controller re-compares and fixes both.
    from agent.images.catalog import ImageCatalog
    from agent.session import AgentSession
    from tests.integration.harness import RunningAgent

    session = AgentSession(agent.session.config, hypervisor, ImageCatalog(images))
    cluster.agents["edge-a"] = RunningAgent(
        session, hypervisor, asyncio.create_task(session.run_forever())
    )

    async def converged() -> bool:
        names = sorted(v.name for v in hypervisor.list_vms())
        vms = (await cluster.api.ListVMs(epb.ListVMsRequest())).vms
        return (
            names == ["keep"]
            and [v.spec.name for v in vms] == ["keep"]
            and (vms[0].state == pb.VM_STATE_RUNNING)
        )

    await eventually(converged, 20, "keep re-created and drop removed")
    assert hypervisor.get_vm(keep.id) is not None
