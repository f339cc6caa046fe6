"""Two edge nodes on this host for the migration contract tests (live, cold, snapshot).

Each node is a network namespace of its own with its own private libvirtd (listening on TCP in
that namespace, distinct host_uuid, migration_address/migration_host set to the node's address,
see /work/shared/MACHINE-NOTES.md). A veth pair joins the two namespaces on a private
10.78.<x>.0/24 that only they see: the root namespace has no address or route in it, so no
migration traffic can leave the machine. The test reaches each daemon through its unix socket.
Node B boots from its own copy of the image and its own VM directories, so that the domain
arriving there must use B's paths. Guests, daemons and namespaces go away even when a test fails.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import shutil
import subprocess
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from agent.hypervisor import domain_xml
from agent.hypervisor.base import BootMedia, MigrationTarget
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.builder import FIRST_LINE, HEARTBEAT_S
from agent.images.catalog import ImageCatalog
from lab.libvirtd import PrivateLibvirtd
from shared.domain import VMSpec, VMState, VMStatus
from shared.errors import NovaCronError
from tests.conftest import qemu_backend_problem, require_backend, wait_for

BOOT_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 20.0
HEARTBEAT_TIMEOUT_S = 3 * HEARTBEAT_S + 10.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _ip_ok(*args: str) -> None:
    proc = _ip(*args)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.strip()}"


class Events:
    """Lifecycle events of one node, collected from libvirt's event thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[str, str, VMState, str]] = []

    def __call__(self, status: VMStatus, event: str) -> None:
        with self.cond:
            self.items.append((status.vm_id, event, status.state, status.reason))
            self.cond.notify_all()

    def of(self, vm_id: str) -> list[tuple[str, VMState, str]]:
        with self.cond:
            return [(e, s, r) for i, e, s, r in self.items if i == vm_id]

    def wait(self, vm_id: str, event: str, state: VMState, reason: str | None = None) -> None:
        def seen() -> bool:
            return any(
                e == event and s == state and (reason is None or r == reason)
                for e, s, r in self.of(vm_id)
            )

        with self.cond:
            ok = self.cond.wait_for(seen, timeout=EVENT_TIMEOUT_S)
        assert ok, (
            f"no {event!r}/{state} event for {vm_id} within {EVENT_TIMEOUT_S}s: {self.of(vm_id)}"
        )


@dataclass
class Node:
    label: str
    netns: str
    address: str
    daemon: PrivateLibvirtd
    catalog: ImageCatalog
    vm_root: Path
    hv: LibvirtHypervisor | None = None
    events: Events = field(default_factory=Events)

    @property
    def driver(self) -> LibvirtHypervisor:
        assert self.hv is not None
        return self.hv

    def vm_dir(self, vm_id: str) -> Path:
        return self.vm_root / vm_id

    def console(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    def media(self, vm_id: str, disk: bool = True) -> BootMedia:
        """The tiny image's media from this node's own image copy (kernel, initrd and a
        qcow2 overlay on this node's base image), optionally without the disk."""
        media = self.catalog.prepare("tiny", self.vm_dir(vm_id))
        return media if disk else dataclasses.replace(media, disk="")

    def target(self, vm_id: str) -> MigrationTarget:
        """What this node's agent would answer to prepare_migration: its addresses, its paths."""
        media = self.media(vm_id)
        return MigrationTarget(
            libvirt_uri=f"qemu+tcp://{self.address}/system",
            data_uri=f"tcp://{self.address}",
            kernel=media.kernel,
            initrd=media.initrd,
            disk=media.disk,
            console_log=str(self.console(vm_id)),
        )

    def domain_xml(self, vm_id: str) -> ET.Element:
        conn = libvirt.open(self.daemon.uri)
        try:
            return ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(0))
        finally:
            conn.close()

    def inactive_xml(self, vm_id: str) -> str:
        """The VM's persistent definition, straight from libvirt."""
        conn = libvirt.open(self.daemon.uri)
        try:
            return str(conn.lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        finally:
            conn.close()

    def completed_job(self, vm_id: str) -> dict[str, object]:
        """libvirt's raw figures of the VM's last completed job, straight from libvirt."""
        conn = libvirt.open(self.daemon.uri)
        try:
            dom = conn.lookupByUUIDString(vm_id)
            flags = (
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
            return dict(dom.jobStats(flags))
        finally:
            conn.close()


@dataclass
class Pair:
    a: Node
    b: Node
    subnet: ipaddress.IPv4Network
    created: list[str] = field(default_factory=list)

    def create(
        self, node: Node, name: str, generation: int = 1, disk: bool = True
    ) -> tuple[str, VMStatus]:
        vm_id = str(uuid.uuid4())
        self.created.append(vm_id)
        spec = VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128, labels={"app": name})
        status = node.driver.create(
            vm_id, spec, generation, node.media(vm_id, disk), str(node.console(vm_id))
        )
        return vm_id, status


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _booted(node: Node, vm_id: str, name: str) -> None:
    log = node.console(vm_id)
    first = FIRST_LINE.format(name=name, kernel="")

    def seen() -> bool:
        return log.exists() and first in log.read_text(errors="replace")

    wait_for(seen, BOOT_TIMEOUT_S, f"{first!r} in {log}", interval_s=0.1)


def _assert_same_disk(source: Node, vm_id: str, target: MigrationTarget) -> None:
    """The target's overlay holds the same content as the source's (over its own base)."""
    same = subprocess.run(
        ["qemu-img", "compare", "-U", str(source.vm_dir(vm_id) / "disk.qcow2"), target.disk],
        capture_output=True,
        text=True,
        check=False,
    )
    assert same.returncode == 0, same.stdout + same.stderr


def _qemu_alive(node: Node, name: str) -> bool:
    pid_file = node.daemon.dir("run") / "qemu" / f"{domain_xml.domain_name(name)}.pid"
    try:
        pid = int(pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"


@pytest.fixture(scope="module")
def nodes(tiny_image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    problem = qemu_backend_problem()
    require_backend(not problem, problem)
    for tool in ("ip", "nsenter"):
        require_backend(shutil.which(tool) is not None, f"{tool} not installed (util-linux)")
    tag = uuid.uuid4().hex[:6]
    subnet = ipaddress.IPv4Network(f"10.78.{random.randint(1, 254)}.0/24")
    hosts = list(subnet.hosts())
    netns_names = {"a": f"ncmig-a-{tag}", "b": f"ncmig-b-{tag}"}
    veths = {"a": f"ncm{tag}a", "b": f"ncm{tag}b"}  # 10 characters: fits IFNAMSIZ
    work = tmp_path_factory.mktemp("migration")
    # a short path: the daemons' unix sockets must fit in 107 bytes
    daemon_dir = Path(tempfile.mkdtemp(prefix="nc-mig-", dir="/tmp"))
    made_netns: list[str] = []
    daemons: list[PrivateLibvirtd] = []
    pair_nodes: dict[str, Node] = {}
    try:
        for ns in netns_names.values():
            made = _ip("netns", "add", ns)
            require_backend(made.returncode == 0, f"cannot add a namespace: {made.stderr.strip()}")
            made_netns.append(ns)
            _ip_ok("-n", ns, "link", "set", "lo", "up")
        _ip_ok(
            "link", "add", veths["a"], "netns", netns_names["a"], "type", "veth",
            "peer", "name", veths["b"], "netns", netns_names["b"],
        )  # fmt: skip
        for i, label in enumerate(("a", "b")):
            ns, dev = netns_names[label], veths[label]
            _ip_ok("-n", ns, "addr", "add", f"{hosts[i]}/{subnet.prefixlen}", "dev", dev)
            _ip_ok("-n", ns, "link", "set", dev, "up")
        images = {"a": tiny_image_dir, "b": work / "images-b"}
        shutil.copytree(tiny_image_dir, images["b"], symlinks=True)  # B's own image paths
        for i, label in enumerate(("a", "b")):
            address = str(hosts[i])
            daemon = PrivateLibvirtd(
                daemon_dir / label,
                netns=f"/run/netns/{netns_names[label]}",
                listen=True,
                extra_libvirtd_conf={"listen_addr": f'"{address}"'},
                extra_qemu_conf={
                    "migration_address": f'"{address}"',
                    "migration_host": f'"{address}"',
                },
            )
            daemons.append(daemon)
            daemon.start()
            node = Node(
                label, netns_names[label], address, daemon, ImageCatalog(images[label]),
                work / f"vms-{label}",
            )  # fmt: skip
            node.vm_root.mkdir()
            node.hv = LibvirtHypervisor(daemon.uri)
            pair_nodes[label] = node
        assert daemons[0].host_uuid != daemons[1].host_uuid  # or: "migrate to the same host"
        yield Pair(pair_nodes["a"], pair_nodes["b"], subnet)
    finally:
        for node in pair_nodes.values():
            node.driver.close()
        for daemon in daemons:  # destroys and undefines every domain, then stops the daemon
            try:
                daemon.stop()
            except Exception as err:  # pragma: no cover - report, keep cleaning
                print(f"stopping libvirtd {daemon.base_dir} failed: {err}")
        for ns in made_netns:  # takes the veth pair with it
            _ip("netns", "delete", ns)
        shutil.rmtree(daemon_dir, ignore_errors=True)


@pytest.fixture
def pair(nodes: Pair) -> Iterator[Pair]:
    """The two nodes with fresh event collectors; every VM the test made is deleted after it,
    on both nodes (it may be on either side, depending on where the test failed)."""
    for node in (nodes.a, nodes.b):
        node.events = Events()
        node.driver.subscribe(node.events)
    try:
        yield nodes
    finally:
        for node in (nodes.a, nodes.b):
            node.driver.unsubscribe(node.events)
            for vm_id in nodes.created:
                try:
                    node.driver.delete(vm_id)
                except NovaCronError as err:  # pragma: no cover - report, keep cleaning
                    print(f"cleanup of {vm_id} on {node.label} failed: {err}")
        nodes.created.clear()
