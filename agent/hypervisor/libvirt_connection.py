"""One libvirt connection: the process's event loop, opening and closing the connection,
mapping libvirt's errors into shared.errors, and finding our domains on it and reading their
status. The base of the driver's parts (agent.hypervisor.libvirt_driver).

Blocking by design; the agent calls it from a worker thread. libvirt's default event loop is
run by one daemon thread per process and shared by every instance.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt
import structlog

from agent.hypervisor import domain_xml
from agent.hypervisor.base import VMEventCallback
from agent.hypervisor.domain_xml import VMMetadata
from agent.hypervisor.kvm_probe import kvm_works
from shared.commands import MigrationProgress
from shared.domain import VMState, VMStatus
from shared.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
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

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
}

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "socket error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}

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


class LibvirtConnection:
    """The connection and the state every part of the driver shares; reads our domains.
    (Arguments: see agent.hypervisor.libvirt_driver.LibvirtHypervisor.)"""

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
        # vm_id -> bytes sent so far by a cold/snapshot migration (libvirt_offline_migration)
        self._transfers: dict[str, MigrationProgress] = {}
        self._closed = False
        self._lost = ""  # why the connection closed under us ("" = it did not)
        self._conn: Any = self._open()
        self._is_test = str(self._conn.getType()).upper() == "TEST"
        self._arch = str(self._conn.getInfo()[0])
        if self._is_test:
            self.virt_type = "test"
        elif virt_type == "auto":
            self.virt_type = "kvm" if kvm_works(self._arch) else "qemu"
        else:
            self.virt_type = virt_type
        log.info("libvirt_connected", uri=uri, virt_type=self.virt_type, arch=self._arch)

    # -- the connection, and getting it back --------------------------------------------------

    def _open(self) -> Any:
        try:
            conn = libvirt.open(self._uri)
        except libvirt.libvirtError as err:
            raise Unavailable(f"cannot connect to libvirt at {self._uri}: {err}") from err
        if str(conn.getType()).upper() != "TEST":
            with contextlib.suppress(libvirt.libvirtError):  # notice a dead daemon in ~15 s
                conn.setKeepAlive(5, 3)
            with contextlib.suppress(libvirt.libvirtError):
                conn.registerCloseCallback(self._on_close, None)
        return conn

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        """libvirt's event thread: the daemon went away (killed, restarted, keepalive)."""
        why = _CLOSE_REASONS.get(reason, f"closed ({reason})")
        with self._lock:
            self._lost = why
            self._callback_id = None  # died with the connection
        log.warning("libvirt_connection_lost", uri=self._uri, reason=why)

    def problem(self) -> str:
        """Why libvirt cannot be used now ("" = it can)."""
        if self._closed:
            return "the hypervisor connection is closed"
        if not self._lost:
            try:
                alive = bool(self._conn.isAlive())
            except libvirt.libvirtError:
                alive = False
            if alive:
                return ""
            self._lost = self._lost or "connection closed"
        return f"libvirtd at {self._uri} unreachable ({self._lost}); reconnecting"

    def reconnect(self) -> None:
        """A new connection after libvirtd came back: event callbacks registered again and
        our domains read again. Raises Unavailable while it is still away."""
        if not self.problem():
            return
        conn = self._open()
        old = self._conn
        with self._lock:
            self._conn, self._lost, self._callback_id = conn, "", None
            callbacks = list(self._callbacks)
        with contextlib.suppress(libvirt.libvirtError):
            old.close()
        if callbacks:
            with _mapped("subscribe"):
                self._callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                )
        found = self.list_vms()  # our domains, named again for their events
        log.info("libvirt_reconnected", uri=self._uri, vms=len(found))

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        raise NotImplementedError  # the events part (agent.hypervisor.libvirt_events)

    # -- queries ---------------------------------------------------------------------------

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

    def domain_stats(self, stats: int) -> list[tuple[VMMetadata, dict[str, Any]]]:
        """libvirt's bulk statistics (virConnectGetAllDomainStats) of our domains: one call
        for all of them, on this connection (agent/domain_stats.py reads them)."""
        with _mapped("domain_stats"):
            records = self._conn.getAllDomainStats(stats, 0)
        ours = []
        for dom, record in records:
            with self._lock:
                meta = self._known.get(dom.UUIDString())
            if meta is None:
                try:
                    meta = self._meta(dom)
                except libvirt.libvirtError:
                    continue  # vanished since
            if meta is not None:
                ours.append((meta, record))
        return ours

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
            stop_after_s=meta.stop_after_s,
        )
