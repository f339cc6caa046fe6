"""The Hypervisor contract, run against libvirt's test driver and against real QEMU guests.

Every driver (and any future in-memory double) must pass this suite unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from agent.fencing import StaleGeneration
from agent.hypervisor import domain_xml
from agent.hypervisor.base import (
    BootMedia,
    Hypervisor,
    NetworkAttachment,
    VMEventCallback,
    mac_for,
)
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from lab.libvirtd import PrivateLibvirtd
from shared.domain import VMSpec, VMState, VMStatus
from shared.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NovaCronError,
    Unavailable,
)
from tests.conftest import qemu_backend_problem, require_backend, wait_for

EVENT_TIMEOUT_S = 20.0
BOOT_TIMEOUT_S = 60.0


class Events:
    """Collects (vm_id, event, state) from any thread; waits on a condition with a deadline."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[str, str, VMState]] = []

    def __call__(self, status: VMStatus, event: str) -> None:
        with self.cond:
            self.items.append((status.vm_id, event, status.state))
            self.cond.notify_all()

    def wait(self, vm_id: str, event: str, state: VMState | None = None) -> None:
        def seen() -> bool:
            return any(
                i == vm_id and e == event and (state is None or s == state)
                for i, e, s in self.items
            )

        with self.cond:
            ok = self.cond.wait_for(seen, timeout=EVENT_TIMEOUT_S)
            assert ok, f"no {event!r} event for {vm_id} within {EVENT_TIMEOUT_S}s: {self.items}"


@dataclass
class Backend:
    kind: str  # "test" or "qemu"
    uri: str
    hv: LibvirtHypervisor
    workdir: Path
    catalog: ImageCatalog | None
    created: list[str] = field(default_factory=list)

    def media(self, vm_id: str) -> BootMedia:
        vm_dir = self.workdir / vm_id
        if self.catalog is not None:
            return self.catalog.prepare("tiny", vm_dir)
        vm_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vmlinuz", "initrd.img"):
            (vm_dir / name).write_bytes(b"not booted by the test driver")
        return BootMedia(
            kernel=str(vm_dir / "vmlinuz"), initrd=str(vm_dir / "initrd.img"), cmdline="quiet"
        )

    def console(self, vm_id: str) -> Path:
        return self.workdir / vm_id / "console.log"

    def create(
        self, name: str, generation: int = 1, start_paused: bool = False, vm_id: str = ""
    ) -> tuple[str, VMStatus]:
        vm_id = vm_id or str(uuid.uuid4())
        self.created.append(vm_id)
        media = self.media(vm_id)
        spec = VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128, labels={"app": name})
        status = self.hv.create(
            vm_id, spec, generation, media, str(self.console(vm_id)), start_paused=start_paused
        )
        return vm_id, status


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    catalog = None
    if kind == "test":
        uri = "test:///default"
    else:
        daemon = request.getfixturevalue("private_libvirtd")
        catalog = ImageCatalog(request.getfixturevalue("tiny_image_dir"))
        uri = daemon.uri
    b = Backend(kind, uri, LibvirtHypervisor(uri), tmp_path, catalog)
    try:
        yield b
    finally:  # clean up even when the test failed half-way
        for vm_id in b.created:
            try:
                b.hv.delete(vm_id)
            except NovaCronError as err:  # pragma: no cover - report, keep cleaning
                print(f"cleanup of {vm_id} failed: {err}")
        b.hv.close()


@pytest.fixture(params=["test", pytest.param("qemu", marks=pytest.mark.qemu)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture
def qemu_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Real QEMU guests only: what the test driver cannot show (console, disks, QEMU errors)."""
    yield from _backend("qemu", request, tmp_path)


@pytest.fixture
def libvirt_test_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """libvirt's test driver only: what needs no host resources (bridges) to check."""
    yield from _backend("test", request, tmp_path)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_driver_satisfies_protocol(backend: Backend) -> None:
    hv: Hypervisor = backend.hv  # mypy checks the structural match
    assert hv is backend.hv


def test_host_info(backend: Backend) -> None:
    info = backend.hv.host_info()
    assert info.capacity.vcpus > 0 and info.capacity.memory_mib > 0
    if backend.kind == "qemu":
        assert info.hypervisor.startswith("QEMU ") and info.hypervisor.endswith("(tcg)")
        assert info.arch == "x86_64"
    else:
        assert info.hypervisor == "Test"


def test_create_is_running_and_listed(backend: Backend) -> None:
    name = _unique("web")
    t0 = time.monotonic()
    vm_id, status = backend.create(name, generation=3)
    elapsed = time.monotonic() - t0
    assert status.state == VMState.RUNNING
    assert (status.vm_id, status.name, status.generation) == (vm_id, name, 3)
    assert (status.vcpus, status.memory_mib, status.image) == (1, 128, "tiny")
    assert backend.hv.get_vm(vm_id) == status
    assert [s for s in backend.hv.list_vms() if s.vm_id == vm_id] == [status]
    print(f"{backend.kind}: create -> running in {elapsed:.2f}s")


def test_create_again_is_a_no_op(backend: Backend) -> None:
    vm_id, first = backend.create(_unique("idem"), generation=2)
    again = backend.create(first.name, generation=2, vm_id=vm_id)[1]
    assert again == first
    assert [s.vm_id for s in backend.hv.list_vms()].count(vm_id) == 1
    with pytest.raises(FailedPrecondition, match="generation"):
        backend.create(first.name, generation=1, vm_id=vm_id)
    newer = backend.create(first.name, generation=5, vm_id=vm_id)[1]
    assert newer.generation == 5 and newer.state == VMState.RUNNING


def test_set_generation_moves_the_copy_on_and_never_back(backend: Backend) -> None:
    hv = backend.hv
    vm_id, first = backend.create(_unique("gen"), generation=2)
    assert hv.set_generation(vm_id, 2) == first  # the same one: nothing changes
    moved = hv.set_generation(vm_id, 5)
    assert (moved.generation, moved.state) == (5, VMState.RUNNING)
    assert hv.get_vm(vm_id) == moved
    assert [s.generation for s in hv.list_vms() if s.vm_id == vm_id] == [5]
    with pytest.raises(StaleGeneration, match="this node holds generation 5"):
        hv.set_generation(vm_id, 4)
    # written into the persistent definition too: a stopped and restarted VM keeps it
    assert hv.stop(vm_id).generation == 5
    assert hv.start(vm_id).generation == 5
    inactive = libvirt.open(backend.uri)
    try:
        xml = inactive.lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        inactive.close()
    meta = domain_xml.parse_metadata(xml)
    assert meta is not None and (meta.generation, meta.name) == (5, first.name)
    assert meta.labels == {"app": first.name}  # the rest of our record stays
    # a create at the held generation is a no-op, one older is refused by the same rule
    assert backend.create(first.name, generation=5, vm_id=vm_id)[1].generation == 5
    with pytest.raises(StaleGeneration):
        backend.create(first.name, generation=3, vm_id=vm_id)
    with pytest.raises(NotFound):
        hv.set_generation(str(uuid.uuid4()), 1)


def test_no_migration_no_progress(backend: Backend) -> None:
    vm_id, _ = backend.create(_unique("prog"))
    assert backend.hv.migration_progress(vm_id) is None
    assert backend.hv.migration_progress(str(uuid.uuid4())) is None


def test_start_paused(backend: Backend) -> None:
    vm_id, status = backend.create(_unique("paused"), start_paused=True)
    assert status.state == VMState.PAUSED
    assert backend.hv.resume(vm_id).state == VMState.RUNNING


def test_suspend_resume_stop_start(backend: Backend) -> None:
    hv = backend.hv
    vm_id, _ = backend.create(_unique("life"))
    assert hv.suspend(vm_id).state == VMState.PAUSED
    assert hv.suspend(vm_id).state == VMState.PAUSED  # idempotent
    assert hv.resume(vm_id).state == VMState.RUNNING
    assert hv.resume(vm_id).state == VMState.RUNNING
    stopped = hv.stop(vm_id)
    assert stopped.state == VMState.STOPPED
    assert hv.stop(vm_id).state == VMState.STOPPED
    assert hv.get_vm(vm_id) is not None  # the definition stays
    with pytest.raises(FailedPrecondition):
        hv.suspend(vm_id)
    assert hv.start(vm_id).state == VMState.RUNNING
    assert hv.start(vm_id).state == VMState.RUNNING


def test_delete_is_idempotent(backend: Backend) -> None:
    vm_id, _ = backend.create(_unique("del"))
    backend.hv.delete(vm_id)
    assert backend.hv.get_vm(vm_id) is None
    assert vm_id not in {s.vm_id for s in backend.hv.list_vms()}
    backend.hv.delete(vm_id)


def test_unknown_vm(backend: Backend) -> None:
    unknown = str(uuid.uuid4())
    assert backend.hv.get_vm(unknown) is None
    for op in (backend.hv.start, backend.hv.stop, backend.hv.suspend, backend.hv.resume):
        with pytest.raises(NotFound, match=unknown):
            op(unknown)
    backend.hv.delete(unknown)


def test_foreign_domains_are_invisible(backend: Backend) -> None:
    conn = libvirt.open(backend.uri)
    foreign_id = str(uuid.uuid4())
    dom_type = "test" if backend.kind == "test" else "qemu"
    xml = (
        f"<domain type='{dom_type}'><name>foreign-{foreign_id[:8]}</name><uuid>{foreign_id}</uuid>"
        "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    )
    dom = conn.defineXML(xml)
    try:
        names = {s.name for s in backend.hv.list_vms()}
        assert not any(n.startswith("foreign-") for n in names)
        assert "test" not in names  # the test driver's own demo domain
        assert backend.hv.get_vm(foreign_id) is None
        backend.hv.delete(foreign_id)  # not ours: untouched
        assert conn.lookupByUUIDString(foreign_id).name() == f"foreign-{foreign_id[:8]}"
    finally:
        dom.undefine()
        conn.close()


def test_lifecycle_events(backend: Backend) -> None:
    events = Events()
    backend.hv.subscribe(events)
    vm_id, _ = backend.create(_unique("ev"))
    events.wait(vm_id, "defined")
    events.wait(vm_id, "started", VMState.RUNNING)
    backend.hv.suspend(vm_id)
    events.wait(vm_id, "suspended", VMState.PAUSED)
    backend.hv.resume(vm_id)
    events.wait(vm_id, "resumed", VMState.RUNNING)
    backend.hv.stop(vm_id)
    events.wait(vm_id, "stopped", VMState.STOPPED)
    backend.hv.delete(vm_id)
    events.wait(vm_id, "undefined", VMState.MISSING)


async def test_events_reach_several_instances_and_loops(backend: Backend) -> None:
    """Two drivers on one URI, each feeding this test's asyncio loop from libvirt's thread."""
    loop = asyncio.get_running_loop()
    other = LibvirtHypervisor(backend.uri)
    queues: list[asyncio.Queue[tuple[str, str]]] = [asyncio.Queue(), asyncio.Queue()]

    def feeder(q: asyncio.Queue[tuple[str, str]]) -> VMEventCallback:
        def callback(status: VMStatus, event: str) -> None:
            loop.call_soon_threadsafe(q.put_nowait, (status.vm_id, event))

        return callback

    callbacks = [feeder(q) for q in queues]
    try:
        for hv, callback in zip((backend.hv, other), callbacks, strict=True):
            hv.subscribe(callback)
        vm_id, _ = await asyncio.to_thread(backend.create, _unique("loop"))

        async def started(q: asyncio.Queue[tuple[str, str]]) -> None:
            while await q.get() != (vm_id, "started"):
                pass

        await asyncio.wait_for(asyncio.gather(*(started(q) for q in queues)), EVENT_TIMEOUT_S)
    finally:
        backend.hv.unsubscribe(callbacks[0])  # this loop closes before the fixture's cleanup
        await asyncio.to_thread(other.close)


def test_missing_boot_media_is_refused_cleanly(backend: Backend) -> None:
    vm_id = str(uuid.uuid4())
    name = _unique("bad")
    media = BootMedia(kernel=str(backend.workdir / "no-such-vmlinuz"))
    spec = VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    with pytest.raises(InvalidArgument, match="no-such-vmlinuz"):
        backend.hv.create(vm_id, spec, 1, media, str(backend.workdir / "c.log"))
    with pytest.raises(InvalidArgument, match="UUID"):
        backend.hv.create("not-a-uuid", spec, 1, media, str(backend.workdir / "c.log"))
    assert backend.hv.get_vm(vm_id) is None
    conn = libvirt.open(backend.uri)
    try:
        assert f"nc-{name}" not in {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def test_network_attachment_is_defined_in_libvirt(libvirt_test_backend: Backend) -> None:
    """libvirt accepts our NIC and cmdline as written (test driver: no bridge needed; real
    guests on a real bridge are in test_guest_network.py)."""
    backend = libvirt_test_backend
    vm_id = str(uuid.uuid4())
    backend.created.append(vm_id)
    net = NetworkAttachment("ncbr0", mac_for(vm_id), "10.251.0.5/32", "10.251.255.254")
    media = dataclasses.replace(backend.media(vm_id), network=net)
    spec = VMSpec(name=_unique("nic"), image="tiny", vcpus=1, memory_mib=128)
    conn = libvirt.open(backend.uri)
    try:
        backend.hv.create(vm_id, spec, 1, media, str(backend.console(vm_id)))
        dom = ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(0))
        nic = dom.find("devices/interface[@type='bridge']")
        assert nic is not None
        assert nic.find("source").get("bridge") == "ncbr0"  # type: ignore[union-attr]
        assert nic.find("mac").get("address") == net.mac  # type: ignore[union-attr]
        assert "nc.ip=10.251.0.5/32 nc.gw=10.251.255.254" in (dom.findtext("os/cmdline") or "")
    finally:
        conn.close()


# -- real QEMU guests only -----------------------------------------------------------------


@pytest.mark.qemu
def test_guest_prints_its_first_console_line(qemu_backend: Backend) -> None:
    backend = qemu_backend
    name = _unique("boot")
    t0 = time.monotonic()
    vm_id, _ = backend.create(name)
    log = backend.console(vm_id)
    expected = f"NovaCron guest {name} booted: kernel "

    def booted() -> bool:
        return log.exists() and expected in log.read_text(errors="replace")

    wait_for(booted, BOOT_TIMEOUT_S, f"{expected!r} in {log}", interval_s=0.1)
    print(f"first console line after {time.monotonic() - t0:.2f}s")


@pytest.mark.qemu
def test_vm_disk_is_an_overlay_on_the_image_base(qemu_backend: Backend) -> None:
    backend = qemu_backend
    assert backend.catalog is not None
    vm_id, _ = backend.create(_unique("disk"))
    disk = backend.workdir / vm_id / "disk.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    base = backend.catalog.manifest("tiny").disk
    assert info["format"] == "qcow2"
    assert Path(info["full-backing-filename"]).resolve() == base
    assert info["backing-filename-format"] == "qcow2"


@pytest.mark.qemu
def test_start_failure_leaves_nothing_defined(qemu_backend: Backend) -> None:
    backend = qemu_backend
    vm_id = str(uuid.uuid4())
    name = _unique("broken")
    vm_dir = backend.workdir / vm_id
    media = backend.media(vm_id)
    (vm_dir / "disk.qcow2").write_bytes(b"this is not a qcow2 image")  # QEMU refuses to start
    spec = VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    with pytest.raises(Internal) as err:
        backend.hv.create(vm_id, spec, 1, media, str(vm_dir / "console.log"))
    assert "start" in str(err.value)
    assert backend.hv.get_vm(vm_id) is None


@pytest.mark.qemu
def test_a_dead_daemon_is_unavailable_and_leaves_no_guest(
    tmp_path: Path, tiny_image_dir: Path
) -> None:
    """The agent must tell 'libvirtd is gone' (retry later) from a VM error, and stopping our
    private daemon must not leave its QEMU guests running."""
    problem = qemu_backend_problem()
    require_backend(not problem, problem)
    base = Path(tempfile.mkdtemp(prefix="nc-lvd-", dir="/tmp"))
    try:
        with PrivateLibvirtd(base) as daemon:
            daemon_pid = daemon.pid
            b = Backend("qemu", daemon.uri, LibvirtHypervisor(daemon.uri), tmp_path, None)
            b.catalog = ImageCatalog(tiny_image_dir)
            name = _unique("orphan")
            b.create(name)
            qemu_pid = int((daemon.dir("run") / "qemu" / f"nc-{name}.pid").read_text())
            assert Path(f"/proc/{qemu_pid}").exists()
        assert daemon_pid is not None and not _running(daemon_pid)
        assert not _running(qemu_pid)
        daemon.stop()  # idempotent
        with pytest.raises(Unavailable):
            b.hv.list_vms()
        b.hv.close()
        with pytest.raises(Unavailable, match="cannot connect"):
            LibvirtHypervisor(daemon.uri)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"
