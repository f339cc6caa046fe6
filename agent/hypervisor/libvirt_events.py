"""The libvirt driver's lifecycle events: libvirt's domain events, turned into our VM
statuses and handed to the subscribers. They arrive in libvirt's event thread
(agent.hypervisor.libvirt_connection.ensure_event_loop)."""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt
import structlog

from agent.hypervisor.base import VMEventCallback
from agent.hypervisor.libvirt_connection import LibvirtConnection, _mapped
from shared.domain import VMState, VMStatus
from shared.errors import FailedPrecondition

log = structlog.get_logger(__name__)

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
_LEFT = (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED)


class LibvirtEvents(LibvirtConnection):
    """Subscriptions to the VMs' lifecycle events."""

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
