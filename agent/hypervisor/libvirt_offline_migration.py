"""The libvirt driver's cold and snapshot migration: the guest stops here (shut down, or saved
with its memory and device state), its files go to the target through the target's own
libvirtd (a transient storage pool over the VM's staged directory, libvirt streams on the
same TCP port live migration uses), and the target's agent lands it (`land`).

Nothing here is destroyed: until the target runs the VM, the copy here stays defined and
startable (a saved one restores from its save file, `restore_saved`). The controller deletes
it once the target runs the guest."""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import libvirt
import structlog

from agent.fencing import fence
from agent.hypervisor.base import MigrationProgress, MigrationTarget
from agent.hypervisor.libvirt_connection import LibvirtConnection, _mapped
from agent.hypervisor.migration_xml import _migration_problem, _retarget_xml
from agent.vm_files import (
    INCOMING_DEFINE,
    INCOMING_DISK,
    INCOMING_RESTORE,
    INCOMING_SAVE,
    SAVE_FILE,
)
from shared.domain import VMStatus
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, NovaCronError

log = structlog.get_logger(__name__)

OFFLINE_MODES = ("cold", "snapshot")
CHUNK = 1 << 20
SHUTDOWN_POLL_S = 0.2


class LibvirtOfflineMigration(LibvirtConnection):
    """Send a stopped or saved guest to another node, land one that arrived, restore a save."""

    def offline_progress(self, vm_id: str) -> MigrationProgress | None:
        """Bytes sent so far of a cold or snapshot migration running here, or None."""
        return self._transfers.get(vm_id)

    def send_offline(
        self,
        vm_id: str,
        target: MigrationTarget,
        mode: str,
        generation: int = 0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        """Stop the guest (`cold`: ACPI shutdown, forced after `shutdown_timeout_s`;
        `snapshot`: libvirt save to <vm dir>/migration.save) and put its disk overlay, its
        definition (the target's paths, `generation`) and any save file into the target's
        staged directory (the directory of `target.console_log`). On failure the guest runs here
        again as it did (a saved one restored) and the error says so."""
        if mode not in OFFLINE_MODES:
            raise InvalidArgument(f"migrate {vm_id}: unknown offline mode {mode!r}")
        if not target.libvirt_uri or not target.console_log:
            raise InvalidArgument(
                f"migrate {vm_id}: the target gives no libvirt URI or VM directory"
            )
        dom = self._require(vm_id)
        with _mapped("migrate", vm_id):
            meta = self._meta(dom)
            state = dom.state()[0]
            persist_xml = str(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
            live_xml = str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
        if meta is not None and generation > 0:
            fence(meta.generation, generation, f"migrate vm {vm_id}")
        problem = _migration_problem(persist_xml)
        if problem:
            raise FailedPrecondition(f"migrate {vm_id}: {problem}")
        running = state != libvirt.VIR_DOMAIN_SHUTOFF
        if mode == "snapshot" and not running:
            raise FailedPrecondition(f"migrate {vm_id}: a stopped vm has no memory to snapshot")
        disk = _disk_of(persist_xml)
        save = Path(_console_of(persist_xml)).parent / SAVE_FILE
        files = {INCOMING_DEFINE: _retarget_xml(persist_xml, target, generation).encode()}
        if mode == "snapshot":
            files[INCOMING_RESTORE] = _retarget_xml(live_xml, target, generation).encode()
        self._stop_for_offline(dom, vm_id, mode, running, save, shutdown_timeout_s)
        try:
            paths = {INCOMING_DISK: Path(disk)} if disk else {}
            if mode == "snapshot":
                paths[INCOMING_SAVE] = save
            self._upload(vm_id, target, paths, files)
        except NovaCronError as err:
            log.warning("vm_offline_migration_failed", vm_id=vm_id, error=str(err))
            self._undo_stop(dom, vm_id, mode, running, save, err)
            raise type(err)(f"{err}; the vm runs here again") from err
        log.info("vm_sent_offline", vm_id=vm_id, mode=mode, target=target.libvirt_uri)

    def _stop_for_offline(
        self, dom: Any, vm_id: str, mode: str, running: bool, save: Path, timeout_s: float
    ) -> None:
        if mode == "snapshot":
            save.unlink(missing_ok=True)
            with _mapped("save", vm_id):
                paused = dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
                flags = (
                    libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
                )
                dom.saveFlags(str(save), None, flags)
            log.info("vm_saved", vm_id=vm_id, path=str(save), bytes=save.stat().st_size)
            return
        if not running:
            return
        with _mapped("shutdown", vm_id):
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                timeout_s = 0  # a paused guest cannot react to ACPI: forced off at once
            else:
                dom.shutdown()
            deadline = time.monotonic() + timeout_s
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(SHUTDOWN_POLL_S)
            graceful = not dom.isActive()
            if not graceful:
                dom.destroy()
        log.info("vm_shut_down", vm_id=vm_id, graceful=graceful)

    def _undo_stop(
        self, dom: Any, vm_id: str, mode: str, running: bool, save: Path, cause: Exception
    ) -> None:
        try:
            if mode == "snapshot":
                self.restore_saved(vm_id, str(save))
            elif running:
                with _mapped("start", vm_id):
                    dom.create()
        except NovaCronError as err:
            raise type(err)(
                f"{cause}; and starting the vm here again failed too: {err} "
                f"(its definition and files are kept: `novacron vm start`)"
            ) from err

    def restore_saved(self, vm_id: str, save_path: str) -> VMStatus:
        """Run a VM again from the save file a snapshot migration left here (the guest goes on
        where it was); the file goes once the guest runs."""
        dom = self._require(vm_id)
        with _mapped("restore", vm_id):
            if not dom.isActive():
                self._conn.restoreFlags(save_path, None, 0)
        Path(save_path).unlink(missing_ok=True)
        log.info("vm_restored", vm_id=vm_id, path=save_path)
        return self._require_status(self._require(vm_id), vm_id)

    def _upload(
        self,
        vm_id: str,
        target: MigrationTarget,
        paths: dict[str, Path],
        blobs: dict[str, bytes],
    ) -> None:
        """Each file into the target's staged directory, as a volume of a transient pool."""
        total = sum(p.stat().st_size for p in paths.values()) + sum(map(len, blobs.values()))
        progress = _Progress(self._transfers, vm_id, total)
        with _mapped("connect", target.libvirt_uri):
            remote = libvirt.open(target.libvirt_uri)
        try:
            with _staging_pool(remote, vm_id, Path(target.console_log).parent) as pool:
                for name, data in blobs.items():
                    _send(remote, pool, name, len(data), iter([data]), progress)
                for name, path in paths.items():
                    _send(remote, pool, name, path.stat().st_size, _chunks(path), progress)
        finally:
            progress.done()
            with suppress(libvirt.libvirtError):
                remote.close()

    def land(self, vm_id: str, vm_dir: str, generation: int, *, start: bool = True) -> VMStatus:
        """On the target: define the VM that arrived in `vm_dir` and run it, from its save
        file (the guest continues) or by booting it (cold); without `start` (a stopped VM's
        cold move), only define it. Its disk must already be in place
        (agent.images.catalog.ImageCatalog.adopt_overlay). Nothing is left defined on failure."""
        directory = Path(vm_dir)
        define = directory / INCOMING_DEFINE
        if not define.is_file():
            raise NotFound(f"land {vm_id}: nothing arrived in {directory}")
        if self._lookup_any(vm_id) is not None:
            raise FailedPrecondition(f"land {vm_id}: a domain with this id is already here")
        with _mapped("define", vm_id):
            dom = self._conn.defineXML(define.read_text())
        meta = self._meta(dom)
        if meta is None or meta.generation != generation:
            self._undefine_arrival(dom)
            raise FailedPrecondition(
                f"land {vm_id}: the definition that arrived is not generation {generation}"
            )
        save = directory / INCOMING_SAVE
        restored = save.is_file()
        if restored and not start:
            self._undefine_arrival(dom)
            raise FailedPrecondition(f"land {vm_id}: a saved guest cannot land stopped")
        try:
            with _mapped("start", vm_id):
                if not start:
                    pass  # defined only: it stays stopped, as it was on the source
                elif restored:
                    restore = (directory / INCOMING_RESTORE).read_text()
                    self._conn.restoreFlags(str(save), restore, 0)
                else:
                    dom.create()
        except (NovaCronError, OSError):
            self._undefine_arrival(dom)
            raise
        for name in (INCOMING_DEFINE, INCOMING_RESTORE, INCOMING_SAVE):
            (directory / name).unlink(missing_ok=True)
        log.info("vm_landed", vm_id=vm_id, restored=restored, generation=generation)
        return self._require_status(self._require(vm_id), vm_id)

    @staticmethod
    def _undefine_arrival(dom: Any) -> None:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as err:
            log.warning("undefine_arrival_failed", error=str(err))


class _Progress:
    """Bytes sent, as migration_progress reports them (from another thread)."""

    def __init__(self, table: dict[str, MigrationProgress], vm_id: str, total: int) -> None:
        self.table, self.vm_id, self.total, self.sent = table, vm_id, total, 0
        self.lock = threading.Lock()
        self._publish()

    def add(self, n: int) -> None:
        with self.lock:
            self.sent += n
            self._publish()

    def _publish(self) -> None:
        self.table[self.vm_id] = MigrationProgress(
            vm_id=self.vm_id,
            migration_id="",
            data_total=self.total,
            data_processed=self.sent,
            data_remaining=max(0, self.total - self.sent),
            memory_dirty_rate=0,
        )

    def done(self) -> None:
        self.table.pop(self.vm_id, None)


@contextmanager
def _staging_pool(conn: Any, vm_id: str, directory: Path) -> Iterator[Any]:
    """A transient dir pool over the target's staged VM directory (it must exist there)."""
    name = f"ncmig-{vm_id}"
    with _mapped("staging pool", vm_id):
        try:
            old = conn.storagePoolLookupByName(name)  # a leftover of an interrupted try
            old.destroy()
        except libvirt.libvirtError:
            pass
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{directory}</path></target></pool>",
            0,
        )
    try:
        yield pool
    finally:
        try:
            pool.destroy()  # transient: the pool goes, the files stay
        except libvirt.libvirtError as err:
            log.warning("staging_pool_destroy_failed", vm_id=vm_id, error=str(err))


def _send(
    conn: Any, pool: Any, name: str, size: int, chunks: Iterator[bytes], progress: _Progress
) -> None:
    with _mapped("upload", name):
        with suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(name).delete(0)
        vol = pool.createXML(
            f"<volume><name>{name}</name><capacity>0</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = stream.send(view.tobytes())
                    view = view[n:]
                    progress.add(n)
            stream.finish()
        except BaseException:
            with suppress(libvirt.libvirtError):
                stream.abort()
            raise


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _disk_of(xml: str) -> str:
    """The VM's one disk file, or "" without one."""
    source = ET.fromstring(xml).find("devices/disk[@device='disk']/source[@file]")
    return "" if source is None else str(source.get("file"))


def _console_of(xml: str) -> str:
    """The VM's console log: its directory is the VM's own (agent.vm_files)."""
    source = ET.fromstring(xml).find("devices/serial[@type='file']/source[@path]")
    if source is None:
        raise FailedPrecondition("the vm has no console log file, so no directory of its own")
    return str(source.get("path"))
