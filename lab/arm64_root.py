"""An arm64 Debian root on this (amd64) machine: built once with mmdebstrap under qemu-user,
cached by the hash of what went into it, and entered as a chroot with its bind mounts.

Foreign binaries run through binfmt_misc: `binfmt()` mounts binfmt_misc and registers
qemu-aarch64 (with the F flag, so the interpreter is opened now and works inside the chroot)
only if they are not there, and undoes exactly what it did. `chroot_root()` unpacks the cached
tarball into a fresh directory, bind-mounts /proc, /sys, /dev and whatever the caller asks
(e.g. the host libvirtd's socket directory), and unmounts all of it, newest first, even when
the body fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from lab.errors import LabError

log = structlog.get_logger(__name__)

CACHE_DIR = Path("/var/cache/novacron-test")
SUITE = "bookworm"
# what the packages depend on (packaging/debian/*.control) and qemu-img (the agent's overlays),
# preinstalled so that `apt-get install ./*.deb` in the root only resolves, never downloads
INCLUDE = (
    "python3.11", "python3-libvirt", "iproute2", "wireguard-go", "adduser", "passwd",
    "qemu-utils", "ca-certificates",
)  # fmt: skip
ROOT_FORMAT = 1  # bump when the way the root is made changes
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
ENTRY = BINFMT / "qemu-aarch64"


def root_key(include: Sequence[str] = INCLUDE, suite: str = SUITE) -> str:
    """The content hash of the root's parameters: a different list is a different root."""
    params = {"arch": "arm64", "suite": suite, "include": sorted(include), "format": ROOT_FORMAT}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _run(cmd: Sequence[str], what: str, timeout: float = 120) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabError(f"{what} failed ({proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


@contextlib.contextmanager
def binfmt() -> Iterator[None]:
    """qemu-aarch64 registered with binfmt_misc for the body; only what we added is undone."""
    mounted = registered = False
    if not (BINFMT / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], "mount binfmt_misc")
        mounted = True
    try:
        if not ENTRY.exists():
            if not BINFMT_CONF.is_file():
                raise LabError(f"{BINFMT_CONF} missing (Debian package: qemu-user-static)")
            (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
            registered = True
        yield
    finally:
        if registered and ENTRY.exists():
            ENTRY.write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT)], check=False)


def build_root(cache_dir: Path = CACHE_DIR, include: Sequence[str] = INCLUDE) -> Path:
    """The cached root tarball, built first if missing (needs `binfmt()` active). The build
    goes to a temporary name and is renamed, so a killed build never looks cached."""
    target = cache_dir / f"arm64-root-{root_key(include)}.tar.zst"
    if target.is_file():
        return target
    if shutil.which("mmdebstrap") is None:
        raise LabError("mmdebstrap not installed (Debian package: mmdebstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tar.zst")
    started = time.monotonic()
    try:
        _run(
            [
                "mmdebstrap", "--architectures=arm64", "--variant=apt", "--mode=root",
                f"--include={','.join(include)}", "--quiet", SUITE, str(partial),
            ],
            "mmdebstrap of the arm64 root",
            timeout=3600,
        )  # fmt: skip
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    took = time.monotonic() - started
    (target.with_suffix(".build-seconds")).write_text(f"{took:.0f}\n")
    log.info("arm64_root_built", path=str(target), seconds=round(took))
    return target


@contextlib.contextmanager
def chroot_root(tarball: Path, binds: Sequence[Path] = ()) -> Iterator[Path]:
    """A fresh copy of the root with /proc, /sys, /dev (and `binds`, at the same path inside)
    mounted; everything unmounted and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="nc-arm64-", dir="/var/tmp"))
    mounts: list[Path] = []
    try:
        _run(["tar", "--zstd", "-xf", str(tarball), "-C", str(base)], "unpack the arm64 root")
        shutil.copyfile("/etc/resolv.conf", base / "etc/resolv.conf")
        for src in (Path("/proc"), Path("/sys"), Path("/dev"), *binds):
            dst = base / str(src).lstrip("/")
            dst.mkdir(parents=True, exist_ok=True)
            _run(["mount", "--bind", str(src), str(dst)], f"bind-mount {src}")
            mounts.append(dst)
        yield base
    finally:
        for dst in reversed(mounts):
            if subprocess.run(["umount", str(dst)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(dst)], check=False)
        if not mounts or all(not os.path.ismount(m) for m in mounts):
            shutil.rmtree(base, ignore_errors=True)


def in_root(root: Path, *cmd: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run `cmd` inside the root (chroot), returning stdout or a LabError with the tail."""
    full = ["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    full += [f"{k}={v}" for k, v in (env or {}).items()]
    return _run([*full, *cmd], f"{' '.join(cmd[:3])} in the arm64 root", timeout=timeout)
