"""Executes the controller's commands against the hypervisor, idempotently by command id.

Typed in, typed out: an `Envelope` (shared.commands) comes in, a `CommandResult` goes out; the
session converts at the wire. A command seen again (the controller retried after a reconnect)
gets the first execution's result; one still running is awaited, never run twice. Commands for
one VM run one at a time, in arrival order. Every error becomes the result's `CommandError` here
(`CommandError.of`, in `refuse`), and nowhere else on the agent.

Generations fence (agent.fencing): a command older than the copy this node holds is refused and
the result carries the copy held. A controller of an installation new to this node gets its
destructive commands refused (agent.installation).

The live-migration commands are in agent.migration_executor.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from agent.desired_cache import DesiredStateCache
from agent.fencing import Fence, StaleGeneration, fence
from agent.hypervisor.base import Hypervisor, NetworkAttachment, mac_for
from agent.images.catalog import ImageCatalog
from agent.installation import InstallationGuard
from agent.mesh import MeshManager
from agent.migration_executor import MigrationCommands
from agent.migration_gateway import MigrationGateway
from agent.progress import PROGRESS_INTERVAL_S, ProgressSink
from agent.qos import postcopy_cap_mbit
from agent.vm_files import CONSOLE_FILE as CONSOLE_FILE
from agent.vm_files import SAVE_FILE
from agent.vmnet import VMNetwork
from shared.commands import (
    AgentCommand,
    ApplyMesh,
    ChangePower,
    CommandError,
    CommandResult,
    CreateVM,
    DeleteVM,
    Envelope,
    LandMigration,
    Migrate,
    PowerAction,
    PrepareMigration,
    ReadConsole,
    RotateKey,
    command_name,
    command_vm_id,
)
from shared.domain import VMSpec, VMStatus
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NovaCronError,
)
from shared.mesh import MeshStatus

log = structlog.get_logger(__name__)

REMEMBERED_RESULTS = 1024
NETWORK_WAIT_S = 15.0  # for the mesh config, before a VM with a NIC is started
NODE_COMMANDS = (ApplyMesh, RotateKey)  # about the node, not one VM


class CommandExecutor(MigrationCommands):
    def __init__(
        self,
        hypervisor: Hypervisor,
        catalog: ImageCatalog,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        vmnet: VMNetwork | None = None,
        migration_host: str = "",
        migration_class_mbit: float = 0.0,
        *,
        mesh: MeshManager | None = None,
        installation: InstallationGuard | None = None,
        on_progress: ProgressSink | None = None,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        on_key_rotated: Callable[[], None] | None = None,
        desired: DesiredStateCache | None = None,
        gateway: MigrationGateway | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.gateway = gateway
        self.vmnet = vmnet
        self.mesh = mesh
        self.installation = installation or InstallationGuard(state_dir)
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.on_key_rotated = on_key_rotated
        self.desired = desired
        self.migration_host = migration_host
        # QEMU's own caps: a post-copy's (agent.qos.postcopy_cap_mbit), and a pre-copy's over
        # the mesh, which the uplink's migration class cannot see inside WireGuard
        self.postcopy_cap_mbit = postcopy_cap_mbit(migration_class_mbit)
        self.tunnel_cap_mbit = int(migration_class_mbit)
        # live migrations under way: VM id -> its VM-network address, to route on arrival
        # (destination) or to withdraw on departure (source)
        self._incoming: dict[str, str] = {}
        self._outgoing: dict[str, str] = {}
        self.catalog = catalog
        self.vms_dir = state_dir / "vms"
        self.clock = clock
        self._results: OrderedDict[str, CommandResult] = OrderedDict()
        self._running: dict[str, asyncio.Task[CommandResult]] = {}
        self._vm_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()

    def vm_dir(self, vm_id: str) -> Path:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise InvalidArgument(f"invalid vm_id {vm_id!r}")
        return self.vms_dir / vm_id

    async def execute(self, envelope: Envelope) -> CommandResult:
        done = self._results.get(envelope.id)
        if done is not None:
            return done
        task = self._running.get(envelope.id)
        if task is None:
            task = asyncio.create_task(self._execute(envelope))
            self._running[envelope.id] = task
        try:
            result = await asyncio.shield(task)
        finally:
            if task.done():
                self._running.pop(envelope.id, None)
        self._results[envelope.id] = result
        while len(self._results) > REMEMBERED_RESULTS:
            self._results.popitem(last=False)
        return result

    @staticmethod
    def refuse(command_id: str, exc: BaseException) -> CommandResult:
        """The failed result for `exc`: the agent's one mapping of errors to results (also
        for a command the session could not even read, e.g. one without an action)."""
        return CommandResult(command_id, error=CommandError.of(exc))

    async def _execute(self, envelope: Envelope) -> CommandResult:
        command = envelope.command
        vm_id = command_vm_id(command)
        bound = log.bind(command_id=envelope.id, action=command_name(command), vm_id=vm_id)
        try:
            if envelope.deadline and self.clock() > envelope.deadline:
                raise DeadlineExceeded("command arrived after its deadline; not executed")
            if not vm_id and not isinstance(command, NODE_COMMANDS):
                raise InvalidArgument(f"{command_name(command)}: vm_id is required")
            async with self._vm_locks.setdefault(vm_id, asyncio.Lock()):
                result = await self._dispatch(envelope.id, command)
                if self.desired is not None:  # for a reboot while offline (agent/offline.py)
                    await asyncio.to_thread(self.desired.record, command, result)
            bound.info("command done")
            return result
        except NovaCronError as exc:
            bound.warning("command failed", error=str(exc), code=exc.code)
            return await self._failed(envelope.id, command, exc)
        except Exception as exc:  # a bug or an unexpected library error: report, stay up
            bound.exception("command crashed")
            return await self._failed(envelope.id, command, exc)

    async def _failed(
        self, command_id: str, command: AgentCommand, exc: BaseException
    ) -> CommandResult:
        """The one place an agent error becomes a result: a stale command's says what this
        node holds; a mesh command's, the mesh as it is."""
        vm: VMStatus | None = None
        mesh: MeshStatus | None = None
        try:
            if isinstance(exc, StaleGeneration):
                vm = await asyncio.to_thread(self.hypervisor.get_vm, command_vm_id(command))
            if isinstance(command, NODE_COMMANDS) and self.mesh is not None:
                mesh = await asyncio.to_thread(self.mesh.status)
        except Exception as extra:  # the error at hand is what counts
            log.warning("no state for the failed command's result", error=str(extra))
        return replace(self.refuse(command_id, exc), vm=vm, mesh=mesh)

    async def _dispatch(self, command_id: str, command: AgentCommand) -> CommandResult:
        if isinstance(command, CreateVM):
            return CommandResult(command_id, vm=await self._create(command))
        if isinstance(command, DeleteVM):
            await self._delete(command)
            return CommandResult(command_id)
        if isinstance(command, ChangePower):
            return CommandResult(command_id, vm=await self._power(command))
        if isinstance(command, ReadConsole):
            console = await asyncio.to_thread(self._read_console, command)
            return CommandResult(command_id, console=console)
        if isinstance(command, ApplyMesh | RotateKey):
            return CommandResult(command_id, mesh=await self._mesh(command))
        if isinstance(command, PrepareMigration):
            target = await self._prepare_migration(command)
            return CommandResult(command_id, migration_target=target)
        if isinstance(command, Migrate):
            await self._migrate(command)
            return CommandResult(command_id)
        if isinstance(command, LandMigration):
            return CommandResult(command_id, vm=await self._land_migration(command))
        status, stats = await self._finish_migration(command)
        return CommandResult(command_id, vm=status, migration_stats=stats)

    async def _power(self, command: ChangePower) -> VMStatus:
        """At a newer generation, the copy follows: the controller gave this copy the VM
        again (a move whose target was lost while landing it), so it is stamped after the
        power change (a restore from a save file brings back the saved generation)."""
        hv = self.hypervisor
        what = command_name(command)
        _, verdict = await self._fenced(command.vm_id, command.generation, what, required=True)
        if command.action is PowerAction.START:
            await self._network_ready(what)
        saved = self.vm_dir(command.vm_id) / SAVE_FILE
        if command.action is PowerAction.START and saved.exists():  # a snapshot migration's
            # source: restored, the guest goes on where it was
            status = await asyncio.to_thread(hv.restore_saved, command.vm_id, str(saved))
        else:
            op = {
                PowerAction.SUSPEND: hv.suspend,
                PowerAction.RESUME: hv.resume,
                PowerAction.START: hv.start,
                PowerAction.STOP: hv.stop,
            }[command.action]
            status = await asyncio.to_thread(op, command.vm_id)
        if verdict is Fence.NEWER:
            status = await asyncio.to_thread(hv.set_generation, command.vm_id, command.generation)
        return status

    async def _network_ready(self, what: str) -> None:
        """A domain's NIC needs the VM bridge, which exists only once the mesh config arrived:
        after a reboot the controller's start can come before it (the hello's reconcile)."""
        if self.vmnet is None or self.vmnet.ready:
            return
        if not await asyncio.to_thread(self.vmnet.wait_ready, NETWORK_WAIT_S):
            raise FailedPrecondition(
                f"{what}: the VM network is not configured yet (no mesh config in "
                f"{NETWORK_WAIT_S:g}s)"
            )

    async def _fenced(
        self, vm_id: str, generation: int, what: str, required: bool = False
    ) -> tuple[VMStatus | None, Fence]:
        """The copy held here and the verdict of agent.fencing on a command at `generation`."""
        held = await asyncio.to_thread(self.hypervisor.get_vm, vm_id)
        if held is None and required:
            raise NotFound(f"{what}: vm {vm_id} is not on this node")
        return held, fence(held.generation if held else None, generation, what)

    async def _create(self, create: CreateVM) -> VMStatus:
        if create.address:
            await self._network_ready("create")
        spec = create.spec
        vm_dir = self.vm_dir(create.vm_id)
        existing, verdict = await self._fenced(create.vm_id, create.generation, "create")
        if existing is not None and verdict is Fence.SAME:
            return existing
        if existing is not None:
            self.installation.check_destructive(
                f"create of vm {spec.name!r} at generation {create.generation} (replacing "
                f"generation {existing.generation})"
            )
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
            if existing is None:  # never remove the files of a VM that runs here
                await asyncio.to_thread(self.catalog.release, vm_dir)
            raise
        if create.address:
            await self._route_and_shape(create.vm_id, create.address, spec)
        return status

    async def _delete(self, delete: DeleteVM) -> None:
        self.installation.check_destructive(f"delete of vm {delete.name or delete.vm_id!r}")
        if delete.generation > 0:
            await self._fenced(delete.vm_id, delete.generation, "delete")
        self._incoming.pop(delete.vm_id, None)  # e.g. an abandoned migration
        await asyncio.to_thread(self.hypervisor.delete, delete.vm_id)
        await asyncio.to_thread(self.catalog.release, self.vm_dir(delete.vm_id))
        if self.vmnet is not None:
            await asyncio.to_thread(self.vmnet.unshape, delete.vm_id)
            if delete.address:
                await asyncio.to_thread(self.vmnet.detach, delete.address)

    async def _route_and_shape(self, vm_id: str, address: str, spec: VMSpec) -> None:
        """Route the VM's address to this node's bridge and cap its NICs."""
        if self.vmnet is None:
            return
        await asyncio.to_thread(self.vmnet.attach, address)
        if spec.bandwidth_mbps:
            taps = await asyncio.to_thread(self.hypervisor.interface_devices, vm_id)
            for tap in taps:
                await asyncio.to_thread(self.vmnet.shape, tap, spec.bandwidth_mbps, vm_id)

    async def _mesh(self, command: ApplyMesh | RotateKey) -> MeshStatus:
        if self.mesh is None:
            raise FailedPrecondition("this node does not take part in the mesh")
        if isinstance(command, ApplyMesh):
            return await asyncio.to_thread(self.mesh.apply, command.config)
        status = await asyncio.to_thread(self.mesh.rotate)
        if self.on_key_rotated is not None:
            self.on_key_rotated()
        return status

    def _attachment(self, create: CreateVM) -> NetworkAttachment:
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

    def _read_console(self, request: ReadConsole) -> str:
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
