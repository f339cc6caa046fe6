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
from agent.credentials import NodeCredentials
from agent.enrolment import enrol
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from agent.session import AgentSession
from controller.alerts import AlertsConfig
from controller.config import (
    ControllerConfig,
    EdgeComputingConfig,
    FailureDetectorConfig,
    PlacementWeights,
)
from controller.pki import Pki, init_pki, pki_of
from controller.pki_cli import ADMIN_DIR, write_client_set
from controller.server import ControllerServer
from shared.config import Seconds
from shared.domain import EdgeType
from shared.identity import ClientIdentity, Role
from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import admin_pb2_grpc, edge_api_pb2_grpc

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
    enrol_port: int = field(default_factory=free_port)
    heartbeat_interval: float = 0.5
    server: ControllerServer | None = None
    agents: dict[str, RunningAgent] = field(default_factory=dict)
    channel: grpc.aio.Channel | None = None
    placement_weights: PlacementWeights = field(default_factory=PlacementWeights)
    secure: bool = False  # mutual TLS: a CA in the state dir, agents enrol with join tokens
    node_certificate_lifetime: float = 86400.0
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # controller.alerts
    failure_detector: FailureDetectorConfig = field(default_factory=FailureDetectorConfig)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def api(self) -> edge_api_pb2_grpc.EdgeAPIStub:
        return edge_api_pb2_grpc.EdgeAPIStub(self._admin_channel())

    @property
    def admin(self) -> admin_pb2_grpc.AdminAPIStub:
        return admin_pb2_grpc.AdminAPIStub(self._admin_channel())

    def _admin_channel(self) -> grpc.aio.Channel:
        if self.channel is None:
            if self.secure:
                directory = pki_of(self.tmp / "controller").directory / ADMIN_DIR
                self.channel = self.client_channel(directory)
            else:
                self.channel = grpc.aio.insecure_channel(self.address)
        return self.channel

    @property
    def pki(self) -> Pki:
        return pki_of(self.tmp / "controller")

    def client_channel(self, directory: Path, address: str = "") -> grpc.aio.Channel:
        """A channel with the client credentials `directory` holds (pki_cli's layout)."""
        ca, cert, key = (
            (directory / n).read_bytes() for n in ("ca.crt", "client.crt", "client.key")
        )
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.aio.secure_channel(address or self.address, credentials)

    def issue_client(self, name: str, role: Role) -> Path:
        directory = self.tmp / "clients" / name
        write_client_set(directory, self.pki, ClientIdentity(name, role))
        return directory

    async def join_token(self, node_id: str = "", uses: int = 1, ttl: int = 600) -> str:
        created = await self.admin.CreateJoinToken(
            adpb.CreateJoinTokenRequest(node_id=node_id, uses=uses, ttl_seconds=ttl)
        )
        return created.secret_token

    async def start_controller(
        self, state_dir: Path | None = None, *, new_installation: bool = False
    ) -> ControllerServer:
        state_dir = state_dir or self.tmp / "controller"
        if self.secure and not pki_of(state_dir).ca_cert.exists():
            pki = init_pki(state_dir, ["127.0.0.1"])
            write_client_set(pki.directory / ADMIN_DIR, pki, ClientIdentity("admin", Role.ADMIN))
        config = ControllerConfig(
            listen=self.address,
            enrol_listen=f"127.0.0.1:{self.enrol_port}",
            node_certificate_lifetime=Seconds(self.node_certificate_lifetime),
            state_dir=state_dir,
            new_installation=new_installation,
            heartbeat_interval=Seconds(self.heartbeat_interval),
            command_timeout=Seconds(20.0),
            deploy_timeout=Seconds(60.0),
            insecure=not self.secure,
            controller_id="ctl-test",
            metrics_listen="127.0.0.1:0",
            alerts=self.alerts,
            failure_detector=self.failure_detector,
            dashboard_listen="127.0.0.1:0",
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
        credentials: NodeCredentials | None = None,
        labels: dict[str, str] | None = None,
    ) -> RunningAgent:
        config = AgentConfig(
            node_id=node_id,
            controller=self.address,
            libvirt_uri=uri,
            migration_host=migration_host,
            edge_type=edge_type,
            location=location,
            cost_per_hour=cost_per_hour,
            labels={"site": node_id, **(labels or {})},
            capacity=capacity or CapacityConfig(storage_gib=100),
            state_dir=self.tmp / "agents" / node_id,
            images_dir=images_dir,
            heartbeat_interval=Seconds(self.heartbeat_interval),
            reconnect_max=Seconds(1.0),
            insecure=not self.secure,
        )
        if self.secure and credentials is None:
            credentials = await self.enrol(node_id)
        hypervisor = await asyncio.to_thread(LibvirtHypervisor, uri, "auto", str(images_dir))
        session = AgentSession(
            config, hypervisor, ImageCatalog(images_dir), credentials=credentials
        )
        agent = RunningAgent(session, hypervisor, asyncio.create_task(session.run_forever()))
        self.agents[node_id] = agent
        if wait:
            await asyncio.wait_for(session.connected.wait(), 20)
        return agent

    def agent_state_dir(self, node_id: str) -> Path:
        return self.tmp / "agents" / node_id

    async def enrol(self, node_id: str, token: str = "", pin: str = "") -> NodeCredentials:
        """Enrol as the agent does (agent/enrolment.py), with a new token unless given."""
        return await enrol(
            self.agent_state_dir(node_id),
            node_id,
            self.address,
            f"127.0.0.1:{self.enrol_port}",
            token or await self.join_token(node_id),
            pin or self.pki.pin(),
        )

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
