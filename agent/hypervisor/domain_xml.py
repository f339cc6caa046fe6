"""Pure translation between our VM model and libvirt domain XML.

The domain carries our own metadata element so that the agent can tell its VMs from foreign
domains and recover (vm_id, generation, image) from libvirt alone after a restart.
"""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from agent.hypervisor.base import BootMedia, NetworkAttachment
from shared.domain import VMSpec
from shared.errors import InvalidArgument

NAMESPACE = "https://novacron.dev/xmlns/vm/1.0"
PREFIX = "nc"
DOMAIN_PREFIX = "nc-"
VIRT_TYPES = ("qemu", "kvm", "test")

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")
_LABEL_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,14}$")  # a Linux ifname: <= 15 chars
_NET_KEYS = ("nc.ip=", "nc.gw=", "nc.ping=")
PING_LABEL = "novacron.io/ping"  # a VM label: the tiny guest pings this address and says so
_SERIAL_CONSOLE = {"x86_64": "ttyS0", "i686": "ttyS0", "aarch64": "ttyAMA0"}
AARCH64_TCG_CPU = "cortex-a57"


@dataclass(frozen=True, slots=True)
class VMMetadata:
    """What we store in the domain's <metadata> element."""

    vm_id: str
    name: str
    generation: int
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_after_s: float | None = None  # self-fencing (agent/self_fence.py); None = never


def metadata_of(vm_id: str, spec: VMSpec, generation: int) -> VMMetadata:
    stop_after = spec.disconnect.stop_after_s
    if stop_after is not None and (math.isinf(stop_after) or stop_after < 0):
        stop_after = None
    return VMMetadata(vm_id, spec.name, generation, spec.image, dict(spec.labels), stop_after)


def domain_name(vm_name: str) -> str:
    return f"{DOMAIN_PREFIX}{vm_name}"


def validate_vm(vm_id: str, spec: VMSpec, generation: int) -> str:
    """Check what libvirt would reject less clearly; returns the canonical vm_id."""
    try:
        canonical = str(uuid.UUID(vm_id))
    except ValueError:
        raise InvalidArgument(f"vm_id must be a UUID, got {vm_id!r}") from None
    if not _NAME_RE.match(spec.name):
        raise InvalidArgument(
            f"name {spec.name!r} must be 1-63 characters of letters, digits, '.', '_' or '-'"
        )
    if spec.vcpus <= 0:
        raise InvalidArgument(f"vcpus must be > 0, got {spec.vcpus}")
    if spec.memory_mib <= 0:
        raise InvalidArgument(f"memory_mib must be > 0, got {spec.memory_mib}")
    if generation < 0:
        raise InvalidArgument(f"generation must be >= 0, got {generation}")
    return canonical


def build_domain_xml(
    vm_id: str,
    spec: VMSpec,
    generation: int,
    media: BootMedia,
    console_log: str,
    virt_type: str = "qemu",
    arch: str = "x86_64",
) -> str:
    """Domain XML for one VM: kernel boot when media has a kernel, else disk boot. `arch` is
    the host's; the guest's is its image's (media.arch), emulated (TCG) when they differ."""
    vm_id = validate_vm(vm_id, spec, generation)
    host_arch, arch = arch, media.arch or arch
    if virt_type == "kvm" and arch != host_arch:
        virt_type = "qemu"  # KVM runs only the host's own architecture
    if virt_type not in VIRT_TYPES:
        raise InvalidArgument(f"virt_type must be one of {VIRT_TYPES}, got {virt_type!r}")
    if not media.kernel and not media.disk:
        raise InvalidArgument("boot media needs a kernel or a disk")
    if media.initrd and not media.kernel:
        raise InvalidArgument("boot media has an initrd but no kernel")
    if media.network is not None:
        validate_network(media.network)

    dom = ET.Element("domain", type=virt_type)
    ET.SubElement(dom, "name").text = domain_name(spec.name)
    ET.SubElement(dom, "uuid").text = vm_id
    ET.SubElement(dom, "title").text = f"NovaCron VM {spec.name}"
    dom.append(_metadata_element(metadata_of(vm_id, spec, generation)))
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)

    os_el = ET.SubElement(dom, "os")
    os_type = ET.SubElement(os_el, "type", arch=arch)
    os_type.text = "hvm"
    aarch64 = arch == "aarch64" and virt_type != "test"
    if aarch64:
        os_type.set("machine", "virt")  # direct kernel boot: no UEFI firmware needed
    if media.kernel:
        ET.SubElement(os_el, "kernel").text = media.kernel
        if media.initrd:
            ET.SubElement(os_el, "initrd").text = media.initrd
        ET.SubElement(os_el, "cmdline").text = kernel_cmdline(
            media.cmdline, spec.name, arch, media.network, ping=spec.labels.get(PING_LABEL, "")
        )
    else:
        ET.SubElement(os_el, "boot", dev="hd")

    if virt_type != "test" and arch in ("x86_64", "i686"):
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    if aarch64:  # GICv3 emulated under TCG; KVM takes the host's GIC version
        gic = "host" if virt_type == "kvm" else "3"
        ET.SubElement(ET.SubElement(dom, "features"), "gic", version=gic)
    if virt_type == "kvm":
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    elif aarch64:  # TCG has no "host" CPU; a Cortex-A57 runs Debian's arm64 kernel
        cpu = ET.SubElement(dom, "cpu", mode="custom", match="exact")
        ET.SubElement(cpu, "model", fallback="forbid").text = AARCH64_TCG_CPU
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"

    devices = ET.SubElement(dom, "devices")
    if aarch64:  # the virt machine: virtio on PCIe, pl011 serial; no USB, no legacy devices
        ET.SubElement(devices, "controller", type="usb", model="none")
    if media.disk:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=media.disk)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if media.network is not None:  # a disk-booted guest gets the NIC but must configure it itself
        nic = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(nic, "source", bridge=media.network.bridge)
        ET.SubElement(nic, "mac", address=media.network.mac.lower())
        ET.SubElement(nic, "model", type="virtio")

    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=console_log, append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="file")
    ET.SubElement(console, "source", path=console_log, append="on")
    ET.SubElement(console, "target", type="serial", port="0")
    if virt_type != "test":
        ET.SubElement(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def kernel_cmdline(
    base: str,
    vm_name: str,
    arch: str = "x86_64",
    network: NetworkAttachment | None = None,
    ping: str = "",
) -> str:
    """The image's cmdline plus nc.name (the guest prints it) and a serial console if none;
    with a network, nc.ip=<cidr> nc.gw=<gateway>, which the tiny guest's init applies to eth0.
    Our keys from the image's cmdline are dropped so that only the VM's own values count."""
    parts = base.split()
    if not any(p.startswith("console=") for p in parts):
        parts.insert(0, f"console={_SERIAL_CONSOLE.get(arch, 'ttyS0')}")
    parts = [p for p in parts if not p.startswith(("nc.name=", *_NET_KEYS))]
    parts.append(f"nc.name={vm_name}")
    if network is not None:
        parts += [f"nc.ip={network.address}", f"nc.gw={network.gateway}"]
        if ping:
            try:
                parts.append(f"nc.ping={ipaddress.ip_address(ping)}")
            except ValueError:
                raise InvalidArgument(f"label {PING_LABEL}={ping!r} is not an IP address") from None
    return " ".join(parts)


def validate_network(net: NetworkAttachment) -> None:
    """Refuse what would give a guest without a working NIC, before libvirt or the guest does."""
    if not _BRIDGE_RE.match(net.bridge):
        raise InvalidArgument(
            f"bridge {net.bridge!r} must be a Linux interface name (1-15 letters, digits, '.-_')"
        )
    mac = net.mac.lower()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
        raise InvalidArgument(f"mac {net.mac!r} must be a unicast MAC like 52:54:00:12:34:56")
    if "/" not in net.address:
        raise InvalidArgument(f"address {net.address!r} must be in CIDR form, e.g. 10.251.0.5/32")
    try:
        address = ipaddress.ip_interface(net.address)
        gateway = ipaddress.ip_address(net.gateway)
    except ValueError as err:
        raise InvalidArgument(f"network of vm: {err}") from None
    if address.version != gateway.version:
        raise InvalidArgument(f"gateway {net.gateway} is not an IPv{address.version} address")
    if address.ip == gateway:
        raise InvalidArgument(f"gateway {net.gateway} equals the vm's own address")


def _metadata_element(meta: VMMetadata) -> ET.Element:
    outer = ET.Element("metadata")
    vm = ET.SubElement(outer, f"{{{NAMESPACE}}}vm")
    ET.SubElement(vm, f"{{{NAMESPACE}}}id").text = meta.vm_id
    ET.SubElement(vm, f"{{{NAMESPACE}}}name").text = meta.name
    ET.SubElement(vm, f"{{{NAMESPACE}}}generation").text = str(meta.generation)
    ET.SubElement(vm, f"{{{NAMESPACE}}}image").text = meta.image
    if meta.stop_after_s is not None:
        ET.SubElement(vm, f"{{{NAMESPACE}}}stop_after").text = repr(meta.stop_after_s)
    simple = {k: v for k, v in meta.labels.items() if _LABEL_RE.match(k) and len(v) <= 256}
    if simple:
        labels = ET.SubElement(vm, f"{{{NAMESPACE}}}labels")
        for key in sorted(simple):
            ET.SubElement(labels, f"{{{NAMESPACE}}}label", key=key, value=simple[key])
    return outer


def metadata_xml(meta: VMMetadata) -> str:
    """Our <vm> element alone and without namespace: virDomainSetMetadata adds the namespace."""
    vm = _metadata_element(meta)[0]
    for el in vm.iter():
        el.tag = el.tag.rpartition("}")[2]
    return ET.tostring(vm, encoding="unicode")


def parse_metadata(domain_xml: str) -> VMMetadata | None:
    """Our metadata from a full domain XML, or None for a domain we do not manage."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    vm = root.find(f"metadata/{{{NAMESPACE}}}vm")
    if vm is None:
        return None
    vm_id = (vm.findtext(f"{{{NAMESPACE}}}id") or "").strip()
    name = (vm.findtext(f"{{{NAMESPACE}}}name") or "").strip()
    try:
        generation = int((vm.findtext(f"{{{NAMESPACE}}}generation") or "0").strip())
    except ValueError:
        generation = 0
    if not vm_id:
        return None
    labels = {
        el.get("key", ""): el.get("value", "")
        for el in vm.findall(f"{{{NAMESPACE}}}labels/{{{NAMESPACE}}}label")
        if el.get("key")
    }
    image = (vm.findtext(f"{{{NAMESPACE}}}image") or "").strip()
    stop_after: float | None = None
    text = (vm.findtext(f"{{{NAMESPACE}}}stop_after") or "").strip()
    if text:
        try:
            stop_after = float(text)
        except ValueError:
            stop_after = None
        if stop_after is not None and not 0 <= stop_after < math.inf:
            stop_after = None
    return VMMetadata(vm_id, name, generation, image, labels, stop_after)


ET.register_namespace(PREFIX, NAMESPACE)
