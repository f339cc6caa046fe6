"""aarch64 guests: the virt machine, a CPU model TCG has, the pl011 console, and the guest's
architecture taken from its image, not from the host; checked against libvirt's own schema."""

from __future__ import annotations

import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.hypervisor.base import BootMedia, NetworkAttachment
from agent.hypervisor.domain_xml import build_domain_xml
from shared.arch import host_arch, normalise, require
from shared.domain import VMSpec
from shared.errors import InvalidArgument

VM_ID = str(uuid.UUID(int=7))
SPEC = VMSpec(name="gw-1", image="tiny", vcpus=1, memory_mib=128)
ARM = BootMedia(
    kernel="/img/vmlinuz",
    initrd="/img/initrd.img",
    cmdline="console=ttyAMA0 quiet",
    disk="/vm/disk.qcow2",
    network=NetworkAttachment(
        bridge="ncbr0", mac="52:54:00:00:00:01", address="10.251.0.5/32", gateway="10.251.0.1"
    ),
    arch="aarch64",
)


def xml_of(media: BootMedia = ARM, virt_type: str = "qemu", host: str = "x86_64") -> str:
    return build_domain_xml(VM_ID, SPEC, 1, media, "/vm/console.log", virt_type, host)


def test_aarch64_guest_on_the_virt_machine_with_a_tcg_cpu() -> None:
    dom = ET.fromstring(xml_of())
    os_type = dom.find("os/type")
    assert os_type is not None
    assert (os_type.get("arch"), os_type.get("machine")) == ("aarch64", "virt")
    assert dom.find("os/loader") is None  # direct kernel boot: no UEFI
    cpu = dom.find("cpu")
    assert cpu is not None and cpu.get("mode") == "custom"
    assert dom.findtext("cpu/model") == "cortex-a57"
    assert dom.find("features/gic").get("version") == "3"  # type: ignore[union-attr]
    assert dom.find("features/acpi") is None  # ACPI on aarch64 needs UEFI
    assert (dom.findtext("os/cmdline") or "").split()[0] == "console=ttyAMA0"
    assert dom.find("devices/controller[@type='usb']").get("model") == "none"  # type: ignore[union-attr]
    buses = {t.get("bus") for t in dom.iter("target") if t.get("bus")}
    assert buses == {"virtio"}  # no IDE, no SATA
    assert dom.find("devices/interface/model").get("type") == "virtio"  # type: ignore[union-attr]
    assert dom.find("devices/input") is None  # no PS/2


def test_console_defaults_to_the_pl011_when_the_image_names_none() -> None:
    media = BootMedia(kernel="/k", initrd="/i", cmdline="quiet", arch="aarch64")
    cmdline = ET.fromstring(xml_of(media)).findtext("os/cmdline") or ""
    assert cmdline.split()[0] == "console=ttyAMA0"


def test_kvm_on_an_arm_host_passes_the_host_cpu_and_gic() -> None:
    dom = ET.fromstring(xml_of(virt_type="kvm", host="aarch64"))
    assert dom.get("type") == "kvm"
    assert dom.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert dom.find("features/gic").get("version") == "host"  # type: ignore[union-attr]


def test_a_foreign_guest_is_emulated_even_where_kvm_works() -> None:
    dom = ET.fromstring(xml_of(virt_type="kvm", host="x86_64"))
    assert dom.get("type") == "qemu"
    assert dom.findtext("cpu/model") == "cortex-a57"
    x86 = ET.fromstring(xml_of(BootMedia(kernel="/k", arch="x86_64"), "kvm", "aarch64"))
    assert x86.get("type") == "qemu" and x86.find("cpu") is None
    assert x86.find("os/type").get("arch") == "x86_64"  # type: ignore[union-attr]
    assert x86.find("os/type").get("machine") is None  # type: ignore[union-attr]


def test_media_without_arch_is_the_hosts() -> None:
    dom = ET.fromstring(xml_of(BootMedia(kernel="/k"), "qemu", "aarch64"))
    assert dom.find("os/type").get("arch") == "aarch64"  # type: ignore[union-attr]
    assert dom.find("os/type").get("machine") == "virt"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("media", "virt_type", "host"),
    [
        (ARM, "qemu", "x86_64"),
        (ARM, "kvm", "aarch64"),
        (BootMedia(kernel="/k", initrd="/i", arch="x86_64"), "qemu", "x86_64"),
    ],
)
def test_libvirt_schema_accepts_it(
    tmp_path: Path, media: BootMedia, virt_type: str, host: str
) -> None:
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.fail("virt-xml-validate missing (Debian package: libvirt-clients)")
    path = tmp_path / "domain.xml"
    path.write_text(xml_of(media, virt_type, host))
    proc = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("given", "want"),
    [("aarch64", "aarch64"), ("arm64", "aarch64"), ("ARM64", "aarch64"), ("amd64", "x86_64")],
)
def test_arch_names_are_normalised(given: str, want: str) -> None:
    assert normalise(given) == want == require(given)


def test_unsupported_arch_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match=r"'riscv64' is not supported.*aarch64 \(arm64\)"):
        require("riscv64")
    assert normalise("riscv64") == "riscv64"
    assert host_arch() == normalise(__import__("platform").machine())
