"""The libvirt driver's domain lifecycle: define and start, power, generation, interfaces,
delete."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

import libvirt
import structlog

from agent.fencing import Fence, fence
from agent.hypervisor import domain_xml
from agent.hypervisor.base import BootMedia
from agent.hypervisor.domain_xml import VMMetadata
from agent.hypervisor.libvirt_connection import LibvirtConnection, _error_code, _mapped
from shared.domain import VMSpec, VMStatus
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NovaCronError,
)

log = structlog.get_logger(__name__)


class LibvirtLifecycle(LibvirtConnection):
    """Create, power, re-generation and delete our domains."""

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
        meta = domain_xml.metadata_of(vm_id, spec, generation)
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
