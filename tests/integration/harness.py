"""A real controller and real agents in one process, talking gRPC over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.config import AgentConfig, CapacityConfig, LocationConfig
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from agent.session import AgentSession
from controller.config import ControllerConfig, EdgeComputingConfig, PlacementWeights
from controller.server import ControllerServer
from shared.config import Seconds
from shared.domain import EdgeType
from shared.pb.v1 import edge_api_pb2_grpc

TEST_NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{vcpus}</active><max>{vcpus}</max></cpu>
  <memory>{memory_kib}</memory>
</node>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Wait on a condition with a deadline (never a bare sleep for synchronisation)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def make_fake_kernel_images(root: Path) -> Path:
    """An image directory for libvirt's test driver, which never reads the kernel it is given."""
    image = root / "tiny"
    image.mkdir(parents=True, exist_ok=True)
    (image / "vmlinuz").write_bytes(b"not a kernel")
    (image / "initrd.img").write_bytes(b"not an initrd")
    (image / "image.yaml").write_text(
        "name: tiny\nkind: kernel\narch: x86_64\nkernel: vmlinuz\ninitrd: initrd.img\n"
        "cmdline: console=ttyS0\n"
    )
    return root


@dataclass
class RunningAgent:
    session: AgentSession
    hypervisor: LibvirtHypervisor
    task: asyncio.Task[None]


@dataclass
class Cluster:
    tmp: Path
    port: int = field(default_factory=free_port)
    heartbeat_interval: float = 0.5
    server: ControllerServer | None = None
    agents: dict[str, RunningAgent] = field(default_factory=dict)
    channel: grpc.aio.Channel | None = None
    placement_weights: PlacementWeights = field(default_factory=PlacementWeights)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def api(self) -> edge_api_pb2_grpc.EdgeAPIStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address)
        return edge_api_pb2_grpc.EdgeAPIStub(self.channel)

    async def start_controller(
        self, state_dir: Path | None = None, *, new_installation: bool = False
    ) -> ControllerServer:
        config = ControllerConfig(
            listen=self.address,
            state_dir=state_dir or self.tmp / "controller",
            new_installation=new_installation,
            heartbeat_interval=Seconds(self.heartbeat_interval),
            command_timeout=Seconds(20.0),
            deploy_timeout=Seconds(60.0),
            insecure=True,
            controller_id="ctl-test",
            metrics_listen="127.0.0.1:0",
            # no head-room buffer: the tests reason in whole MiB
            edge_computing=EdgeComputingConfig(
                edge_resource_buffer=0.0, placement_weights=self.placement_weights
            ),
        )
        self.server = ControllerServer(config)
        await self.server.start()
        return self.server

    async def stop_controller(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
            self.server = None

    def test_uri(self, node_id: str, vcpus: int = 8, memory_mib: int = 8192) -> str:
        path = self.tmp / f"{node_id}-libvirt-test.xml"
        path.write_text(TEST_NODE_XML.format(vcpus=vcpus, memory_kib=memory_mib * 1024))
        return f"test://{path}"

    async def start_agent(
        self,
        node_id: str,
        uri: str,
        images_dir: Path,
        *,
        capacity: CapacityConfig | None = None,
        wait: bool = True,
        location: LocationConfig | None = None,
        edge_type: EdgeType = EdgeType.MEC,
        cost_per_hour: float = 0.0,
        migration_host: str = "",
    ) -> RunningAgent:
        config = AgentConfig(
            node_id=node_id,
            controller=self.address,
            libvirt_uri=uri,
            migration_host=migration_host,
            edge_type=edge_type,
            location=location,
            cost_per_hour=cost_per_hour,
            labels={"site": node_id},
            capacity=capacity or CapacityConfig(storage_gib=100),
            state_dir=self.tmp / "agents" / node_id,
            images_dir=images_dir,
            heartbeat_interval=Seconds(self.heartbeat_interval),
            reconnect_max=Seconds(1.0),
            insecure=True,
        )
        hypervisor = await asyncio.to_thread(LibvirtHypervisor, uri, "auto", str(images_dir))
        session = AgentSession(config, hypervisor, ImageCatalog(images_dir))
        agent = RunningAgent(session, hypervisor, asyncio.create_task(session.run_forever()))
        self.agents[node_id] = agent
        if wait:
            await asyncio.wait_for(session.connected.wait(), 20)
        return agent

    async def stop_agent(self, node_id: str, close_hypervisor: bool = True) -> None:
        agent = self.agents.pop(node_id)
        agent.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent.task
        await agent.session.close()
        if close_hypervisor:
            await asyncio.to_thread(agent.hypervisor.close)

    async def close(self) -> None:
        for node_id in list(self.agents):
            await self.stop_agent(node_id)
        await self.stop_controller()
        if self.channel is not None:
            await self.channel.close()
