"""Executes the controller's commands against the hypervisor, idempotently by command id.

A command seen again (the controller retried after a reconnect) gets the first execution's
result; one still running is awaited, never run twice. Commands for one VM run one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from agent.hypervisor.base import Hypervisor, MigrationTarget, NetworkAttachment, mac_for
from agent.images.catalog import ImageCatalog
from agent.vmnet import VMNetwork
from shared import convert
from shared.domain import VMState, VMStatus
from shared.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NovaCronError,
)
from shared.pb.v1 import agent_pb2 as apb

log = structlog.get_logger(__name__)

REMEMBERED_RESULTS = 1024
CONSOLE_FILE = "console.log"


class CommandExecutor:
    def __init__(
        self,
        hypervisor: Hypervisor,
        catalog: ImageCatalog,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        vmnet: VMNetwork | None = None,
        migration_host: str = "",
        postcopy_cap_mbit: int = 0,
    ) -> None:
        self.hypervisor = hypervisor
        self.vmnet = vmnet
        self.migration_host = migration_host
        self.postcopy_cap_mbit = postcopy_cap_mbit  # agent.qos.postcopy_cap_mbit
        # live migrations under way: VM id -> its VM-network address, to route on arrival
        # (destination) or to withdraw on departure (source)
        self._incoming: dict[str, str] = {}
        self._outgoing: dict[str, str] = {}
        self.catalog = catalog
        self.vms_dir = state_dir / "vms"
        self.clock = clock
        self._results: OrderedDict[str, apb.CommandResult] = OrderedDict()
        self._running: dict[str, asyncio.Task[apb.CommandResult]] = {}
        self._vm_locks: dict[str, asyncio.Lock] = {}

    def vm_dir(self, vm_id: str) -> Path:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise InvalidArgument(f"invalid vm_id {vm_id!r}")
        return self.vms_dir / vm_id

    async def execute(self, command: apb.Command) -> apb.CommandResult:
        done = self._results.get(command.id)
        if done is not None:
            return done
        task = self._running.get(command.id)
        if task is None:
            task = asyncio.create_task(self._execute(command))
            self._running[command.id] = task
        try:
            result = await asyncio.shield(task)
        finally:
            if task.done():
                self._running.pop(command.id, None)
        self._results[command.id] = result
        while len(self._results) > REMEMBERED_RESULTS:
            self._results.popitem(last=False)
        return result

    async def _execute(self, command: apb.Command) -> apb.CommandResult:
        action = command.WhichOneof("action")
        bound = log.bind(command_id=command.id, action=action)
        result = apb.CommandResult(command_id=command.id, ok=True)
        try:
            if command.HasField("deadline") and self.clock() > convert.timestamp_seconds(
                command.deadline
            ):
                raise DeadlineExceeded("command arrived after its deadline; not executed")
            vm_id = self._vm_id(command)
            async with self._vm_locks.setdefault(vm_id, asyncio.Lock()):
                await self._dispatch(command, result)
            bound.info("command done", vm_id=vm_id)
        except NovaCronError as exc:
            bound.warning("command failed", error=str(exc), code=exc.code)
            result.ok = False
            result.error.CopyFrom(apb.Error(code=exc.code, message=str(exc)))
        except Exception as exc:  # a bug or an unexpected library error: report, stay up
            bound.exception("command crashed")
            result.ok = False
            result.error.CopyFrom(apb.Error(code="INTERNAL", message=f"agent error: {exc}"))
        return result

    @staticmethod
    def _vm_id(command: apb.Command) -> str:
        action = command.WhichOneof("action")
        if action is None:
            raise InvalidArgument("command has no action (newer controller?)")
        vm_id: str = getattr(command, action).vm_id
        if not vm_id:
            raise InvalidArgument(f"{action}: vm_id is required")
        return vm_id

    async def _dispatch(self, command: apb.Command, result: apb.CommandResult) -> None:
        hv = self.hypervisor
        action = command.WhichOneof("action")
        status: VMStatus | None = None
        if action == "create":
            status = await self._create(command.create)
        elif action == "delete":
            self._incoming.pop(command.delete.vm_id, None)  # e.g. an abandoned migration
            await asyncio.to_thread(hv.delete, command.delete.vm_id)
            await asyncio.to_thread(self.catalog.release, self.vm_dir(command.delete.vm_id))
            if self.vmnet is not None:
                await asyncio.to_thread(self.vmnet.unshape, command.delete.vm_id)
                if command.delete.address:
                    await asyncio.to_thread(self.vmnet.detach, command.delete.address)
        elif action == "suspend":
            status = await asyncio.to_thread(hv.suspend, command.suspend.vm_id)
        elif action == "resume":
            status = await asyncio.to_thread(hv.resume, command.resume.vm_id)
        elif action == "start":
            status = await asyncio.to_thread(hv.start, command.start.vm_id)
        elif action == "stop":
            status = await asyncio.to_thread(hv.stop, command.stop.vm_id)
        elif action == "read_console":
            result.console = await asyncio.to_thread(self._read_console, command.read_console)
        elif action == "prepare_migration":
            target = await self._prepare_migration(command.prepare_migration)
            result.migration_target.CopyFrom(target)
        elif action == "migrate":
            await self._migrate(command.migrate)
        elif action == "finish_migration":
            status = await self._finish_migration(command.finish_migration, result)
        if status is not None:
            result.vm.CopyFrom(convert.vm_status_to_pb(status))

    async def _create(self, create: apb.CreateVM) -> VMStatus:
        spec = convert.spec_from_pb(create.spec)
        vm_dir = self.vm_dir(create.vm_id)
        existing = await asyncio.to_thread(self.hypervisor.get_vm, create.vm_id)
        if existing is not None and existing.generation >= create.generation:
            return existing
        network = self._attachment(create) if create.address else None  # before touching disk
        media = await asyncio.to_thread(self.catalog.prepare, spec.image, vm_dir)
        if network is not None:
            media = replace(media, network=network)
        try:
            status = await asyncio.to_thread(
                self.hypervisor.create,
                create.vm_id,
                spec,
                create.generation,
                media,
                str(vm_dir / CONSOLE_FILE),
                create.start_paused,
            )
        except BaseException:
            await asyncio.to_thread(self.catalog.release, vm_dir)
            raise
        if create.address and self.vmnet is not None:
            await asyncio.to_thread(self.vmnet.attach, create.address)
            if spec.bandwidth_mbps:
                taps = await asyncio.to_thread(self.hypervisor.interface_devices, create.vm_id)
                for tap in taps:
                    await asyncio.to_thread(
                        self.vmnet.shape, tap, spec.bandwidth_mbps, create.vm_id
                    )
        return status

    # -- live migration: prepare (destination), migrate (source), finish (destination) --------

    async def _prepare_migration(self, prepare: apb.PrepareMigration) -> apb.MigrationTarget:
        """Stage the VM's media here and say where the source should send it."""
        if not self.migration_host:
            raise FailedPrecondition(
                "this node accepts no live migrations (agent.migration_host is not set)"
            )
        if await asyncio.to_thread(self.hypervisor.get_vm, prepare.vm_id) is not None:
            raise AlreadyExists(f"VM {prepare.spec.name!r} already exists on this node")
        spec = convert.spec_from_pb(prepare.spec)
        if prepare.address:
            self._attachment(  # the bridge must be up before the VM arrives on it
                apb.CreateVM(vm_id=prepare.vm_id, spec=prepare.spec, address=prepare.address)
            )
        vm_dir = self.vm_dir(prepare.vm_id)
        media = await asyncio.to_thread(self.catalog.prepare, spec.image, vm_dir)
        if prepare.address:
            self._incoming[prepare.vm_id] = prepare.address
        host = self.migration_host
        return apb.MigrationTarget(
            libvirt_uri=f"qemu+tcp://{host}/system",
            data_uri=f"tcp://{host}",
            kernel=media.kernel,
            initrd=media.initrd,
            disk=media.disk,  # an empty overlay on this node's base: the source fills it
            console_log=str(vm_dir / CONSOLE_FILE),
        )

    async def _migrate(self, migrate: apb.MigrateVM) -> None:
        """Send the VM to the destination; once it runs there, drop what it left here."""
        t = migrate.target
        target = MigrationTarget(
            libvirt_uri=t.libvirt_uri,
            data_uri=t.data_uri,
            kernel=t.kernel,
            initrd=t.initrd,
            disk=t.disk,
            console_log=t.console_log,
        )
        if migrate.address:
            self._outgoing[migrate.vm_id] = migrate.address
        try:
            await asyncio.to_thread(
                self.hypervisor.migrate,
                migrate.vm_id,
                target,
                migrate.bandwidth_mbit or (self.postcopy_cap_mbit if migrate.postcopy else 0),
                migrate.max_downtime_ms,
                postcopy=migrate.postcopy,
            )
        finally:
            self._outgoing.pop(migrate.vm_id, None)
        await asyncio.to_thread(self.catalog.release, self.vm_dir(migrate.vm_id))
        if self.vmnet is not None:
            await asyncio.to_thread(self.vmnet.unshape, migrate.vm_id)
            if migrate.address:  # this node's traffic to the VM now goes into the mesh
                await asyncio.to_thread(self.vmnet.detach, migrate.address)

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

    async def _finish_migration(self, finish: apb.CreateVM, result: apb.CommandResult) -> VMStatus:
        """The VM runs here now: route its address to the bridge, cap it, report figures."""
        self._incoming.pop(finish.vm_id, None)
        status = await asyncio.to_thread(self.hypervisor.get_vm, finish.vm_id)
        if status is None:
            raise NotFound(f"VM {finish.spec.name!r} has not arrived on this node")
        if finish.address and self.vmnet is not None:
            await asyncio.to_thread(self.vmnet.attach, finish.address)
            if finish.spec.bandwidth_mbps:
                taps = await asyncio.to_thread(self.hypervisor.interface_devices, finish.vm_id)
                for tap in taps:
                    await asyncio.to_thread(
                        self.vmnet.shape, tap, finish.spec.bandwidth_mbps, finish.vm_id
                    )
        stats = await asyncio.to_thread(self.hypervisor.migration_stats, finish.vm_id)
        if stats is not None:
            result.migration_stats.CopyFrom(
                apb.MigrationStats(
                    elapsed_ms=stats.elapsed_ms,
                    downtime_ms=stats.downtime_ms,
                    memory_bytes=stats.memory_bytes,
                )
            )
        return status

    def _attachment(self, create: apb.CreateVM) -> NetworkAttachment:
        if self.vmnet is None or not self.vmnet.ready:
            raise FailedPrecondition(
                f"VM {create.spec.name!r} has address {create.address} but this node's VM "
                "network is not up (it comes with the mesh config)"
            )
        return NetworkAttachment(
            bridge=self.vmnet.bridge,
            mac=mac_for(create.vm_id),
            address=create.address,
            gateway=create.gateway,
        )

    def _read_console(self, request: apb.ReadConsole) -> str:
        if self.hypervisor.get_vm(request.vm_id) is None:
            raise NotFound(f"VM {request.name or request.vm_id!r} is not on this node")
        path = self.vm_dir(request.vm_id) / CONSOLE_FILE
        max_bytes = request.max_bytes or 65536
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
