"""The agent's side of the session: dial out, say hello with the full inventory, heartbeat,
run commands, forward VM events, and reconnect with jittered backoff forever."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
import structlog

from agent import __version__
from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.contact import ControllerContact
from agent.contact_check import confirm_when_quiet
from agent.credentials import NodeCredentials, open_channel
from agent.desired_cache import HEARTBEAT_INTERVAL, PROBE_INTERVAL, DesiredStateCache
from agent.executor import CommandExecutor
from agent.hypervisor.base import Hypervisor
from agent.hypervisor_watch import HypervisorWatch
from agent.images.catalog import ImageCatalog
from agent.installation import InstallationGuard
from agent.latency import LatencyWindow, Prober, probe_gap
from agent.mesh import MeshManager
from agent.migration_gateway import migration_gateway
from agent.offline import OfflineRestore
from agent.peer_probe import PeerProber, reachable_peers
from agent.renewal import renew_when_due
from agent.resources import ResourceSampler
from agent.self_fence import SelfFence
from shared import convert
from shared.aio import cancel_and_wait
from shared.arch import host_arch
from shared.commands import MigrationProgress
from shared.domain import Capacity, LatencyStats, NodeInfo, VMStatus
from shared.errors import NovaCronError
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = 1
ROTATION_QUIET_S = 3.0
CONTROLLER_TARGET = "controller"
PROBE_TIMEOUT_S = 5.0  # a probe unanswered this long counts as lost
TASKS_END_WITHIN_S = 5.0  # a session's own tasks, once it ends; then the next one starts
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    # gRPC also sets TCP_USER_TIMEOUT to this: unacknowledged data older than it ends the
    # connection. 5 s ended sessions within seconds on a 30 % loss link; whether a node
    # is lost is the failure detector's call (controller/core/detector.py), not TCP's.
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class AgentSession:
    def __init__(
        self,
        config: AgentConfig,
        hypervisor: Hypervisor,
        catalog: ImageCatalog,
        sampler: ResourceSampler | None = None,
        mesh: MeshManager | None = None,
        credentials: NodeCredentials | None = None,  # None: --insecure
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.hypervisor = hypervisor
        self.catalog = catalog
        self.sampler = sampler or ResourceSampler(config.state_dir)
        self.mesh = mesh
        self.installation = InstallationGuard(config.state_dir)
        self.desired = DesiredStateCache(config.state_dir)
        self.peer_prober = PeerProber()
        self.executor = CommandExecutor(
            hypervisor,
            catalog,
            config.state_dir,
            vmnet=mesh.vmnet if mesh else None,
            migration_host=config.migration_host,
            migration_class_mbit=config.qos.migration_mbit if config.qos.enabled else 0.0,
            mesh=mesh,
            installation=self.installation,
            on_progress=self._send_progress,
            on_key_rotated=self._key_rotated,
            desired=self.desired,
            gateway=migration_gateway(config.libvirt_uri) if mesh else None,
        )
        cached = self.desired.settings()  # the controller's, from its last welcome
        self.heartbeat_interval: float = cached.get(HEARTBEAT_INTERVAL, config.heartbeat_interval)
        self.probe_interval: float = cached.get(PROBE_INTERVAL, config.probe_interval)
        self.controller_probe = Prober(
            LatencyWindow(CONTROLLER_TARGET), PROBE_TIMEOUT_S, time.monotonic
        )
        self.connected = asyncio.Event()
        self.sessions = 0
        self.contact = ControllerContact(config.state_dir)
        self.self_fence = SelfFence(hypervisor, self.contact, on_fenced=self.restart_session)
        self.hypervisor_watch = HypervisorWatch(hypervisor, on_back=self.restart_session)
        self.offline = OfflineRestore(hypervisor, self.desired, self.contact, mesh)
        self._info: NodeInfo | None = None  # the last one read, for a hello without libvirt
        self._outbox: asyncio.Queue[apb.AgentMessage | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.log = log.bind(node_id=config.node_id)

    # ------------------------------------------------------------------ inventory

    def node_info(self) -> NodeInfo:
        try:
            self._info = self._read_node_info()
        except NovaCronError:
            if self._info is None:
                raise
        return self._info

    def _read_node_info(self) -> NodeInfo:
        host = self.hypervisor.host_info()
        cap = self.config.capacity
        capacity = Capacity(
            vcpus=cap.vcpus or host.capacity.vcpus,
            memory_mib=cap.memory_mib or host.capacity.memory_mib,
            storage_gib=cap.storage_gib or self.sampler.storage_gib(),
        )
        return NodeInfo(
            node_id=self.config.node_id,
            hostname=socket.gethostname(),
            arch=host_arch(),  # the agent's machine; a guest takes its image's
            edge_type=self.config.edge_type,
            capacity=capacity,
            location=self.config.location.to_domain() if self.config.location else None,
            labels=dict(self.config.labels),
            hypervisor=host.hypervisor,
            agent_version=__version__,
            cost_per_hour=self.config.cost_per_hour,
        )

    def hello(self) -> apb.AgentMessage:
        """Blocking (libvirt, disk): built off the event loop. Without libvirt it says so
        and lists nothing, which the controller does not take for "no VMs"."""
        problem = self.hypervisor.problem()
        vms: list[VMStatus] = []
        if not problem:
            try:
                vms = self.hypervisor.list_vms()
            except NovaCronError as err:
                problem = str(err)
        return apb.AgentMessage(
            hello=apb.Hello(
                hypervisor_problem=problem,
                node=convert.node_info_to_pb(self.node_info()),
                vms=[convert.vm_status_to_pb(v) for v in vms],
                images=[convert.image_to_pb(i) for i in self.catalog.list()],
                protocol_version=PROTOCOL_VERSION,
                mesh=convert.mesh_identity_to_pb(self.mesh.identity()) if self.mesh else None,
                known_installation_id=self.installation.known,
            )
        )

    def heartbeat(
        self, latencies: list[LatencyStats], vms: list[VMStatus], problem: str = ""
    ) -> apb.AgentMessage:
        """Blocking (psutil, WireGuard): built off the event loop, with the latencies read on
        it (the probe windows belong to the loop) and the VM list passed in (see _heartbeats)."""
        self._seq += 1
        return apb.AgentMessage(
            heartbeat=apb.Heartbeat(
                seq=self._seq,
                sent_at=convert.timestamp(time.time()),
                utilization=convert.utilization_to_pb(self.sampler.sample()),
                vms=[] if problem else [convert.vm_status_to_pb(v) for v in vms],
                hypervisor_problem=problem,
                latencies=[convert.latency_to_pb(s) for s in latencies],
                mesh=convert.mesh_status_to_pb(self.mesh.status()) if self.mesh else None,
            )
        )

    def latencies(self) -> list[LatencyStats]:
        windows = [self.controller_probe.window, *self.peer_prober.windows()]
        return [stats for w in windows if (stats := w.stats()) is not None]

    # ------------------------------------------------------------------ run

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.hypervisor.subscribe(self._on_vm_event)
        self._spawn(self.self_fence.run_forever())
        self._spawn(self.hypervisor_watch.run_forever())
        self._spawn(self.offline.after_grace(self.connected, self.config.offline_grace))
        if self.mesh is not None:
            await self.peer_prober.start()
        backoff = Backoff(cap=self.config.reconnect_max)
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
                self.log.warning("controller closed the session")
            except grpc.aio.AioRpcError as exc:
                self.log.warning(
                    "session failed", code=exc.code().name, details=exc.details() or ""
                )
            except (OSError, ConnectionError, NovaCronError) as exc:  # e.g. no libvirt yet
                self.log.warning("session failed", error=str(exc))
            if time.monotonic() - started > 2 * self.heartbeat_interval:
                backoff.reset()  # a session that lived is not a failure streak
            delay = backoff.next_delay()
            self.log.info(
                "reconnecting", delay_s=round(delay, 2), controller=self.config.controller
            )
            await asyncio.sleep(delay)

    async def run_once(self) -> None:
        """One session, until the stream ends."""
        outbox: asyncio.Queue[apb.AgentMessage | None] = asyncio.Queue()
        outbox.put_nowait(await asyncio.to_thread(self.hello))
        self.contact.sent_report()
        hello_at = self.contact.now()
        async with open_channel(
            self.config.controller, self.credentials, CHANNEL_OPTIONS
        ) as channel:
            stub = agent_pb2_grpc.AgentSessionStub(channel)
            call = stub.Connect(self._drain(outbox))
            background: list[asyncio.Task[None]] = []
            try:
                async for message in call:
                    kind = message.WhichOneof("body")
                    if kind == "welcome":
                        welcome = message.welcome
                        if welcome.heartbeat_interval_ms:
                            self.heartbeat_interval = welcome.heartbeat_interval_ms / 1000
                        if welcome.probe_interval_ms:
                            self.probe_interval = welcome.probe_interval_ms / 1000
                        await asyncio.to_thread(
                            self.installation.welcome, welcome.installation_id, welcome.take_over
                        )
                        given = {HEARTBEAT_INTERVAL: welcome.heartbeat_interval_ms / 1000}
                        given[PROBE_INTERVAL] = welcome.probe_interval_ms / 1000
                        await asyncio.to_thread(self.desired.remember_settings, given)
                        self._outbox = outbox
                        self.contact.welcomed(hello_at)
                        self.sessions += 1
                        self.connected.set()
                        self.log.info(
                            "connected",
                            controller_id=message.welcome.controller_id,
                            installation_id=welcome.installation_id,
                            heartbeat_interval_s=self.heartbeat_interval,
                        )
                        background.append(asyncio.create_task(self._heartbeats(outbox)))
                        background.append(asyncio.create_task(self._probes(outbox)))
                        background.append(
                            asyncio.create_task(confirm_when_quiet(self, welcome.session_id))
                        )
                        if self.credentials is not None:
                            renewal = renew_when_due(
                                self.credentials, channel, self.config, self._renewed
                            )
                            background.append(asyncio.create_task(renewal))
                    elif kind == "command":
                        self._spawn(self._run_command(message.command, outbox))
                    elif kind == "pong":
                        self.controller_probe.answered(message.pong.seq)
                        self.contact.ponged(message.pong.seq)
            finally:
                self.contact.session_ended()
                self.connected.clear()
                self._outbox = None
                outbox.put_nowait(None)
                self.controller_probe.reset()
                stuck = await cancel_and_wait(background, TASKS_END_WITHIN_S)
                if stuck:  # a bug; the next session starts anyway (they end with the process)
                    self.log.error("session tasks ignored their cancellation", tasks=stuck)
                call.cancel()

    def restart_session(self, why: str = "after self-fencing") -> None:
        """End the session: after self-fencing, the next hello has the controller decide."""
        if self._outbox is not None:  # ends our half of the stream; the controller then ends
            self.log.warning("restarting the session", why=why)
            self._outbox.put_nowait(None)  # its half (or keepalive ends a dead link)

    def _renewed(self, new: NodeCredentials) -> None:
        self.credentials = new  # the next session's channel presents the new certificate
        self.restart_session("with the renewed certificate")

    async def close(self) -> None:
        self.peer_prober.close()
        await self.executor.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ internals

    @staticmethod
    async def _drain(
        outbox: asyncio.Queue[apb.AgentMessage | None],
    ) -> AsyncIterator[apb.AgentMessage]:
        while (message := await outbox.get()) is not None:
            yield message

    async def _heartbeats(self, outbox: asyncio.Queue[apb.AgentMessage | None]) -> None:
        """A heartbeat never waits for libvirt: listing a domain that is being destroyed or
        migrated blocks for seconds, and a late heartbeat makes the controller give up on the
        node. The listing runs beside; a beat carries the latest finished one. Beats keep a
        fixed rate (the work of one is not added to the interval): the controller's detector
        learns the link's jitter from them, and this process's own delays are not the link's."""
        vms: list[VMStatus] = []
        listing: asyncio.Future[list[VMStatus]] | None = None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if listing is None or listing.done():
                if listing is not None and listing.exception() is None:
                    vms = listing.result()
                listing = asyncio.ensure_future(asyncio.to_thread(self.hypervisor.list_vms))
                listing.add_done_callback(_retrieve)  # a session may end before it does
                with contextlib.suppress(TimeoutError, NovaCronError):
                    async with asyncio.timeout(self.heartbeat_interval / 2):  # not wait_for:
                        vms = await asyncio.shield(listing)  # shared/aio.py says why
            problem = await asyncio.to_thread(self.hypervisor.problem)
            message = await asyncio.to_thread(self.heartbeat, self.latencies(), vms, problem)
            if self.mesh is not None:
                self.peer_prober.set_peers(reachable_peers(self.mesh, message.heartbeat.mesh))
            outbox.put_nowait(message)
            self.contact.sent_heartbeat(message.heartbeat.seq)
            self._ping(outbox)  # its pong confirms this beat: self-fencing counts from it
            due = max(due + self.heartbeat_interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _probes(self, outbox: asyncio.Queue[apb.AgentMessage | None]) -> None:
        """RTT to the controller over the session itself, so it includes what the control
        path really costs (WAN, TLS, gRPC), not just ICMP; and to every mesh peer over the
        tunnel. Rounds are spaced randomly around the interval (`probe_gap`)."""
        rng = random.Random()
        while True:
            self._ping(outbox)
            self.peer_prober.probe_all()
            await asyncio.sleep(probe_gap(self.probe_interval, rng))

    def _ping(self, outbox: asyncio.Queue[apb.AgentMessage | None]) -> None:
        seq = self.controller_probe.next_probe()
        outbox.put_nowait(apb.AgentMessage(ping=apb.Ping(seq=seq)))
        self.contact.sent_ping(seq)

    async def _run_command(
        self, command: apb.Command, outbox: asyncio.Queue[apb.AgentMessage | None]
    ) -> None:
        try:
            envelope = convert.envelope_from_pb(command)
        except NovaCronError as exc:
            self.log.warning("command refused", command_id=command.id, error=str(exc))
            result = self.executor.refuse(command.id, exc)
        else:
            result = await self.executor.execute(envelope)
        # Sent on the session it came from; if that one ended, the controller re-compares on
        # the next hello instead of waiting for this result.
        outbox.put_nowait(apb.AgentMessage(result=convert.result_to_pb(result)))

    def _key_rotated(self) -> None:
        # Our peers still know the old key until the controller has told them; a handshake we
        # start before then is dropped and WireGuard retries only after REKEY_TIMEOUT (5 s).
        # Let the peers, once updated, start them instead.
        self.peer_prober.hold(ROTATION_QUIET_S)

    def _send_progress(self, progress: MigrationProgress) -> None:
        """The executor's progress sink (on the event loop): up the current session, if any."""
        if self._outbox is not None:
            message = apb.AgentMessage(
                migration_progress=convert.migration_progress_to_pb(progress)
            )
            self._outbox.put_nowait(message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_vm_event(self, status: VMStatus, event: str) -> None:
        """Called from libvirt's event thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        message = apb.AgentMessage(
            vm_event=apb.VMEvent(
                vm=convert.vm_status_to_pb(status), event=event, at=convert.timestamp(time.time())
            )
        )
        loop.call_soon_threadsafe(self._send_event, message)
        loop.call_soon_threadsafe(self._switch_route, status)

    def _switch_route(self, status: VMStatus) -> None:
        """A VM that arrives or leaves by live migration moves its local route right away,
        not when the migration call returns (seconds later: the source QEMU exits slowly)."""
        switch = self.executor.route_switch(status)
        if switch is not None:
            self._spawn(switch)

    def _send_event(self, message: apb.AgentMessage) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)


def _retrieve(future: asyncio.Future[list[VMStatus]]) -> None:
    """Mark a background listing's error as seen (it is retried on the next beat)."""
    if not future.cancelled():
        future.exception()
