"""Live migration's domain XML (pure): whether a domain can move, which disks travel, and
the XML it arrives with (the destination's paths, the arriving generation)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent.hypervisor import domain_xml
from agent.hypervisor.base import MigrationTarget
from shared.errors import InvalidArgument


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
