"""A fresh Debian bookworm root of this machine's architecture for the package tests: built
once with mmdebstrap, cached by the hash of its parameters, unpacked anew for every use.

Commands run in it through `unshare --mount` + chroot, with /proc and /dev mounted inside that
private mount namespace: the mounts die with the command, so nothing is left mounted on the host
even when a test is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CACHE_DIR = Path(os.environ.get("NOVACRON_TEST_CACHE", "/var/cache/novacron-test"))
SUITE = "bookworm"
ARCH = "amd64"
# The packages' Debian dependencies, preinstalled so that `apt-get install ./*.deb` resolves them
# from the root's dpkg status (the user's path) without a download in every test run; the purge
# check then shows exactly what our packages leave behind.
INCLUDE = (
    "python3",
    "python3-libvirt",
    "iproute2",
    "wireguard-go",
    "qemu-utils",  # qemu-img: the agent's per-VM overlays
    "adduser",
    "init-system-helpers",
    "systemd",  # what the units are verified against, as on a real node
)
ROOT_FORMAT = 1  # bump when the way the root is made changes


def root_key() -> str:
    params = {"suite": SUITE, "arch": ARCH, "include": sorted(INCLUDE), "format": ROOT_FORMAT}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def run(cmd: Sequence[str], what: str, timeout: float = 300) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr + proc.stdout).strip().splitlines()[-12:]
        raise AssertionError(f"{what} failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def build_root(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached root tarball, made first if missing (to a temporary name, then renamed, so a
    killed build never looks cached). How long it took is kept next to it."""
    target = cache_dir / f"debroot-{SUITE}-{ARCH}-{root_key()}.tar.zst"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tar.zst")
    started = time.monotonic()
    try:
        run(
            [
                "mmdebstrap", f"--architectures={ARCH}", "--variant=minbase", "--mode=root",
                f"--include={','.join(INCLUDE)}", "--quiet", SUITE, str(partial),
            ],
            "mmdebstrap of the Debian root",
            timeout=1800,
        )  # fmt: skip
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    target.with_suffix(".build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    return target


@contextlib.contextmanager
def fresh_root(tarball: Path) -> Iterator[Path]:
    """A new copy of the root, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="nc-debroot-", dir="/var/tmp"))
    try:
        run(["tar", "--zstd", "-xf", str(tarball), "-C", str(base)], "unpacking the root")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _chrooted(root: Path, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """A command line that runs `argv` in the root with /proc and /dev mounted privately; each
    step execs the next, so its pid is the pid of `argv` itself."""
    assignments = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive",
                   "LC_ALL=C.UTF-8", *(f"{k}={v}" for k, v in (env or {}).items())]  # fmt: skip
    inner = (
        f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && "
        f"mount --bind /dev {shlex.quote(str(root / 'dev'))} && "
        f"exec chroot {shlex.quote(str(root))} /usr/bin/env -i " + shlex.join([*assignments, *argv])
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", inner]


def spawn_in_root(
    root: Path, argv: Sequence[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """`argv` started in the root, its output to `log`; the caller ends it (by this pid)."""
    with log.open("wb") as out:
        return subprocess.Popen(_chrooted(root, argv, env), stdout=out, stderr=subprocess.STDOUT)


def in_root(root: Path, script: str, timeout: float = 300, check: bool = True) -> str:
    """`script` (sh) inside the root, as root, with a clean environment; its stdout."""
    cmd = _chrooted(root, ["/bin/sh", "-ec", script])
    if not check:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return f"{proc.returncode}\n{proc.stdout}{proc.stderr}"
    return run(cmd, f"`{script[:60]}` in the root", timeout=timeout)


def file_list(root: Path, skip: Sequence[str]) -> set[str]:
    """Every path in the root (files, dirs, links), but the volatile trees in `skip`."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root).removeprefix(".").lstrip("/")
        dirnames[:] = [d for d in dirnames if os.path.join(rel, d) not in skip]
        for name in [*dirnames, *filenames]:
            found.add(os.path.join(rel, name))
    return found
