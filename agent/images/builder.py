"""Build the project's own tiny bootable guest from what Debian already installed.

Nothing is downloaded: the kernel is the host's newest /boot/vmlinuz-* (linux-image-amd64), the
initramfs is busybox-static plus an `init` script that prints one line naming the VM and then a
heartbeat, and the base disk is an empty qcow2 so that every deploy exercises an overlay.
The initramfs is written in Python (cpio "newc") so /dev/console can be a real device node
without root and the archive is byte-for-byte reproducible.

Networking: Debian builds virtio (PCI transport and net driver) as modules, so the initramfs carries
them, with their dependencies, from /lib/modules/<the image kernel's version>; init loads them and,
when the cmdline has nc.ip=<cidr> nc.gw=<gateway>, configures eth0 itself (no DHCP on the sites).
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml

from agent.images.catalog import MANIFEST, load_manifest, qemu_img
from agent.images.foreign import guest_parts
from shared.arch import host_arch
from shared.arch import require as require_arch
from shared.errors import ConfigError, FailedPrecondition, Internal, InvalidArgument

log = structlog.get_logger(__name__)

BASE_DISK_MIB = 64
FIRST_LINE = "NovaCron guest {name} booted: kernel {kernel}"  # what the guest prints first
NET_LINE = "NovaCron guest {name} net eth0 {ip} via {gw}"  # printed once eth0 is configured
HEARTBEAT_S = 10
PING_ROUNDS = 450  # nc.ping=<ip>: the guest pings it every 2 s this many times (15 min)
BUILD_FORMAT = 4  # bump whenever the image's content changes, so that cached images get rebuilt
BUILD_STAMP = "build.json"  # beside image.yaml (whose keys the catalog validates strictly)
GUEST_MODULES = ("virtio_pci", "virtio_net")  # the NIC; dependencies come from modules.dep
MODULES_DIR = Path("/lib/modules")
NET_WAIT_S = 5  # how long init waits for eth0 after loading the driver
_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

INIT_SCRIPT = f"""#!/bin/sh
# NovaCron tiny guest: say who we are on the console, configure eth0 if asked, then idle.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
NAME=unknown
IP=
GW=
PING=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nc.name=*) NAME="${{arg#nc.name=}}" ;;
    nc.ip=*) IP="${{arg#nc.ip=}}" ;;
    nc.gw=*) GW="${{arg#nc.gw=}}" ;;
    nc.ping=*) PING="${{arg#nc.ping=}}" ;;
  esac
done
echo "NovaCron guest $NAME booted: kernel $(uname -r)" > /dev/console
say() {{ echo "NovaCron guest $NAME net $*" > /dev/console; }}
if [ -n "$IP" ]; then
  if [ -f /lib/modules/load-order ]; then
    while read -r mod; do
      insmod "/lib/modules/$mod.ko" 2>/tmp/insmod.err ||
        say "error: insmod $mod: $(cat /tmp/insmod.err)"
    done < /lib/modules/load-order
  fi
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ $n -lt {NET_WAIT_S * 10} ]; do
    sleep 0.1
    n=$((n + 1))
  done
  ip link set lo up
  if [ ! -e /sys/class/net/eth0 ]; then
    say "error: eth0 did not appear within {NET_WAIT_S}s (no virtio NIC or driver?)"
  elif ! ip link set eth0 up || ! ip addr add "$IP" dev eth0; then
    say "error: cannot set $IP on eth0"
  elif [ -n "$GW" ] && ! {{ ip route add "$GW" dev eth0 && ip route add default via "$GW"; }}; then
    say "error: cannot route via $GW on eth0"
  else
    say "eth0 $IP via ${{GW:-none}}"
    if [ -n "$PING" ]; then  # the guest's own reachability probe, reported on its console
      (
        n=0
        while [ $n -lt {PING_ROUNDS} ]; do
          if ping -c 1 -W 2 "$PING" >/dev/null 2>&1; then r=ok; else r=failed; fi
          echo "NovaCron guest $NAME ping $PING $r" > /dev/console
          n=$((n + 1))
          sleep 2
        done
      ) &
    fi
  fi
fi
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


def _module_name(path: str) -> str:
    """modprobe's name for a module file: basename without suffix, '-' as '_'."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base.removesuffix(suffix)
            break
    return base.replace("-", "_")


def guest_modules(
    kver: str, roots: Sequence[str] = GUEST_MODULES, modules_dir: Path = MODULES_DIR
) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko) for `roots` and their dependencies, in load order (dependencies
    first), read from modules.dep of the image's kernel, not the host's running one. Modules
    built into that kernel are left out; a missing one is a FailedPrecondition."""
    root = modules_dir / kver
    dep_file = root / "modules.dep"
    if not dep_file.is_file():
        raise FailedPrecondition(
            f"{dep_file} not found: the modules of kernel {kver} are needed for the guest NIC "
            f"(Debian package: linux-image-{kver})"
        )
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in dep_file.read_text().splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[_module_name(path)] = (path, [_module_name(d) for d in rest.split()])
    builtin_file = root / "modules.builtin"
    builtin = (
        {_module_name(p) for p in builtin_file.read_text().split()}
        if builtin_file.is_file()
        else set()
    )
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or name in builtin:
            return
        if name in chain:
            raise FailedPrecondition(f"{dep_file}: dependency cycle {' -> '.join(chain)}")
        if name not in deps:
            raise FailedPrecondition(
                f"kernel module {name} not found in {dep_file} (needed by {chain[-1]})"
                if chain
                else f"kernel module {name} not found in {dep_file}"
            )
        for dep in deps[name][1]:
            visit(dep, (*chain, name))
        order.append(name)

    for name in roots:
        visit(name.replace("-", "_"), ())
    return [(name, _read_module(root / deps[name][0])) for name in order]


def _read_module(path: Path) -> bytes:
    """The module's ELF bytes; busybox insmod takes only uncompressed modules."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise FailedPrecondition(f"{path} is zstd-compressed (Debian package: zstd)")
        proc = subprocess.run([zstd, "-dcq", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise Internal(f"zstd -d {path}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return data


def build_initramfs(busybox: Path, modules: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """A gzip'd newc cpio archive with busybox, /init, /dev/console and the kernel modules
    (lib/modules/<name>.ko plus lib/modules/load-order, one name a line, dependencies first)."""
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
    if modules:
        r = stat.S_IFREG | 0o644
        entries += [_Entry("lib", d), _Entry("lib/modules", d)]
        entries += [_Entry(f"lib/modules/{name}.ko", r, data) for name, data in modules]
        order = "".join(f"{name}\n" for name, _ in modules).encode()
        entries.append(_Entry("lib/modules/load-order", r, order))
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


def build_tiny_image(
    output_dir: Path | str, name: str = "tiny", force: bool = False, arch: str = ""
) -> Path:
    """Build (or keep) <output_dir>/<name> for `arch` (default: this host's); atomic: built in a
    temp dir, then renamed. Another architecture's parts come from its Debian packages."""
    arch = require_arch(arch or host_arch(), "image arch")
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", name):
        raise InvalidArgument(
            f"image name {name!r} must be lowercase letters, digits, '.', '_', '-'"
        )
    output_dir = Path(output_dir)
    target = output_dir / name
    if target.exists() and not force:
        try:
            if load_manifest(target).arch != arch:
                raise ConfigError(f"{target} is for {load_manifest(target).arch}, not {arch}")
            _check_stamp(target)
            log.info("image_exists", image=name, path=str(target))
            return target
        except ConfigError as err:
            log.warning("image_rebuild", image=name, reason=str(err))
    if arch == host_arch():
        kernel, busybox, modules_dir = newest_kernel(), static_busybox(), MODULES_DIR
    else:
        parts = guest_parts(arch)
        kernel, busybox, modules_dir = (
            newest_kernel(parts.boot_dir),
            parts.busybox,
            parts.modules_dir,
        )
    modules = guest_modules(kernel_version(kernel), modules_dir=modules_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=output_dir))
    try:
        shutil.copyfile(kernel, tmp / "vmlinuz")
        (tmp / "initrd.img").write_bytes(build_initramfs(busybox, modules))
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
            "arch": arch,
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "cmdline": f"console={'ttyAMA0' if arch == 'aarch64' else 'ttyS0'} quiet panic=-1",
            "disk": "base.qcow2",
            "description": f"NovaCron tiny guest: kernel {kernel_version(kernel)}, "
            f"busybox initramfs, {BASE_DISK_MIB} MiB empty base disk",
        }
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        stamp = {
            "format": BUILD_FORMAT,
            "kernel": kernel_version(kernel),
            "arch": arch,
            "modules": [m for m, _ in modules],
        }
        (tmp / BUILD_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
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


def _check_stamp(image_dir: Path) -> None:
    """ConfigError unless the image was built by this builder format (older ones lack the NIC
    driver, and the lab and tests keep images cached across runs)."""
    path = image_dir / BUILD_STAMP
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable or missing ({err})") from None
    found = stamp.get("format") if isinstance(stamp, dict) else None
    if found != BUILD_FORMAT:
        raise ConfigError(f"{path}: format {found!r}, this builder makes {BUILD_FORMAT}")
