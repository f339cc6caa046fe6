"""The libvirt driver: the real `Hypervisor` for QEMU guests (and libvirt's test driver).

Blocking by design; the agent calls it from a worker thread. Lifecycle events come from libvirt's
default event loop, run by one daemon thread per process and shared by every instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import libvirt
import structlog

from agent.fencing import Fence, fence
from agent.hypervisor import domain_xml
from agent.hypervisor.base import (
    BootMedia,
    HostInfo,
    MigrationProgress,
    MigrationStats,
    MigrationTarget,
    VMEventCallback,
)
from agent.hypervisor.domain_xml import VMMetadata
from agent.hypervisor.kvm_probe import kvm_works
from shared.domain import Capacity, VMSpec, VMState, VMStatus
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NovaCronError,
    Unavailable,
)

log = structlog.get_logger(__name__)

_STATES: dict[int, VMState] = {
    libvirt.VIR_DOMAIN_NOSTATE: VMState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: VMState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VMState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: VMState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: VMState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VMState.PAUSED,
}

# lifecycle event -> (event name, state the VM is in after it; None = ask libvirt)
_EVENTS: dict[int, tuple[str, VMState | None]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", None),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", VMState.MISSING),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", VMState.RUNNING),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("suspended", VMState.PAUSED),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", VMState.RUNNING),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", VMState.STOPPED),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", None),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", VMState.PAUSED),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", VMState.CRASHED),
}

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
}

# (lifecycle event, detail) of a live migration -> (state after it, None = ask libvirt; reason)
_MIGRATION_EVENTS: dict[tuple[int, int], tuple[VMState | None, str]] = {
    # destination: QEMU waits, paused, for the guest's state (it may still fail)
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED): (
        None,
        "incoming migration",
    ),
    # source: paused for the final copy of its memory
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED): (
        VMState.PAUSED,
        "migrating",
    ),
    # post-copy (`migrate(postcopy=True)`): the guest runs on the destination, which pulls its
    # remaining memory from the paused source; if that fails, both ends stay paused
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY): (
        VMState.RUNNING,
        "post-copy: pulling memory",
    ),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY): (
        VMState.PAUSED,
        "post-copy: running on the destination",
    ),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED): (
        VMState.PAUSED,
        "post-copy failed",
    ),
    # source: the guest now runs on the destination. The last event of a VM that left: libvirt
    # sends no "undefined" after it, although UNDEFINE_SOURCE removed the definition
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): (
        VMState.STOPPED,
        "migrated",
    ),
}

# live, peer-to-peer (the source's libvirtd drives it), persistent there and gone from here
MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
_LEFT = (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
_MIGRATABLE_STATES = (
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
)

# the source's state once the guest runs on the destination (post-copy)
_PAUSED_POSTCOPY = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in one daemon thread.

    libvirt needs this before a connection is opened for events and keepalives to work, and
    allows it only once per process; every instance and asyncio loop shares the thread.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_quiet_error_handler, None)
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        _event_thread.start()


def _quiet_error_handler(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


def _run_events() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # pragma: no cover - keep the process's only event loop alive
            log.exception("libvirt_event_loop_error")


def _error_code(err: libvirt.libvirtError) -> int:
    code = err.get_error_code()
    return int(code) if code is not None else -1


@contextmanager
def _mapped(op: str, vm_id: str = "") -> Iterator[None]:
    """Translate libvirt errors into shared.errors, keeping libvirt's own message."""
    try:
        yield
    except libvirt.libvirtError as err:
        code = _error_code(err)
        msg = f"{op}{' ' + vm_id if vm_id else ''}: {err.get_error_message() or err}"
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(msg) from err
        if code in (
            libvirt.VIR_ERR_OPERATION_INVALID,
            libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,  # e.g. the test driver cannot migrate
            libvirt.VIR_ERR_NO_SUPPORT,
        ):
            raise FailedPrecondition(msg) from err
        if code == libvirt.VIR_ERR_NO_CONNECT or err.get_error_domain() == libvirt.VIR_FROM_RPC:
            raise Unavailable(msg) from err
        raise Internal(msg) from err


class LibvirtHypervisor:
    """`Hypervisor` over one libvirt connection.

    virt_type: "auto" picks 'test' for the test driver, 'kvm' only when a probe proves KVM works
    on this host, else 'qemu' (TCG); "qemu" or "kvm" force it. storage_path, if given, is the
    directory whose filesystem size is reported as storage capacity (the image directory).
    """

    def __init__(self, uri: str, virt_type: str = "auto", storage_path: str | None = None) -> None:
        if virt_type not in ("auto", "qemu", "kvm", "test"):
            raise InvalidArgument(f"virt_type must be auto, qemu, kvm or test, got {virt_type!r}")
        ensure_event_loop()
        self._uri = uri
        self._storage_path = storage_path
        self._lock = threading.Lock()
        self._callbacks: list[VMEventCallback] = []
        self._callback_id: int | None = None
        self._known: dict[str, VMMetadata] = {}  # vm_id -> metadata, for "undefined" events
        self._closed = False
        try:
            self._conn: Any = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise Unavailable(f"cannot connect to libvirt at {uri}: {err}") from err
        self._is_test = str(self._conn.getType()).upper() == "TEST"
        if not self._is_test:
            with contextlib.suppress(libvirt.libvirtError):  # notice a dead daemon in ~15 s
                self._conn.setKeepAlive(5, 3)
        self._arch = str(self._conn.getInfo()[0])
        if self._is_test:
            self.virt_type = "test"
        elif virt_type == "auto":
            self.virt_type = "kvm" if kvm_works(self._arch) else "qemu"
        else:
            self.virt_type = virt_type
        log.info("libvirt_connected", uri=uri, virt_type=self.virt_type, arch=self._arch)

    # -- queries ---------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        with _mapped("host_info"):
            info = self._conn.getInfo()
            hv_type = str(self._conn.getType())
            version = int(self._conn.getVersion())
        storage_gib = 0
        if self._storage_path and os.path.isdir(self._storage_path):
            storage_gib = shutil.disk_usage(self._storage_path).total // (1 << 30)
        if self._is_test:
            hypervisor = "Test"
        else:
            ver = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
            hypervisor = f"{hv_type} {ver} ({'tcg' if self.virt_type == 'qemu' else 'kvm'})"
        return HostInfo(
            capacity=Capacity(vcpus=int(info[2]), memory_mib=int(info[1]), storage_gib=storage_gib),
            arch=str(info[0]),
            hypervisor=hypervisor,
        )

    def list_vms(self) -> list[VMStatus]:
        with _mapped("list_vms"):
            domains = self._conn.listAllDomains(0)
        result = []
        for dom in domains:
            try:
                status = self._status(dom)
            except libvirt.libvirtError as err:
                if _error_code(err) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # vanished between listing and reading it
                raise Internal(f"list_vms: {err.get_error_message()}") from err
            if status is not None:
                result.append(status)
        return sorted(result, key=lambda s: s.name)

    def get_vm(self, vm_id: str) -> VMStatus | None:
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        try:
            return self._status(dom)
        except libvirt.libvirtError as err:
            if _error_code(err) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise Internal(f"get_vm {vm_id}: {err.get_error_message()}") from err

    # -- lifecycle -------------------------------------------------------------------------

    def create(
        self,
        vm_id: str,
        spec: VMSpec,
        generation: int,
        media: BootMedia,
        console_log: str,
        start_paused: bool = False,
    ) -> VMStatus:
        vm_id = domain_xml.validate_vm(vm_id, spec, generation)
        for what, path in (
            ("kernel", media.kernel),
            ("initrd", media.initrd),
            ("disk", media.disk),
        ):
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"{what} {path} does not exist (vm {spec.name})")
        if not console_log or not os.path.isdir(os.path.dirname(os.path.abspath(console_log))):
            raise InvalidArgument(f"console log directory of {console_log!r} does not exist")
        xml = domain_xml.build_domain_xml(
            vm_id, spec, generation, media, console_log, self.virt_type, self._arch
        )
        existing = self._lookup_any(vm_id)
        if existing is not None:
            meta = self._meta(existing)
            if meta is None:
                raise AlreadyExists(f"a foreign libvirt domain already has uuid {vm_id}")
            if fence(meta.generation, generation, f"create vm {vm_id}") is Fence.SAME:
                return self._require_status(existing, vm_id)
        self._check_name_free(vm_id, spec.name)
        with _mapped("define", vm_id):
            dom = self._conn.defineXML(xml)
        meta = VMMetadata(vm_id, spec.name, generation, spec.image, dict(spec.labels))
        self._remember(meta)
        if existing is not None and dom.isActive():
            # a running VM keeps its live config until restart; its identity moves on now
            self._write_metadata(dom, meta, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if existing is None or not dom.isActive():
            flags = libvirt.VIR_DOMAIN_START_PAUSED if start_paused else 0
            try:
                with _mapped("start", vm_id):
                    self._start(dom, flags)
            except NovaCronError:
                if existing is None:  # leave nothing behind that we defined ourselves
                    self._undefine_quietly(dom)
                raise
        log.info("vm_created", vm_id=vm_id, name=spec.name, generation=generation)
        return self._require_status(dom, vm_id)

    def start(self, vm_id: str) -> VMStatus:
        dom = self._require(vm_id)
        with _mapped("start", vm_id):
            if not dom.isActive():
                dom.create()
        return self._require_status(dom, vm_id)

    def stop(self, vm_id: str) -> VMStatus:
        dom = self._require(vm_id)
        with _mapped("stop", vm_id):
            if dom.isActive():
                self._destroy(dom)
        return self._require_status(dom, vm_id)

    def suspend(self, vm_id: str) -> VMStatus:
        dom = self._require(vm_id)
        with _mapped("suspend", vm_id):
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_SHUTOFF:
                raise FailedPrecondition(f"suspend {vm_id}: the vm is stopped")
            if state != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()
        return self._require_status(dom, vm_id)

    def resume(self, vm_id: str) -> VMStatus:
        dom = self._require(vm_id)
        with _mapped("resume", vm_id):
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_SHUTOFF:
                raise FailedPrecondition(f"resume {vm_id}: the vm is stopped")
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        return self._require_status(dom, vm_id)

    def set_generation(self, vm_id: str, generation: int) -> VMStatus:
        dom = self._require(vm_id)
        with _mapped("set generation", vm_id):
            meta = self._meta(dom)
        if meta is None:
            raise NotFound(f"vm {vm_id} not found")
        if fence(meta.generation, generation, f"set generation of vm {vm_id}") is Fence.SAME:
            return self._require_status(dom, vm_id)
        meta = replace(meta, generation=generation)
        with _mapped("set generation", vm_id):
            active = bool(dom.isActive())
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if active:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._write_metadata(dom, meta, flags)
        self._remember(meta)
        log.info("vm_generation_set", vm_id=vm_id, generation=generation)
        return self._require_status(dom, vm_id)

    def _write_metadata(self, dom: Any, meta: VMMetadata, flags: int) -> None:
        with _mapped("set metadata", meta.vm_id):
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                domain_xml.metadata_xml(meta),
                domain_xml.PREFIX,
                domain_xml.NAMESPACE,
                flags,
            )

    def interface_devices(self, vm_id: str) -> list[str]:
        dom = self._require(vm_id)
        with _mapped("interface devices", vm_id):
            root = ET.fromstring(dom.XMLDesc(0))
        return [
            str(target.get("dev"))
            for target in root.findall("./devices/interface/target")
            if target.get("dev")
        ]

    def delete(self, vm_id: str) -> None:
        dom = self._lookup(vm_id)
        if dom is None:
            return
        try:
            with _mapped("delete", vm_id):
                if dom.isActive():
                    self._destroy(dom)
                self._undefine(dom)
        except NotFound:
            pass  # someone else removed it meanwhile: the outcome we wanted
        log.info("vm_deleted", vm_id=vm_id)

    # -- live migration --------------------------------------------------------------------

    def migrate(
        self,
        vm_id: str,
        target: MigrationTarget,
        bandwidth_mbit: int = 0,
        max_downtime_ms: int = 0,
        *,
        postcopy: bool = False,
        generation: int = 0,
    ) -> None:
        if bandwidth_mbit < 0 or max_downtime_ms < 0:
            raise InvalidArgument(
                f"migrate {vm_id}: bandwidth_mbit and max_downtime_ms must be >= 0, "
                f"got {bandwidth_mbit} and {max_downtime_ms}"
            )
        if not target.libvirt_uri:
            raise InvalidArgument(f"migrate {vm_id}: the target has no libvirt URI")
        dom = self._require(vm_id)
        with _mapped("migrate", vm_id):
            meta = self._meta(dom)
            state = dom.state()[0]
        if meta is not None and generation > 0:
            fence(meta.generation, generation, f"migrate vm {vm_id}")
        with _mapped("migrate", vm_id):
            if state not in _MIGRATABLE_STATES:
                what = "stopped" if state == libvirt.VIR_DOMAIN_SHUTOFF else "not running"
                raise FailedPrecondition(
                    f"migrate {vm_id}: the vm is {what}; only a running or paused vm can move"
                )
            live_xml = str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
            # the persistent definition may be newer than the live one (see create)
            persist_xml = str(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
        problem = _migration_problem(live_xml) or _migration_problem(persist_xml)
        if problem:
            raise FailedPrecondition(f"migrate {vm_id}: {problem}")
        params: dict[str, str | int] = {
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: _retarget_xml(live_xml, target, generation),
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: _retarget_xml(persist_xml, target, generation),
        }
        if target.data_uri:  # else libvirt uses the destination's migration_host
            params[libvirt.VIR_MIGRATE_PARAM_URI] = target.data_uri
        if bandwidth_mbit > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = _mib_per_s(bandwidth_mbit)
            if postcopy:  # else post-copy pages go uncapped
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = _mib_per_s(bandwidth_mbit)
        flags = MIGRATE_FLAGS | (libvirt.VIR_MIGRATE_POSTCOPY if postcopy else 0)
        disks = _migrated_disks(live_xml)
        if disks:  # the destination agent pre-created the overlay on its own base image
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks  # type: ignore[assignment]
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        where = f"{vm_id} to {target.libvirt_uri}"
        switch = _PostcopySwitch()
        try:
            with _mapped("migrate", where):
                if max_downtime_ms > 0:
                    dom.migrateSetMaxDowntime(max_downtime_ms, 0)
                with _switch_to_postcopy(dom, vm_id, switch, enabled=postcopy):
                    dom.migrateToURI3(target.libvirt_uri, params, flags)
        except NovaCronError as err:
            log.warning(
                "vm_migration_failed", vm_id=vm_id, target=target.libvirt_uri, error=str(err)
            )
            if switch.switched.is_set():
                raise Internal(
                    f"{err}; post-copy had begun: the guest ran on the target, and part of its "
                    "memory is only here, so this node keeps it paused and nothing was undone "
                    "(post-copy recovery is not built)"
                ) from err
            raise
        self._forget(vm_id)
        log.info(
            "vm_migrated",
            vm_id=vm_id,
            target=target.libvirt_uri,
            bandwidth_mbit=bandwidth_mbit,
            max_downtime_ms=max_downtime_ms,
            postcopy=postcopy,
        )

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        try:
            stats = dom.jobStats(0)
            state, reason = dom.state()
        except libvirt.libvirtError as err:
            if _error_code(err) in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_NO_SUPPORT,  # e.g. libvirt's test driver
                libvirt.VIR_ERR_OPERATION_INVALID,  # e.g. the domain just stopped
            ):
                return None
            raise Internal(f"migration progress {vm_id}: {err.get_error_message() or err}") from err
        postcopy = (state, reason) == _PAUSED_POSTCOPY
        return _migration_progress(vm_id, stats, postcopy=postcopy)

    def migration_stats(self, vm_id: str) -> MigrationStats | None:
        dom = self._lookup(vm_id)
        if dom is None:
            return None
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        try:
            stats = dom.jobStats(flags)
        except libvirt.libvirtError as err:
            if _error_code(err) in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_NO_SUPPORT,  # e.g. libvirt's test driver
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                return None
            raise Internal(f"migration stats {vm_id}: {err.get_error_message() or err}") from err
        return _migration_stats(stats)

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, callback: VMEventCallback) -> None:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("subscribe on a closed hypervisor")
            self._callbacks.append(callback)
            if self._callback_id is None:
                with _mapped("subscribe"):
                    self._callback_id = self._conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                    )
        self.list_vms()  # learn existing VMs so that their "undefined" events can be named

    def unsubscribe(self, callback: VMEventCallback) -> None:
        """Stop delivering to `callback` (e.g. before its asyncio loop closes). Not in the
        Protocol: close() ends every subscription anyway."""
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callbacks.clear()
            callback_id, self._callback_id = self._callback_id, None
        try:
            if callback_id is not None:
                self._conn.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError as err:
            log.warning("libvirt_deregister_failed", error=str(err))
        try:
            self._conn.close()
        except libvirt.libvirtError as err:
            log.warning("libvirt_close_failed", error=str(err))

    def __enter__(self) -> LibvirtHypervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        """Runs in the libvirt event thread: build a status and hand it to the subscribers."""
        try:
            status = self._event_status(dom, event, detail)
        except Exception:
            log.exception("libvirt_event_status_failed")
            return
        if status is None:
            return
        name = _EVENTS.get(event, (f"event-{event}", None))[0]
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(status, name)
            except Exception:
                log.exception("vm_event_callback_failed", vm_id=status.vm_id, lifecycle_event=name)

    def _event_status(self, dom: Any, event: int, detail: int) -> VMStatus | None:
        vm_id = str(dom.UUIDString())
        state = _EVENTS.get(event, ("", None))[1]
        reason = ""
        if (event, detail) in _MIGRATION_EVENTS:
            state, reason = _MIGRATION_EVENTS[(event, detail)]
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail in (
            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
        ):
            reason = "crashed" if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED else "failed"
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            with self._lock:
                meta = self._known.pop(vm_id, None)
            if meta is None:
                return None
            return VMStatus(meta.vm_id, meta.name, VMState.MISSING, meta.generation, meta.image)
        try:
            current = self._status(dom)
        except libvirt.libvirtError:
            current = None
        with self._lock:
            meta = self._known.get(vm_id)
            if (event, detail) == _LEFT:
                self._known.pop(vm_id, None)  # a later _meta() re-learns it if still defined
        if current is None:
            if meta is None:
                return None
            current = VMStatus(meta.vm_id, meta.name, VMState.UNKNOWN, meta.generation, meta.image)
        return VMStatus(
            vm_id=current.vm_id,
            name=current.name,
            state=state or current.state,
            generation=current.generation,
            image=current.image,
            vcpus=current.vcpus,
            memory_mib=current.memory_mib,
            reason=reason or current.reason,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _lookup_any(self, vm_id: str) -> Any | None:
        """The domain with this UUID, managed or not."""
        try:
            return self._conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError as err:
            if _error_code(err) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                return None
            raise Internal(f"lookup {vm_id}: {err.get_error_message()}") from err

    def _lookup(self, vm_id: str) -> Any | None:
        """The managed domain with this id; foreign domains do not exist for us."""
        dom = self._lookup_any(vm_id)
        if dom is None:
            return None
        try:
            return dom if self._meta(dom) is not None else None
        except libvirt.libvirtError:
            return None

    def _require(self, vm_id: str) -> Any:
        dom = self._lookup(vm_id)
        if dom is None:
            raise NotFound(f"vm {vm_id} not found")
        return dom

    def _require_status(self, dom: Any, vm_id: str) -> VMStatus:
        with _mapped("status", vm_id):
            status = self._status(dom)
        if status is None:
            raise NotFound(f"vm {vm_id} not found")
        return status

    def _meta(self, dom: Any) -> VMMetadata | None:
        meta = domain_xml.parse_metadata(dom.XMLDesc(0))
        if meta is not None:
            self._remember(meta)
        return meta

    def _remember(self, meta: VMMetadata) -> None:
        with self._lock:
            self._known[meta.vm_id] = meta

    def _forget(self, vm_id: str) -> None:
        """Drop a VM that migrated away. With a subscription its "stopped" (migrated) event
        does it, which may still need the metadata to name the VM (libvirt may deliver it
        after the domain is gone), so the entry stays until then."""
        with self._lock:
            if self._callback_id is None:
                self._known.pop(vm_id, None)

    def _status(self, dom: Any) -> VMStatus | None:
        meta = self._meta(dom)
        if meta is None:
            return None
        state, reason = dom.state()
        info = dom.info()  # [state, maxMem KiB, mem KiB, vcpus, cpuTime]
        why = _SHUTOFF_REASONS.get(reason, "") if state == libvirt.VIR_DOMAIN_SHUTOFF else ""
        return VMStatus(
            vm_id=meta.vm_id,
            name=meta.name,
            state=_STATES.get(state, VMState.UNKNOWN),
            generation=meta.generation,
            image=meta.image,
            vcpus=int(info[3]),
            memory_mib=int(info[1]) // 1024,
            reason=why,
        )

    def _check_name_free(self, vm_id: str, name: str) -> None:
        try:
            other = self._conn.lookupByName(domain_xml.domain_name(name))
        except libvirt.libvirtError:
            return
        if str(other.UUIDString()) != vm_id:
            raise AlreadyExists(
                f"vm name {name!r} is taken by domain {other.UUIDString()} on this node"
            )

    @staticmethod
    def _start(dom: Any, flags: int) -> None:
        try:
            dom.createWithFlags(flags)
        except libvirt.libvirtError as err:
            # drivers without START_PAUSED (libvirt's test driver): start, then pause
            if not flags or _error_code(err) not in (
                libvirt.VIR_ERR_INVALID_ARG,
                libvirt.VIR_ERR_NO_SUPPORT,
            ):
                raise
            dom.create()
            dom.suspend()

    @staticmethod
    def _destroy(dom: Any) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if _error_code(err) != libvirt.VIR_ERR_OPERATION_INVALID:  # already stopped
                raise

    @staticmethod
    def _undefine(dom: Any) -> None:
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as err:
            if _error_code(err) == libvirt.VIR_ERR_NO_SUPPORT:
                dom.undefine()
            else:
                raise

    def _undefine_quietly(self, dom: Any) -> None:
        try:
            self._undefine(dom)
        except libvirt.libvirtError as err:
            log.warning("undefine_after_failed_start_failed", error=str(err))


# -- live migration helpers (pure) -------------------------------------------------------------


def _migration_problem(xml: str) -> str:
    """Why a domain cannot be live-migrated ('' if it can): more than one disk, or a disk
    that is not a file (only the VM's own qcow2 overlay is copied, see _migrated_disks)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        return f"its domain XML cannot be parsed: {err}"
    disks = root.findall("devices/disk[@device='disk']")
    if len(disks) > 1:
        return f"the vm has {len(disks)} disks; live migration copies one (its own overlay)"
    for disk in disks:
        source = disk.find("source")
        if disk.get("type") != "file" or source is None or not source.get("file"):
            return "the vm's disk is not a file; live migration copies a qcow2 overlay file"
    return ""


def _migrated_disks(xml: str) -> list[str]:
    """Target devs (e.g. "vda") of the disks to copy: the VM's own overlay. Its backing image
    exists on every node, so only the overlay's blocks travel (NON_SHARED_INC)."""
    root = ET.fromstring(xml)
    return [
        target.get("dev", "")
        for target in root.findall("devices/disk[@device='disk']/target")
        if target.get("dev")
    ]


def _retarget_xml(xml: str, target: MigrationTarget, generation: int = 0) -> str:
    """The domain XML with the destination's paths for the files it references: kernel,
    initrd, disk and the console log (file serial/console sources), and, when `generation` is
    > 0, that generation in our metadata (the arriving copy's; the source's keeps its own);
    everything else, the rest of our metadata included, stays as it is. A file the domain uses
    but `target` gives no path for is an error: the source's path means nothing on another
    node."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise InvalidArgument(f"domain XML cannot be parsed: {err}") from None
    vm = root.findtext("uuid") or root.findtext("name") or "?"
    if generation > 0:
        ns = domain_xml.NAMESPACE
        el = root.find(f"metadata/{{{ns}}}vm/{{{ns}}}generation")
        if el is None:
            raise InvalidArgument(f"vm {vm} has no NovaCron metadata to carry generation")
        el.text = str(generation)
    for tag, path in (("kernel", target.kernel), ("initrd", target.initrd)):
        el = root.find(f"os/{tag}")
        if el is None:
            continue
        if not path:
            raise InvalidArgument(f"vm {vm} boots with a {tag} but the target gives no {tag} path")
        el.text = path
    for source in root.findall("devices/disk[@device='disk']/source[@file]"):
        if not target.disk:
            raise InvalidArgument(f"vm {vm} has a disk but the target gives no disk path")
        source.set("file", target.disk)
    for kind in ("serial", "console"):
        for source in root.findall(f"devices/{kind}[@type='file']/source[@path]"):
            if not target.console_log:
                raise InvalidArgument(f"vm {vm} logs its console but the target gives no log path")
            source.set("path", target.console_log)
    return ET.tostring(root, encoding="unicode")


POSTCOPY_POLL_S = 0.05


@dataclass(slots=True)
class _PostcopySwitch:
    """Set once the job went post-copy: from then on a failure cannot be rolled back."""

    switched: threading.Event = field(default_factory=threading.Event)


@contextmanager
def _switch_to_postcopy(
    dom: libvirt.virDomain, vm_id: str, state: _PostcopySwitch, *, enabled: bool
) -> Iterator[None]:
    """While the body runs the migration job: switch it to post-copy as soon as memory moves.

    From the start, not after a pre-copy pass, so that every page is sent once from the paused
    source and nothing relies on tracking pages dirtied meanwhile (a long pre-copy under TCG
    corrupted busy guests, docs/migration.md). libvirt has no event for "memory started" (the
    iteration event comes after the first pass), so the job is polled."""
    if not enabled:
        yield
        return
    done = threading.Event()

    def switch() -> None:
        while not done.wait(POSTCOPY_POLL_S):
            try:
                stats = dom.jobStats(0)
                if int(stats.get("memory_total", 0)) <= 0:
                    continue  # not started, or still mirroring the disk
                dom.migrateStartPostCopy(0)
            except libvirt.libvirtError as err:
                log.debug("postcopy_not_yet", vm_id=vm_id, error=str(err))
                continue
            state.switched.set()
            log.info("vm_migration_postcopy", vm_id=vm_id)
            return

    thread = threading.Thread(target=switch, name=f"postcopy-{vm_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _mib_per_s(mbit: int) -> int:
    """libvirt's migration bandwidth unit (MiB/s) for `mbit` Mbit/s: rounded up, at least 1."""
    return max(1, -(-mbit * 1_000_000 // (8 * 1024 * 1024)))


DEFAULT_PAGE_SIZE = 4096


def _migration_progress(
    vm_id: str, stats: dict[str, Any], *, postcopy: bool = False
) -> MigrationProgress | None:
    """Our figures from a running job's stats (virDomainGetJobStats), or None when no
    migration runs or it has no figures yet (while it sets up, libvirt reports zeros, which
    must not read as "nothing remaining"). libvirt gives the dirty rate in pages/s; we report
    bytes/s."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    if stats.get("operation", libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT) not in (
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
    ):
        return None
    try:
        page = int(stats.get("memory_page_size", DEFAULT_PAGE_SIZE)) or DEFAULT_PAGE_SIZE
        if int(stats.get("data_total", 0)) <= 0:
            return None
        return MigrationProgress(
            vm_id=vm_id,
            migration_id="",
            data_total=int(stats.get("data_total", 0)),
            data_processed=int(stats.get("data_processed", 0)),
            data_remaining=int(stats.get("data_remaining", 0)),
            memory_dirty_rate=int(stats.get("memory_dirty_rate", 0)) * page,
            postcopy=postcopy,
        )
    except (TypeError, ValueError):
        return None


def _migration_stats(stats: dict[str, Any]) -> MigrationStats | None:
    """Our figures from a completed job's stats, or None when they are not a migration's."""
    if stats.get("operation", libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN) not in (
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN,
        libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT,
    ):
        return None
    try:
        return MigrationStats(
            elapsed_ms=float(stats["time_elapsed"]),
            downtime_ms=float(stats["downtime"]),
            memory_bytes=int(stats["memory_processed"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
