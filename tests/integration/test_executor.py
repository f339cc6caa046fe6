"""The agent's command executor over libvirt's test driver: typed commands in, typed results
out; idempotent by id, deadlines kept, generations fencing, migration progress reported, a
controller installation new to the node refused destructive commands. Last, the session's
wire boundary against a stand-in controller on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.config import AgentConfig
from agent.executor import CommandExecutor
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from agent.installation import FILE, InstallationGuard
from agent.session import AgentSession
from shared import convert
from shared.commands import (
    AgentCommand,
    ChangePower,
    CommandResult,
    CreateVM,
    DeleteVM,
    Envelope,
    FinishMigration,
    Migrate,
    MigrationProgress,
    MigrationTarget,
    PowerAction,
    PrepareMigration,
    ReadConsole,
    RotateKey,
)
from shared.config import Seconds
from shared.domain import VMSpec, VMState
from shared.errors import Internal
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc
from tests.integration.harness import (
    TEST_NODE_XML,
    eventually,
    free_port,
    make_fake_kernel_images,
)

VM_ID = "5b0c6d0e-8f0a-4a43-9a55-0d3c1d8d7a01"
SPEC = VMSpec(name="web-1", image="tiny", vcpus=1, memory_mib=64)
TARGET = MigrationTarget("qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2", "/k", "/i", "", "/c")


@pytest.fixture
def hypervisor(tmp_path: Path) -> Iterator[LibvirtHypervisor]:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML.format(vcpus=4, memory_kib=4 * 1024 * 1024))
    hv = LibvirtHypervisor(f"test://{node}")
    yield hv
    hv.close()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


@pytest.fixture
def executor(tmp_path: Path, hypervisor: LibvirtHypervisor, images: Path) -> CommandExecutor:
    return CommandExecutor(
        hypervisor, ImageCatalog(images), tmp_path / "state", migration_host="10.0.0.1"
    )


def envelope(command: AgentCommand, deadline_in: float = 30.0, cid: str = "") -> Envelope:
    return Envelope(cid or uuid.uuid4().hex, time.time() + deadline_in, command)


def create(
    command_id: str = "", deadline_in: float = 30.0, image: str = "tiny", generation: int = 1
) -> Envelope:
    spec = VMSpec(name="web-1", image=image, vcpus=1, memory_mib=64)
    return envelope(CreateVM(VM_ID, spec, generation), deadline_in, command_id)


def power(action: PowerAction, generation: int) -> Envelope:
    return envelope(ChangePower(VM_ID, "web-1", generation, action))


async def test_same_command_id_runs_once(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    first, second = await asyncio.gather(
        executor.execute(create("c1")), executor.execute(create("c1"))
    )
    assert first.ok and second.ok
    assert first is second
    assert first.vm is not None and first.vm.state is VMState.RUNNING
    assert [v.vm_id for v in hypervisor.list_vms()] == [VM_ID]
    # delivered again later (the controller retried after a reconnect): same answer, no change
    hypervisor.suspend(VM_ID)
    again = await executor.execute(create("c1"))
    assert again is first
    assert hypervisor.get_vm(VM_ID).state.value == "paused"  # type: ignore[union-attr]


async def test_late_command_is_not_executed(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    result = await executor.execute(create("late", deadline_in=-1))
    assert not result.ok and result.error is not None
    assert result.error.code == "DEADLINE_EXCEEDED"
    assert hypervisor.list_vms() == []


async def test_failed_create_reports_why_and_leaves_nothing(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor, tmp_path: Path
) -> None:
    result = await executor.execute(create("bad", image="missing"))
    assert result.error is not None
    assert result.error.code == "NOT_FOUND"
    assert "missing" in result.error.message
    assert hypervisor.list_vms() == []
    assert not (tmp_path / "state" / "vms" / VM_ID).exists()


async def test_console_of_unknown_vm_is_not_found(executor: CommandExecutor) -> None:
    result = await executor.execute(envelope(ReadConsole(VM_ID, "web-1")))
    assert result.error is not None and result.error.code == "NOT_FOUND"


async def test_a_node_command_without_mesh_fails_cleanly(executor: CommandExecutor) -> None:
    result = await executor.execute(envelope(RotateKey()))
    assert result.error is not None and result.error.code == "FAILED_PRECONDITION"
    assert "mesh" in result.error.message


async def test_commands_for_one_vm_run_in_order(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    results = await asyncio.gather(
        executor.execute(create()),
        executor.execute(power(PowerAction.SUSPEND, 1)),
        executor.execute(power(PowerAction.RESUME, 1)),
        executor.execute(power(PowerAction.STOP, 1)),
    )
    assert [r.ok for r in results] == [True] * 4
    states = [r.vm.state for r in results if r.vm is not None]
    assert states == [VMState.RUNNING, VMState.PAUSED, VMState.RUNNING, VMState.STOPPED]


# -- generations fence ------------------------------------------------------------------------


def assert_stale(result: CommandResult, held: int) -> None:
    assert result.error is not None, result
    assert result.error.code == "FAILED_PRECONDITION"
    assert f"stale generation: this node holds generation {held}" in result.error.message
    assert result.vm is not None and result.vm.generation == held  # what the node holds


async def test_an_older_generation_is_refused_and_told_what_the_node_holds(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    assert (await executor.execute(create(generation=3))).ok
    assert_stale(await executor.execute(create(generation=2)), held=3)
    assert_stale(await executor.execute(power(PowerAction.SUSPEND, 2)), held=3)
    assert_stale(await executor.execute(envelope(DeleteVM(VM_ID, "web-1", 2))), held=3)
    assert_stale(await executor.execute(envelope(FinishMigration(VM_ID, SPEC, 2))), held=3)
    assert_stale(await executor.execute(envelope(Migrate(VM_ID, "web-1", TARGET, 2))), held=3)
    held = hypervisor.get_vm(VM_ID)
    assert held is not None and (held.generation, held.state) == (3, VMState.RUNNING)


async def test_same_generation_is_idempotent_and_newer_replaces(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    first = await executor.execute(create(generation=3))
    same = await executor.execute(create(generation=3))
    assert same.ok and same.vm == first.vm
    newer = await executor.execute(create(generation=4))
    assert newer.ok and newer.vm is not None and newer.vm.generation == 4
    assert hypervisor.get_vm(VM_ID).generation == 4  # type: ignore[union-attr]
    # power at the held generation (or a newer one) acts
    assert (await executor.execute(power(PowerAction.SUSPEND, 4))).ok
    resumed = await executor.execute(power(PowerAction.RESUME, 5))
    assert resumed.ok and resumed.vm is not None and resumed.vm.generation == 5  # it follows
    # a delete at generation 0 is "whatever copy this node holds"
    assert (await executor.execute(envelope(DeleteVM(VM_ID, "web-1")))).ok
    assert hypervisor.get_vm(VM_ID) is None


async def test_a_start_at_a_newer_generation_stamps_the_copy_it_starts(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    """A cold move whose target was lost while landing it: the controller gives the source's
    stopped copy the VM again, at a generation above the target's copy."""
    assert (await executor.execute(create(generation=1))).ok
    assert (await executor.execute(power(PowerAction.STOP, 1))).ok
    started = await executor.execute(power(PowerAction.START, 3))
    assert started.ok and started.vm is not None
    assert (started.vm.generation, started.vm.state) == (3, VMState.RUNNING)
    held = hypervisor.get_vm(VM_ID)
    assert held is not None and (held.generation, held.state) == (3, VMState.RUNNING)
    assert_stale(await executor.execute(power(PowerAction.SUSPEND, 2)), held=3)


async def test_finish_migration_with_a_newer_generation_moves_the_copy_on(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    assert (await executor.execute(create(generation=1))).ok  # as if it had arrived
    result = await executor.execute(envelope(FinishMigration(VM_ID, SPEC, 2)))
    assert result.ok and result.vm is not None and result.vm.generation == 2
    assert result.migration_stats is None  # the test driver keeps no job stats
    on_node = hypervisor.get_vm(VM_ID)
    assert on_node is not None and (on_node.generation, on_node.state) == (2, VMState.RUNNING)
    again = await executor.execute(envelope(FinishMigration(VM_ID, SPEC, 2)))
    assert again.ok and again.vm == result.vm


async def test_prepare_refuses_a_vm_it_holds(executor: CommandExecutor) -> None:
    assert (await executor.execute(create(generation=2))).ok
    assert_stale(await executor.execute(envelope(PrepareMigration(VM_ID, SPEC, 1))), held=2)
    result = await executor.execute(envelope(PrepareMigration(VM_ID, SPEC, 3)))
    assert result.error is not None and result.error.code == "ALREADY_EXISTS"


async def test_prepare_stages_media_and_says_where_to_send(
    executor: CommandExecutor, tmp_path: Path
) -> None:
    result = await executor.execute(envelope(PrepareMigration(VM_ID, SPEC, 2)))
    assert result.ok and result.migration_target is not None
    target = result.migration_target
    assert (target.libvirt_uri, target.data_uri) == ("qemu+tcp://10.0.0.1/system", "tcp://10.0.0.1")
    assert target.kernel.endswith("vmlinuz")
    assert target.console_log == str(tmp_path / "state" / "vms" / VM_ID / "console.log")


# -- migration progress -----------------------------------------------------------------------


@dataclass
class FakeJob:
    """Stands in for libvirt's migration (the test driver cannot migrate): `migrate` blocks
    until released; `migration_progress` advances with each reading while it runs."""

    fail: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    generation: int = -1

    def migrate(self, vm_id: str, target: MigrationTarget, *_a: int, **kw: object) -> None:
        self.generation = int(kw.get("generation", 0))  # type: ignore[call-overload]
        self.running.set()
        assert self.release.wait(10)
        self.running.clear()
        if self.fail:
            raise Internal(f"migrate {vm_id}: connection reset by {target.libvirt_uri}")

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        if not self.running.is_set():
            return None
        self.reads += 1
        done = min(self.reads, 9) << 20
        return MigrationProgress(vm_id, "", 10 << 20, done, (10 << 20) - done, 1 << 20)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
async def test_a_running_migration_reports_progress_until_it_ends(
    executor: CommandExecutor,
    hypervisor: LibvirtHypervisor,
    monkeypatch: pytest.MonkeyPatch,
    fail: bool,
) -> None:
    assert (await executor.execute(create(generation=3))).ok
    job = FakeJob(fail=fail)
    monkeypatch.setattr(hypervisor, "migrate", job.migrate)
    monkeypatch.setattr(hypervisor, "migration_progress", job.migration_progress)
    sent: list[MigrationProgress] = []
    executor.on_progress = sent.append
    executor.progress_interval_s = 0.02
    move = Migrate(VM_ID, "web-1", TARGET, 4, migration_id="mig-1")
    running = asyncio.ensure_future(executor.execute(envelope(move)))
    await eventually(lambda: _true(len(sent) >= 3), 10, "three progress reports")
    assert not running.done()
    job.release.set()
    result = await running
    assert job.generation == 4  # the arriving copy's generation goes to the driver
    assert all((p.vm_id, p.migration_id) == (VM_ID, "mig-1") for p in sent)
    remaining = [p.data_remaining for p in sent]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > 0
    count = len(sent)
    await asyncio.sleep(0.1)
    assert len(sent) == count  # nothing after the end
    if fail:
        assert result.error is not None and result.error.code == "INTERNAL"
        assert sent[-1].data_remaining > 0  # no "done" for a failed job
    else:
        assert result.ok
        assert sent[-1].data_remaining == 0 and sent[-1].data_processed == 10 << 20


async def _true(value: bool) -> bool:
    return value


# -- a controller installation new to this node -----------------------------------------------


async def test_a_new_installation_gets_no_destructive_command(
    tmp_path: Path, hypervisor: LibvirtHypervisor, images: Path
) -> None:
    state = tmp_path / "state"
    guard = InstallationGuard(state)
    guard.welcome("inst-a", take_over=False)
    executor = CommandExecutor(hypervisor, ImageCatalog(images), state, installation=guard)
    assert (await executor.execute(create(generation=1))).ok
    guard.welcome("inst-b", take_over=False)  # a controller on an empty state dir
    for command in (DeleteVM(VM_ID, "web-1"), CreateVM(VM_ID, SPEC, 2)):
        result = await executor.execute(envelope(command))
        assert result.error is not None and result.error.code == "FAILED_PRECONDITION"
        assert "this node belongs to installation inst-a" in result.error.message
        assert "controller installation inst-b is new to it" in result.error.message
        assert "--new-installation" in result.error.message
    held = hypervisor.get_vm(VM_ID)
    assert held is not None and (held.generation, held.state) == (1, VMState.RUNNING)
    assert (state / "vms" / VM_ID).exists()
    # everything else still runs: the same create, power, console
    assert (await executor.execute(create(generation=1))).ok
    assert (await executor.execute(power(PowerAction.SUSPEND, 1))).ok
    assert (await executor.execute(envelope(ReadConsole(VM_ID, "web-1")))).ok
    guard.welcome("inst-b", take_over=True)  # --new-installation
    assert (await executor.execute(envelope(DeleteVM(VM_ID, "web-1")))).ok
    assert hypervisor.get_vm(VM_ID) is None
    assert (state / FILE).read_text().strip() == "inst-b"


# -- the session's wire boundary --------------------------------------------------------------


class StandInController(agent_pb2_grpc.AgentSessionServicer):
    """Just enough of a controller: welcome, then the commands queued, collecting what comes up."""

    def __init__(self, installation_id: str, take_over: bool = False) -> None:
        self.welcome = apb.Welcome(
            controller_id="stand-in",
            heartbeat_interval_ms=60_000,
            probe_interval_ms=60_000,
            installation_id=installation_id,
            take_over=take_over,
        )
        self.commands: asyncio.Queue[apb.Command] = asyncio.Queue()
        self.hellos: list[apb.Hello] = []
        self.results: dict[str, apb.CommandResult] = {}

    async def Connect(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage],
    ) -> AsyncIterator[apb.ControllerMessage]:
        first = await anext(aiter(request_iterator))
        self.hellos.append(first.hello)
        reader = asyncio.create_task(self._read(request_iterator))
        try:
            yield apb.ControllerMessage(welcome=self.welcome)
            while True:
                yield apb.ControllerMessage(command=await self.commands.get())
        finally:
            reader.cancel()

    async def _read(self, messages: AsyncIterator[apb.AgentMessage]) -> None:
        async for message in messages:
            if message.WhichOneof("body") == "result":
                self.results[message.result.command_id] = message.result


async def test_the_session_speaks_the_wire_and_remembers_its_installation(
    tmp_path: Path, hypervisor: LibvirtHypervisor, images: Path
) -> None:
    state = tmp_path / "agent"
    (state).mkdir()
    (state / FILE).write_text("inst-a\n")
    controller = StandInController("inst-b")
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentSessionServicer_to_server(controller, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    config = AgentConfig(
        node_id="n1",
        controller=f"127.0.0.1:{port}",
        state_dir=state,
        images_dir=images,
        heartbeat_interval=Seconds(60.0),
        reconnect_max=Seconds(1.0),
        insecure=True,
    )
    session = AgentSession(config, hypervisor, ImageCatalog(images))
    task = asyncio.create_task(session.run_forever())
    try:
        await asyncio.wait_for(session.connected.wait(), 10)
        assert controller.hellos[0].known_installation_id == "inst-a"
        commands = {
            "create": convert.envelope_to_pb(create("create")),
            "delete": convert.envelope_to_pb(envelope(DeleteVM(VM_ID, "web-1"), cid="delete")),
            "empty": apb.Command(id="empty"),  # from a newer controller: no action we know
        }
        for command in commands.values():
            controller.commands.put_nowait(command)
        await eventually(lambda: _true(len(controller.results) == 3), 10, "three results")
        results = {k: convert.result_from_pb(v) for k, v in controller.results.items()}
        assert results["create"].ok and results["create"].vm is not None
        assert results["create"].vm.generation == 1
        delete_error = results["delete"].error
        assert delete_error is not None and "belongs to installation inst-a" in delete_error.message
        empty_error = results["empty"].error
        assert empty_error is not None and empty_error.code == "INVALID_ARGUMENT"
        assert hypervisor.get_vm(VM_ID) is not None  # the delete was refused
        assert (state / FILE).read_text().strip() == "inst-a"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.close()
        await server.stop(None)
