"""The aarch64 tiny guest, built from Debian's arm64 packages, boots under a real libvirtd
(qemu-system-aarch64, TCG) from the domain XML the agent writes, with its NIC driver loaded
from the arm64 kernel's own modules; its console says so."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.hypervisor.base import NetworkAttachment, mac_for
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.builder import NET_LINE, build_tiny_image
from agent.images.catalog import ImageCatalog
from lab.libvirtd import PrivateLibvirtd
from shared.domain import VMSpec, VMState
from shared.errors import NovaCronError
from tests.conftest import require_backend, wait_for
from tests.contract.test_guest_network import Bridge
from tests.contract.test_guest_network import bridge as bridge  # a fixture

pytestmark = pytest.mark.qemu
BOOT_TIMEOUT_S = 240.0  # an emulated Cortex-A57 on a shared 2-core machine


@pytest.fixture(scope="module")
def arm64_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_backend(shutil.which("qemu-system-aarch64") is not None, "qemu-system-arm missing")
    images = tmp_path_factory.mktemp("arm64-images")
    try:
        build_tiny_image(images, "tiny", arch="arm64")
    except NovaCronError as err:
        require_backend(False, f"cannot build the arm64 tiny image: {err}")
    return images


@pytest.fixture
def hv(private_libvirtd: PrivateLibvirtd) -> Iterator[LibvirtHypervisor]:
    hypervisor = LibvirtHypervisor(private_libvirtd.uri)
    try:
        yield hypervisor
    finally:
        hypervisor.close()


def test_aarch64_tiny_guest_boots_under_libvirt(
    hv: LibvirtHypervisor, arm64_image_dir: Path, tmp_path: Path, bridge: Bridge
) -> None:
    catalog = ImageCatalog(arm64_image_dir)
    assert catalog.get("tiny").arch == "aarch64"
    vm_id = str(uuid.uuid4())
    media = catalog.prepare("tiny", tmp_path / vm_id)
    assert media.arch == "aarch64"
    net = NetworkAttachment(
        bridge.name, mac_for(vm_id), f"{bridge.guest_ip}/{bridge.subnet.prefixlen}", bridge.host_ip
    )
    media = dataclasses.replace(media, network=net)
    console = tmp_path / vm_id / "console.log"
    spec = VMSpec(name="arm-1", image="tiny", vcpus=1, memory_mib=256)
    try:
        status = hv.create(vm_id, spec, 1, media, str(console))
        assert status.state is VMState.RUNNING
        xml = hv._conn.lookupByUUIDString(vm_id).XMLDesc(0)  # what libvirt made of ours
        assert "arch='aarch64'" in xml and "machine='virt" in xml
        assert "qemu-system-aarch64" in xml and "cortex-a57" in xml

        def booted() -> bool:
            return console.is_file() and "NovaCron guest arm-1 booted" in console.read_text(
                errors="replace"
            )

        wait_for(booted, BOOT_TIMEOUT_S, "the aarch64 guest's first console line", 0.5)
        text = console.read_text(errors="replace")
        line = text.split("NovaCron guest arm-1 booted", 1)[1].splitlines()[0]
        assert "-arm64" in line  # the kernel release it booted: Debian's arm64 kernel
        # eth0 came up: virtio_pci and virtio_net, from the arm64 kernel package, loaded
        expected = NET_LINE.format(name="arm-1", ip=net.address, gw=net.gateway)
        wait_for(lambda: expected in console.read_text(errors="replace"), 60, expected, 0.5)
        assert "net error" not in console.read_text(errors="replace")
    finally:
        hv.delete(vm_id)
    assert hv.get_vm(vm_id) is None
