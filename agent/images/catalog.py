"""The image catalog: one subdirectory per image, described by its `image.yaml`.

    name: tiny                 # must equal the directory name
    kind: kernel               # "kernel" (kernel+initrd boot) or "disk" (boot from the disk)
    arch: x86_64
    kernel: vmlinuz            # paths are relative to the image directory
    initrd: initrd.img
    cmdline: console=ttyS0 quiet
    disk: base.qcow2           # optional base disk; every VM gets its own qcow2 overlay on it
    description: free text

A VM never writes to an image: `prepare` gives it a copy-on-write overlay in its own directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from agent.hypervisor.base import BootMedia
from shared.domain import ImageInfo
from shared.errors import ConfigError, FailedPrecondition, Internal, InvalidArgument, NotFound

log = structlog.get_logger(__name__)

DEFAULT_IMAGES_DIR = Path("/var/lib/novacron/images")
MANIFEST = "image.yaml"
OVERLAY = "disk.qcow2"
KINDS = ("kernel", "disk")
ARCHES = ("x86_64", "aarch64")
_KEYS = {"name", "kind", "arch", "kernel", "initrd", "cmdline", "disk", "description"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """A validated image.yaml with absolute paths."""

    name: str
    kind: str
    arch: str
    directory: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    disk: Path | None = None
    description: str = ""

    def files(self) -> list[Path]:
        return [p for p in (self.kernel, self.initrd, self.disk) if p is not None]

    def info(self) -> ImageInfo:
        size = sum(p.stat().st_size for p in self.files())
        return ImageInfo(name=self.name, kind=self.kind, arch=self.arch, size_bytes=size)


def parse_manifest(data: Any, directory: Path) -> ImageManifest:
    """Validate a loaded image.yaml; ConfigError names the file and the bad key."""
    where = directory / MANIFEST
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of keys to values")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")

    def text(key: str, required: bool = False) -> str:
        value = data.get(key)
        if value is None or value == "":
            if required:
                raise ConfigError(f"{where}: {key}: required")
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: must be a string, got {type(value).__name__}")
        return value

    def file(key: str) -> Path | None:
        rel = text(key)
        if not rel:
            return None
        path = (directory / rel).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}: {key}: file {path} does not exist")
        return path

    name = text("name", required=True)
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: name: {name!r} must be lowercase letters, digits, '.', '_', '-'"
        )
    if name != directory.name:
        raise ConfigError(f"{where}: name: {name!r} differs from its directory {directory.name!r}")
    kind = text("kind", required=True)
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    arch = text("arch", required=True)
    if arch not in ARCHES:
        raise ConfigError(f"{where}: arch: must be one of {', '.join(ARCHES)}, got {arch!r}")
    kernel, initrd, disk = file("kernel"), file("initrd"), file("disk")
    if kind == "kernel" and kernel is None:
        raise ConfigError(f"{where}: kernel: required for kind 'kernel'")
    if kind == "disk" and disk is None:
        raise ConfigError(f"{where}: disk: required for kind 'disk'")
    if initrd is not None and kernel is None:
        raise ConfigError(f"{where}: initrd: needs a kernel")
    return ImageManifest(
        name=name,
        kind=kind,
        arch=arch,
        directory=directory,
        kernel=kernel,
        initrd=initrd,
        cmdline=text("cmdline"),
        disk=disk,
        description=text("description"),
    )


def load_manifest(directory: Path) -> ImageManifest:
    where = directory / MANIFEST
    try:
        data = yaml.safe_load(where.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: missing") from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{where}: cannot be read: {err}") from err
    return parse_manifest(data, directory)


class ImageCatalog:
    """The images in one directory. Re-reads the directory on every call: images are few."""

    def __init__(self, images_dir: Path | str = DEFAULT_IMAGES_DIR) -> None:
        self.images_dir = Path(images_dir)

    def manifests(self) -> list[ImageManifest]:
        """Every valid image; malformed ones are logged with the reason and skipped."""
        if not self.images_dir.is_dir():
            return []
        result = []
        for sub in sorted(self.images_dir.iterdir()):
            if not sub.is_dir() or sub.name.startswith("."):
                continue  # '.name.tmp-*' are builds in progress
            try:
                result.append(load_manifest(sub))
            except ConfigError as err:
                log.warning("image_skipped", image_dir=str(sub), reason=str(err))
        return result

    def list(self) -> list[ImageInfo]:
        infos = []
        for manifest in self.manifests():
            try:
                infos.append(manifest.info())
            except OSError as err:  # a file vanished since validation
                log.warning("image_skipped", image=manifest.name, reason=str(err))
        return infos

    def manifest(self, name: str) -> ImageManifest:
        directory = self.images_dir / name
        if not _NAME_RE.match(name) or not (directory / MANIFEST).is_file():
            known = ", ".join(m.name for m in self.manifests()) or "none"
            raise NotFound(f"image {name!r} not found in {self.images_dir} (known: {known})")
        return load_manifest(directory)

    def get(self, name: str) -> ImageInfo:
        return self.manifest(name).info()

    def prepare(self, name: str, vm_dir: Path | str) -> BootMedia:
        """Boot media for one VM: the image's kernel/initrd and a private qcow2 overlay."""
        manifest = self.manifest(name)
        vm_dir = Path(vm_dir)
        vm_dir.mkdir(parents=True, exist_ok=True)
        disk = ""
        if manifest.disk is not None:
            disk = str(_overlay(manifest.disk, vm_dir / OVERLAY))
        return BootMedia(
            kernel=str(manifest.kernel) if manifest.kernel else "",
            initrd=str(manifest.initrd) if manifest.initrd else "",
            cmdline=manifest.cmdline,
            disk=disk,
            arch=manifest.arch,
        )

    def adopt_overlay(self, name: str, vm_dir: Path | str, incoming: Path) -> None:
        """Make `incoming`, a VM's overlay copied from another node (its backing file names
        that node's base), this VM's disk here: rebased onto this node's base of `name` (the
        same image, so only the recorded path changes: `qemu-img rebase -u`)."""
        manifest = self.manifest(name)
        if manifest.disk is None:
            raise FailedPrecondition(f"image {name!r} has no disk to put {incoming} on")
        proc = subprocess.run(
            [qemu_img(), "rebase", "-u", "-F", "qcow2", "-b", str(manifest.disk), str(incoming)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise Internal(f"qemu-img rebase {incoming}: {proc.stderr.strip()}")
        os.replace(incoming, Path(vm_dir) / OVERLAY)
        log.info("overlay_adopted", base=str(manifest.disk), disk=str(Path(vm_dir) / OVERLAY))

    def release(self, vm_dir: Path | str) -> None:
        """Remove a VM's own files (overlay, console log). Missing is fine."""
        vm_dir = Path(vm_dir)
        if vm_dir.resolve() in (self.images_dir.resolve(), Path("/")):
            raise InvalidArgument(f"refusing to remove {vm_dir}")
        if vm_dir.exists():
            shutil.rmtree(vm_dir)


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise FailedPrecondition("qemu-img not found (Debian package: qemu-utils)")
    return path


def backing_file(disk: Path) -> str:
    """The backing file recorded in a qcow2, or '' if it has none."""
    proc = subprocess.run(
        [qemu_img(), "info", "--output=json", "-U", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise Internal(f"qemu-img info {disk}: {proc.stderr.strip()}")
    info = json.loads(proc.stdout)
    return str(info.get("full-backing-filename") or info.get("backing-filename") or "")


def _overlay(base: Path, target: Path) -> Path:
    """Create target as a qcow2 overlay on base, unless it already is one (idempotent)."""
    if target.exists():
        if Path(backing_file(target)).resolve() == base.resolve():
            return target
        raise FailedPrecondition(f"{target} exists but is not an overlay on {base}")
    fd, tmp = tempfile.mkstemp(prefix=".disk-", suffix=".qcow2", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [qemu_img(), "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise Internal(f"qemu-img create overlay on {base}: {proc.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("overlay_created", base=str(base), disk=str(target))
    return target
