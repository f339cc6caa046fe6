"""Domain XML content and the metadata round trip (pure: no libvirt connection)."""

from __future__ import annotations

import dataclasses
import re
import uuid
import xml.etree.ElementTree as ET

import pytest

from agent.hypervisor.base import BootMedia, NetworkAttachment, mac_for
from agent.hypervisor.domain_xml import (
    NAMESPACE,
    VMMetadata,
    build_domain_xml,
    kernel_cmdline,
    metadata_xml,
    parse_metadata,
)
from shared.domain import VMSpec
from shared.errors import InvalidArgument

VM_ID = str(uuid.UUID(int=42))
SPEC = VMSpec(name="web-1", image="tiny", vcpus=2, memory_mib=256, labels={"app": "cdn"})
KERNEL = BootMedia(
    kernel="/img/vmlinuz", initrd="/img/initrd.img", cmdline="quiet", disk="/vm/disk.qcow2"
)
NET = NetworkAttachment(
    bridge="ncbr0", mac="52:54:00:AB:cd:01", address="10.251.0.5/32", gateway="10.251.255.254"
)


def build(media: BootMedia = KERNEL, virt_type: str = "qemu", **kw: object) -> ET.Element:
    spec = kw.pop("spec", SPEC)
    assert isinstance(spec, VMSpec)
    xml = build_domain_xml(VM_ID, spec, 7, media, "/vm/console.log", virt_type, "x86_64")
    return ET.fromstring(xml)


def test_kernel_boot_domain() -> None:
    dom = build()
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "nc-web-1"
    assert dom.findtext("uuid") == VM_ID
    assert dom.find("memory") is not None and dom.findtext("memory") == "256"
    assert dom.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert dom.findtext("vcpu") == "2"
    assert dom.findtext("os/kernel") == "/img/vmlinuz"
    assert dom.findtext("os/initrd") == "/img/initrd.img"
    cmdline = dom.findtext("os/cmdline") or ""
    assert cmdline.split() == ["console=ttyS0", "quiet", "nc.name=web-1"]
    assert dom.find("os/boot") is None
    assert dom.find("cpu") is None  # TCG: no host CPU passthrough
    assert dom.find("devices/interface") is None  # no NIC unless the media has a network


def test_disk_is_a_virtio_qcow2() -> None:
    disk = build().find("devices/disk")
    assert disk is not None
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/vm/disk.qcow2"  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]


def test_disk_boot_without_kernel() -> None:
    dom = build(BootMedia(disk="/vm/disk.qcow2"))
    assert dom.find("os/kernel") is None and dom.find("os/cmdline") is None
    assert dom.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_serial_and_console_go_to_the_log_file() -> None:
    dom = build()
    for tag in ("serial", "console"):
        el = dom.find(f"devices/{tag}")
        assert el is not None and el.get("type") == "file"
        assert el.find("source").get("path") == "/vm/console.log"  # type: ignore[union-attr]


@pytest.mark.parametrize("virt_type", ["kvm", "test"])
def test_virt_type(virt_type: str) -> None:
    dom = build(virt_type=virt_type)
    assert dom.get("type") == virt_type
    assert (dom.find("cpu") is not None) == (virt_type == "kvm")


def test_metadata_round_trip() -> None:
    meta = parse_metadata(build_domain_xml(VM_ID, SPEC, 7, KERNEL, "/c.log"))
    assert meta == VMMetadata(VM_ID, "web-1", 7, "tiny", {"app": "cdn"})


def test_metadata_survives_libvirt_style_prefixes() -> None:
    """libvirt rewrites our element with its own prefix; parsing is by namespace, not prefix."""
    xml = (
        f"<domain><metadata><x:vm xmlns:x='{NAMESPACE}'><x:id>{VM_ID}</x:id>"
        "<x:name>a</x:name><x:generation>3</x:generation><x:image>tiny</x:image></x:vm>"
        "</metadata></domain>"
    )
    assert parse_metadata(xml) == VMMetadata(VM_ID, "a", 3, "tiny", {})


def test_metadata_xml_for_set_metadata_has_no_namespace() -> None:
    el = ET.fromstring(metadata_xml(VMMetadata(VM_ID, "a", 1, "tiny", {"k": "v"})))
    assert el.tag == "vm" and el.findtext("generation") == "1"
    assert el.find("labels/label").get("key") == "k"  # type: ignore[union-attr]


def test_non_simple_labels_are_left_out() -> None:
    spec = VMSpec("a", "tiny", 1, 64, labels={"ok": "1", "bad key!": "x", "long": "v" * 300})
    meta = parse_metadata(build_domain_xml(VM_ID, spec, 1, KERNEL, "/c.log"))
    assert meta is not None and meta.labels == {"ok": "1"}


@pytest.mark.parametrize(
    "xml", ["<domain><name>test</name></domain>", "not xml", "<domain><metadata/></domain>"]
)
def test_foreign_domains_have_no_metadata(xml: str) -> None:
    assert parse_metadata(xml) is None


def test_cmdline_keeps_an_explicit_console_and_replaces_nc_name() -> None:
    assert kernel_cmdline("console=ttyS1 nc.name=old", "new") == "console=ttyS1 nc.name=new"
    assert kernel_cmdline("", "a", "aarch64") == "console=ttyAMA0 nc.name=a"


@pytest.mark.parametrize(
    ("vm_id", "spec", "media", "match"),
    [
        ("nope", SPEC, KERNEL, "UUID"),
        (VM_ID, VMSpec("bad name", "tiny", 1, 64), KERNEL, "name"),
        (VM_ID, VMSpec("a", "tiny", 0, 64), KERNEL, "vcpus"),
        (VM_ID, VMSpec("a", "tiny", 1, 0), KERNEL, "memory_mib"),
        (VM_ID, SPEC, BootMedia(), "kernel or a disk"),
        (VM_ID, SPEC, BootMedia(initrd="/i", disk="/d"), "initrd"),
    ],
)
def test_bad_input_is_refused(vm_id: str, spec: VMSpec, media: BootMedia, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        build_domain_xml(vm_id, spec, 1, media, "/c.log")


def test_unknown_virt_type_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="virt_type"):
        build_domain_xml(VM_ID, SPEC, 1, KERNEL, "/c.log", "xen")


# -- network --------------------------------------------------------------------------------


def test_network_adds_a_virtio_bridge_nic_and_the_guest_ip_to_the_cmdline() -> None:
    dom = build(dataclasses.replace(KERNEL, network=NET))
    (nic,) = dom.findall("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "ncbr0"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "52:54:00:ab:cd:01"  # type: ignore[union-attr]
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert dom.find("devices/interface/source[@network]") is None  # no libvirt networks
    assert (dom.findtext("os/cmdline") or "").split() == [
        "console=ttyS0",
        "quiet",
        "nc.name=web-1",
        "nc.ip=10.251.0.5/32",
        "nc.gw=10.251.255.254",
    ]


def test_cmdline_network_keys_come_only_from_the_vm() -> None:
    image = "quiet nc.ip=1.2.3.4/8 nc.gw=1.1.1.1"
    assert kernel_cmdline(image, "a") == "console=ttyS0 quiet nc.name=a"
    assert kernel_cmdline(image, "a", network=NET).split()[-2:] == [
        "nc.ip=10.251.0.5/32",
        "nc.gw=10.251.255.254",
    ]


def test_disk_boot_gets_the_nic_but_no_cmdline() -> None:
    dom = build(BootMedia(disk="/vm/disk.qcow2", network=NET))
    assert dom.find("os/cmdline") is None
    assert dom.find("devices/interface") is not None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bridge": "a-bridge-name-too-long"}, "bridge"),
        ({"bridge": "br 0"}, "bridge"),
        ({"mac": "52:54:00:12:34"}, "mac"),
        ({"mac": "01:00:5e:00:00:01"}, "unicast"),
        ({"address": "10.251.0.5"}, "CIDR"),
        ({"address": "10.251.0.500/32"}, "network"),
        ({"gateway": "gw"}, "network"),
        ({"gateway": "fd00::1"}, "IPv4"),
        ({"gateway": "10.251.0.5"}, "own address"),
    ],
)
def test_bad_network_is_refused(change: dict[str, str], match: str) -> None:
    media = dataclasses.replace(KERNEL, network=dataclasses.replace(NET, **change))
    with pytest.raises(InvalidArgument, match=match):
        build_domain_xml(VM_ID, SPEC, 1, media, "/c.log")


def test_mac_for_is_stable_unicast_and_locally_administered() -> None:
    mac = mac_for(VM_ID)
    assert mac == mac_for(VM_ID) == mac_for(VM_ID.upper())
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert int(mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    assert len({mac_for(str(uuid.UUID(int=i))) for i in range(200)}) == 200


def test_ping_label_becomes_the_guests_own_probe() -> None:
    from agent.hypervisor.base import NetworkAttachment
    from agent.hypervisor.domain_xml import kernel_cmdline
    from shared.errors import InvalidArgument as Invalid

    net = NetworkAttachment("ncbr0", "52:54:00:00:00:01", "10.251.0.5/32", "10.251.255.254")
    assert kernel_cmdline("", "a", network=net, ping="10.251.0.9").endswith("nc.ping=10.251.0.9")
    assert "nc.ping" not in kernel_cmdline("nc.ping=1.2.3.4", "a")  # the image cannot set it
    with pytest.raises(Invalid, match="not an IP address"):
        kernel_cmdline("", "a", network=net, ping="elsewhere")
