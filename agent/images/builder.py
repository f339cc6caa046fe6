"""Build the project's own tiny bootable guest from what Debian already installed.

Nothing is downloaded: the kernel is the host's newest /boot/vmlinuz-* (linux-image-amd64), the
initramfs is busybox-static plus an `init` script that prints one line naming the VM and then a
heartbeat, and the base disk is an empty qcow2 so that every deploy exercises an overlay.
The initramfs is written in Python (cpio "newc") so /dev/console can be a real device node
without root and the archive is byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml

from agent.images.catalog import MANIFEST, load_manifest, qemu_img
from shared.errors import ConfigError, FailedPrecondition, Internal, InvalidArgument

log = structlog.get_logger(__name__)

BASE_DISK_MIB = 64
FIRST_LINE = "NovaCron guest {name} booted: kernel {kernel}"  # what the guest prints first
HEARTBEAT_S = 10
_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

INIT_SCRIPT = f"""#!/bin/sh
# NovaCron tiny guest: say who we are on the console, then idle with a heartbeat.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
NAME=unknown
for arg in $(cat /proc/cmdline); do
  case "$arg" in nc.name=*) NAME="${{arg#nc.name=}}" ;; esac
done
echo "NovaCron guest $NAME booted: kernel $(uname -r)" > /dev/console
up=0
while true; do
  sleep {HEARTBEAT_S}
  up=$((up + {HEARTBEAT_S}))
  echo "NovaCron guest $NAME heartbeat: up ${{up}}s" > /dev/console
done
"""


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newest_kernel(boot_dir: Path = Path("/boot")) -> Path:
    """The newest vmlinuz-* by version order, or a FailedPrecondition naming the package."""
    kernels = [p for p in boot_dir.glob("vmlinuz-*") if p.is_file()]
    if not kernels:
        raise FailedPrecondition(
            f"no kernel found at {boot_dir}/vmlinuz-* (Debian package: linux-image-amd64)"
        )

    def version_key(p: Path) -> list[tuple[int, str]]:
        parts = re.split(r"(\d+)", p.name.removeprefix("vmlinuz-"))
        return [(int(x), "") if x.isdigit() else (-1, x) for x in parts if x]

    return max(kernels, key=version_key)


def static_busybox() -> Path:
    """A statically linked busybox (the initramfs has no libc), or a clear error."""
    found = [Path(p) for p in _BUSYBOX_CANDIDATES if Path(p).is_file()]
    which = shutil.which("busybox")
    if which:
        found.append(Path(which))
    if not found:
        raise FailedPrecondition("busybox not found (Debian package: busybox-static)")
    for path in found:
        if not _is_dynamic_elf(path.read_bytes()):
            return path
    raise FailedPrecondition(
        f"busybox at {found[0]} is dynamically linked; install the Debian package busybox-static"
    )


def _is_dynamic_elf(data: bytes) -> bool:
    """True if the ELF has a PT_INTERP program header (needs a dynamic loader)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only: what we build for
        return True
    end = "<" if data[5] == 1 else ">"
    phoff, phentsize, phnum = (
        struct.unpack_from(end + "Q", data, 0x20)[0],
        *struct.unpack_from(end + "HH", data, 0x36),
    )
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return True
    return False


def kernel_version(kernel: Path) -> str:
    return kernel.name.removeprefix("vmlinuz-")


def build_initramfs(busybox: Path) -> bytes:
    """A gzip'd newc cpio archive with busybox, /init and /dev/console."""
    d, x, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFCHR | 0o600
    entries = [
        _Entry("bin", d),
        _Entry("dev", d),
        _Entry("dev/console", f, rdev=(5, 1)),
        _Entry("etc", d),
        _Entry("proc", d),
        _Entry("sys", d),
        _Entry("tmp", stat.S_IFDIR | 0o1777),
        _Entry("bin/busybox", x, busybox.read_bytes()),
        _Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        _Entry("init", x, INIT_SCRIPT.encode()),
    ]
    raw = io.BytesIO()
    for ino, entry in enumerate(entries, start=1):
        _write_cpio_entry(raw, ino, entry)
    _write_cpio_entry(raw, 0, _Entry("TRAILER!!!", 0))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _write_cpio_entry(out: io.BytesIO, ino: int, entry: _Entry) -> None:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
    out.write(name)
    out.write(b"\0" * (-(110 + len(name)) % 4))
    out.write(entry.data)
    out.write(b"\0" * (-len(entry.data) % 4))


def build_tiny_image(output_dir: Path | str, name: str = "tiny", force: bool = False) -> Path:
    """Build (or keep) <output_dir>/<name>; atomic: built in a temp dir, then renamed."""
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", name):
        raise InvalidArgument(
            f"image name {name!r} must be lowercase letters, digits, '.', '_', '-'"
        )
    output_dir = Path(output_dir)
    target = output_dir / name
    if target.exists() and not force:
        try:
            load_manifest(target)
            log.info("image_exists", image=name, path=str(target))
            return target
        except ConfigError as err:
            log.warning("image_rebuild", image=name, reason=str(err))
    kernel = newest_kernel()
    busybox = static_busybox()
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=output_dir))
    try:
        shutil.copyfile(kernel, tmp / "vmlinuz")
        (tmp / "initrd.img").write_bytes(build_initramfs(busybox))
        proc = subprocess.run(
            [
                qemu_img(),
                "create",
                "-q",
                "-f",
                "qcow2",
                str(tmp / "base.qcow2"),
                f"{BASE_DISK_MIB}M",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise Internal(f"qemu-img create base disk: {proc.stderr.strip()}")
        manifest = {
            "name": name,
            "kind": "kernel",
            "arch": "x86_64",
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "cmdline": "console=ttyS0 quiet panic=-1",
            "disk": "base.qcow2",
            "description": f"NovaCron tiny guest: kernel {kernel_version(kernel)}, "
            f"busybox initramfs, {BASE_DISK_MIB} MiB empty base disk",
        }
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=output_dir))
            os.rename(target, old / name)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("image_built", image=name, path=str(target), kernel=kernel_version(kernel))
    return target
