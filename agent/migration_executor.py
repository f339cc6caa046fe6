"""The live-migration commands of agent.executor.CommandExecutor: prepare (destination),
migrate (source), finish (destination), and the route switch a lifecycle event triggers
meanwhile. A mixin: CommandExecutor holds the state and the helpers it shares with its other
commands (declared below for the type checker)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.fencing import Fence
from agent.hypervisor.base import (
    Hypervisor,
    MigrationStats,
    MigrationTarget,
    NetworkAttachment,
)
from agent.images.catalog import ImageCatalog
from agent.mesh import MeshManager
from agent.migration_gateway import MigrationGateway
from agent.progress import ProgressSink, watch_migration
from agent.vm_files import CONSOLE_FILE, INCOMING_DISK
from agent.vmnet import VMNetwork
from shared.commands import CreateVM, FinishMigration, LandMigration, Migrate, PrepareMigration
from shared.domain import VMSpec, VMState, VMStatus
from shared.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0


class MigrationCommands:
    """Live migration's commands, for CommandExecutor (which sets all of this up)."""

    hypervisor: Hypervisor
    catalog: ImageCatalog
    vmnet: VMNetwork | None
    on_progress: ProgressSink | None
    progress_interval_s: float
    migration_host: str
    gateway: MigrationGateway | None  # set: migrations arrive over the mesh only
    mesh: MeshManager | None
    postcopy_cap_mbit: int
    tunnel_cap_mbit: int
    _incoming: dict[str, str]
    _outgoing: dict[str, str]

    if TYPE_CHECKING:  # CommandExecutor's

        def vm_dir(self, vm_id: str) -> Path: ...

        async def _fenced(
            self, vm_id: str, generation: int, what: str, required: bool = False
        ) -> tuple[VMStatus | None, Fence]: ...

        async def _route_and_shape(self, vm_id: str, address: str, spec: VMSpec) -> None: ...

        async def _network_ready(self, what: str) -> None: ...

        def _attachment(self, create: CreateVM) -> NetworkAttachment: ...

    async def _prepare_migration(self, prepare: PrepareMigration) -> MigrationTarget:
        """Stage the VM's media here and say where the source should send it."""
        host, listen = await self._migration_endpoint()
        held, _ = await self._fenced(prepare.vm_id, prepare.generation, "prepare_migration")
        if held is not None:
            raise AlreadyExists(f"VM {prepare.spec.name!r} already exists on this node")
        if prepare.address:  # the bridge must be up before the VM arrives on it
            self._attachment(
                CreateVM(prepare.vm_id, prepare.spec, prepare.generation, address=prepare.address)
            )
        vm_dir = self.vm_dir(prepare.vm_id)
        media = await asyncio.to_thread(self.catalog.prepare, prepare.spec.image, vm_dir)
        if prepare.address:
            self._incoming[prepare.vm_id] = prepare.address
        return MigrationTarget(
            libvirt_uri=f"qemu+tcp://{host}/system",
            data_uri=f"tcp://{host}",
            listen_address=listen,
            kernel=media.kernel,
            initrd=media.initrd,
            disk=media.disk,  # an empty overlay on this node's base: the source fills it
            console_log=str(vm_dir / CONSOLE_FILE),
        )

    async def _migration_endpoint(self) -> tuple[str, str]:
        """(host the source dials, address QEMU listens on): the mesh address when this node
        is on the mesh (the gateway relays libvirtd there; docs/security.md); else the
        configured migration_host, in clear text on the underlay."""
        if self.gateway is not None and self.mesh is not None:
            address = self.mesh.address_ip
            if not address:
                raise Unavailable(
                    "this node has no mesh address yet (the controller gives it one on "
                    "connect): migrations arrive only over the mesh"
                )
            await self.gateway.ensure(address, self.mesh.driver.name)
            return address, address
        if not self.migration_host:
            raise FailedPrecondition(
                "this node accepts no live migrations (agent.migration_host is not set)"
            )
        return self.migration_host, ""

    async def _migrate(self, migrate: Migrate) -> None:
        """Send the VM to the destination, reporting the job's progress meanwhile; once it
        runs there, drop what it left here. Cold and snapshot: see _send_offline."""
        if migrate.generation > 0:
            await self._fenced(migrate.vm_id, migrate.generation, "migrate", required=True)
        if migrate.mode != "live":
            await self._send_offline(migrate)
            return
        if migrate.address:
            self._outgoing[migrate.vm_id] = migrate.address
        try:
            await self._reporting_progress(
                migrate,
                functools.partial(
                    self.hypervisor.migrate,
                    migrate.vm_id,
                    migrate.target,
                    migrate.bandwidth_mbit or self._default_cap_mbit(migrate),
                    migrate.max_downtime_ms,
                    postcopy=migrate.postcopy,
                    generation=migrate.generation,
                    time_budget_s=migrate.time_budget_s,
                ),
            )
        finally:
            self._outgoing.pop(migrate.vm_id, None)
        await asyncio.to_thread(self.catalog.release, self.vm_dir(migrate.vm_id))
        if self.vmnet is not None:
            await asyncio.to_thread(self.vmnet.unshape, migrate.vm_id)
            if migrate.address:  # this node's traffic to the VM now goes into the mesh
                await asyncio.to_thread(self.vmnet.detach, migrate.address)

    def _default_cap_mbit(self, migrate: Migrate) -> int:
        """QEMU's rate when the request names none: a post-copy's share of the migration
        class; over the mesh, the class itself (htb cannot tell a migration from other
        traffic inside WireGuard, and htb on the WireGuard device stalled the route switch:
        docs/benchmarks.md)."""
        if migrate.postcopy:
            return self.postcopy_cap_mbit
        return self.tunnel_cap_mbit if migrate.target.listen_address else 0

    async def _send_offline(self, migrate: Migrate) -> None:
        """Stop (or save) the guest and put its files into the target's staged directory,
        reporting the bytes sent. This node keeps its stopped copy, its files and its route:
        should the target fail to run it, it runs here again (the controller deletes it
        once the target runs it)."""
        await self._reporting_progress(
            migrate,
            functools.partial(
                self.hypervisor.send_offline,
                migrate.vm_id,
                migrate.target,
                migrate.mode,
                migrate.generation,
                migrate.shutdown_timeout_s or DEFAULT_SHUTDOWN_TIMEOUT_S,
            ),
        )

    async def _reporting_progress(self, migrate: Migrate, send: Callable[[], None]) -> None:
        """Run the source's blocking part of a move in a thread, reporting its progress."""
        job = asyncio.ensure_future(asyncio.to_thread(send))
        if self.on_progress is not None:
            await watch_migration(
                job,
                self.hypervisor.migration_progress,
                self.on_progress,
                migrate.vm_id,
                migrate.migration_id,
                self.progress_interval_s,
            )
        await job

    async def _land_migration(self, land: LandMigration) -> VMStatus:
        """Cold or snapshot, on the destination: the source's files are in the staged
        directory; adopt its disk onto this node's base, define the VM and run it."""
        held, _ = await self._fenced(land.vm_id, land.generation, "land_migration")
        if held is not None and held.generation == land.generation:
            return held  # landed already (a retried command)
        if held is not None:
            raise AlreadyExists(f"VM {land.spec.name!r} already exists on this node")
        await self._network_ready("land_migration")
        vm_dir = self.vm_dir(land.vm_id)
        incoming = vm_dir / INCOMING_DISK
        if incoming.exists():
            await asyncio.to_thread(self.catalog.adopt_overlay, land.spec.image, vm_dir, incoming)
        return await asyncio.to_thread(
            functools.partial(
                self.hypervisor.land,
                land.vm_id,
                str(vm_dir),
                land.generation,
                start=not land.stay_stopped,
            )
        )

    def route_switch(self, status: VMStatus) -> Coroutine[Any, Any, None] | None:
        """On a lifecycle event: the route change a live migration needs now, if any. The
        destination routes the VM's address to its bridge as soon as the guest resumes there;
        the source withdraws its route as soon as the guest has left."""
        if self.vmnet is None:
            return None
        vmnet = self.vmnet
        if status.vm_id in self._incoming and status.state is VMState.RUNNING:
            address = self._incoming.pop(status.vm_id)
            return asyncio.to_thread(vmnet.attach, address)
        if status.vm_id in self._outgoing and status.state is VMState.STOPPED:
            address = self._outgoing.pop(status.vm_id)
            return asyncio.to_thread(vmnet.detach, address)
        return None

    async def _finish_migration(
        self, finish: FinishMigration
    ) -> tuple[VMStatus, MigrationStats | None]:
        """The VM runs here now: its generation, its route, its cap, the job's figures."""
        self._incoming.pop(finish.vm_id, None)
        status, verdict = await self._fenced(finish.vm_id, finish.generation, "finish_migration")
        if status is None:
            raise NotFound(f"VM {finish.spec.name!r} has not arrived on this node")
        if verdict is Fence.NEWER:
            status = await asyncio.to_thread(
                self.hypervisor.set_generation, finish.vm_id, finish.generation
            )
        if finish.address:
            await self._route_and_shape(finish.vm_id, finish.address, finish.spec)
        stats = await asyncio.to_thread(self.hypervisor.migration_stats, finish.vm_id)
        return status, stats
