"""The agent's command executor over libvirt's test driver: idempotent by id, deadlines kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.executor import CommandExecutor
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from shared.convert import timestamp
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import TEST_NODE_XML, make_fake_kernel_images

VM_ID = "5b0c6d0e-8f0a-4a43-9a55-0d3c1d8d7a01"


@pytest.fixture
def hypervisor(tmp_path: Path) -> Iterator[LibvirtHypervisor]:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML.format(vcpus=4, memory_kib=4 * 1024 * 1024))
    hv = LibvirtHypervisor(f"test://{node}")
    yield hv
    hv.close()


@pytest.fixture
def executor(tmp_path: Path, hypervisor: LibvirtHypervisor) -> CommandExecutor:
    images = make_fake_kernel_images(tmp_path / "images")
    return CommandExecutor(hypervisor, ImageCatalog(images), tmp_path / "state")


def create(command_id: str, deadline_in: float = 30.0, image: str = "tiny") -> apb.Command:
    command = apb.Command(
        id=command_id,
        create=apb.CreateVM(
            vm_id=VM_ID,
            spec=pb.VMSpec(name="web-1", image=image, vcpus=1, memory_mib=64),
            generation=1,
        ),
    )
    command.deadline.CopyFrom(timestamp(time.time() + deadline_in))
    return command


async def test_same_command_id_runs_once(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor
) -> None:
    first, second = await asyncio.gather(
        executor.execute(create("c1")), executor.execute(create("c1"))
    )
    assert first.ok and second.ok
    assert first is second
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
    assert not result.ok
    assert result.error.code == "DEADLINE_EXCEEDED"
    assert hypervisor.list_vms() == []


async def test_failed_create_reports_why_and_leaves_nothing(
    executor: CommandExecutor, hypervisor: LibvirtHypervisor, tmp_path: Path
) -> None:
    result = await executor.execute(create("bad", image="missing"))
    assert not result.ok
    assert result.error.code == "NOT_FOUND"
    assert "missing" in result.error.message
    assert hypervisor.list_vms() == []
    assert not (tmp_path / "state" / "vms" / VM_ID).exists()


async def test_console_of_unknown_vm_is_not_found(executor: CommandExecutor) -> None:
    command = apb.Command(id="c", read_console=apb.ReadConsole(vm_id=VM_ID, name="web-1"))
    result = await executor.execute(command)
    assert (result.ok, result.error.code) == (False, "NOT_FOUND")
