"""Self-fencing against a real libvirt (its test driver): a VM alone past its stop_after is
paused, one without stays running, and stop_after survives in the domain's metadata."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.contact import ControllerContact
from agent.hypervisor.base import BootMedia
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.self_fence import SelfFence
from shared.domain import NEVER, DisconnectPolicy, VMSpec, VMState


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    driver = LibvirtHypervisor("test:///default")
    try:
        yield driver
    finally:
        driver.close()


def create(hv: LibvirtHypervisor, tmp_path: Path, stop_after: float | None) -> str:
    vm_id = str(uuid.uuid4())
    for f in ("vmlinuz", "initrd.img"):
        (tmp_path / f).write_bytes(b"not booted by the test driver")
    media = BootMedia(kernel=str(tmp_path / "vmlinuz"), initrd=str(tmp_path / "initrd.img"))
    spec = VMSpec(
        name=f"fence-{vm_id[:8]}",
        image="tiny",
        vcpus=1,
        memory_mib=128,
        disconnect=DisconnectPolicy(replace_after_s=0.0, stop_after_s=stop_after),
    )
    hv.create(vm_id, spec, 1, media, str(tmp_path / f"{vm_id}.log"))
    return vm_id


def test_a_vm_alone_past_its_stop_after_is_paused_and_the_session_restarted(
    hv: LibvirtHypervisor, tmp_path: Path
) -> None:
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    restarts: list[bool] = []
    fence = SelfFence(hv, contact, on_fenced=lambda: restarts.append(True))
    short = create(hv, tmp_path, 3.0)
    never = create(hv, tmp_path, NEVER)
    unset = create(hv, tmp_path, None)
    try:
        listed = {v.vm_id: v for v in hv.list_vms()}
        assert listed[short].stop_after_s == 3.0  # kept in the domain's metadata
        assert listed[never].stop_after_s is None and listed[unset].stop_after_s is None
        now[0] += 2.9
        assert fence.check() == []
        now[0] += 0.2
        assert fence.check() == [short]
        states = {v.vm_id: v.state for v in hv.list_vms()}
        assert states[short] is VMState.PAUSED
        assert states[never] is VMState.RUNNING and states[unset] is VMState.RUNNING
        assert fence.check() == []  # paused already: nothing more to do
    finally:
        for vm_id in (short, never, unset):
            hv.delete(vm_id)


def test_a_confirmed_contact_keeps_vms_running(hv: LibvirtHypervisor, tmp_path: Path) -> None:
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    fence = SelfFence(hv, contact)
    vm_id = create(hv, tmp_path, 3.0)
    try:
        for seq in range(10):  # a heartbeat, a ping, its pong: every second
            now[0] += 1.0
            contact.sent_report()
            contact.sent_ping(seq)
            contact.ponged(seq)
            assert fence.check() == []
        assert hv.get_vm(vm_id) is not None
        assert {v.vm_id: v.state for v in hv.list_vms()}[vm_id] is VMState.RUNNING
    finally:
        hv.delete(vm_id)
