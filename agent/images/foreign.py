"""A guest of another architecture than the build host's: its kernel, modules and busybox come
from Debian's packages of that architecture, downloaded once with apt into a cache and unpacked
with `dpkg-deb -x` (nothing is installed: the packages only supply files).

Needs the architecture enabled in dpkg (`dpkg --add-architecture arm64; apt-get update`, which
scripts/bootstrap does). A .deb ships no modules.dep (its postinst runs depmod), so `depmod -b`
writes one into the unpacked tree; depmod reads modules of any architecture.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared.arch import DEBIAN
from shared.errors import FailedPrecondition, Internal

log = structlog.get_logger(__name__)

CACHE_DIR = Path("/var/cache/novacron/guest-packages")
KERNEL_META = "linux-image-{deb}"  # Debian's metapackage: depends on the current kernel
BUSYBOX = "busybox-static"
ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}
_DONE = ".unpacked"


@dataclass(frozen=True, slots=True)
class GuestParts:
    """Where a guest's kernel, busybox and /lib/modules are, for the image builder."""

    boot_dir: Path
    busybox: Path
    modules_dir: Path
    packages: tuple[str, ...]  # the .deb file names they came from (the build stamp)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FailedPrecondition(f"{cmd[0]} not found, needed to {what}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise FailedPrecondition(f"cannot {what}: {tail}")
    return proc.stdout


def _require_dpkg_arch(deb: str) -> None:
    native = _run(["dpkg", "--print-architecture"], "ask dpkg its architecture").strip()
    foreign = _run(["dpkg", "--print-foreign-architectures"], "ask dpkg").split()
    if deb != native and deb not in foreign:
        raise FailedPrecondition(
            f"dpkg does not know architecture {deb}: run `dpkg --add-architecture {deb} && "
            "apt-get update` (scripts/bootstrap does)"
        )


def _download(package: str, deb: str, debs: Path) -> Path:
    """One package of architecture `deb` into `debs`, unless a .deb of it is there already."""
    found = sorted(debs.glob(f"{package}_*_{deb}.deb"))
    if found:
        return found[-1]
    _run(["apt-get", "download", "-q", f"{package}:{deb}"], f"download {package}:{deb}", debs)
    found = sorted(debs.glob(f"{package}_*_{deb}.deb"))
    if not found:
        raise Internal(f"apt-get download {package}:{deb} left no .deb in {debs}")
    return found[-1]


def _kernel_package(meta: Path) -> str:
    """The versioned kernel package the metapackage depends on."""
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"], f"read {meta.name}").strip()
    for alt in depends.split(","):
        name = alt.split("|")[0].split("(")[0].strip()
        if name.startswith("linux-image-"):
            return name.split(":")[0]
    raise Internal(f"{meta.name} depends on no linux-image-* package ({depends!r})")


def guest_parts(arch: str, cache_dir: Path = CACHE_DIR) -> GuestParts:
    """Kernel, busybox and modules of `arch` from Debian's packages, cached in `cache_dir`."""
    deb = DEBIAN[arch]
    debs = cache_dir / deb / "debs"
    tree = cache_dir / deb / "tree"
    debs.mkdir(parents=True, exist_ok=True)
    _require_dpkg_arch(deb)
    meta = _download(KERNEL_META.format(deb=deb), deb, debs)
    files = [_download(_kernel_package(meta), deb, debs), _download(BUSYBOX, deb, debs)]
    names = tuple(f.name for f in files)
    done = tree / _DONE
    if not done.is_file() or done.read_text().split() != list(names):
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        for f in files:
            _run(["dpkg-deb", "-x", str(f), str(tree)], f"unpack {f.name}")
        for kver in (p.name for p in (tree / "lib/modules").iterdir()):
            _run(["depmod", "-b", str(tree), kver], f"run depmod for {kver}")
        done.write_text("\n".join(names) + "\n")
        log.info("guest_packages_unpacked", arch=arch, packages=names, tree=str(tree))
    busybox = tree / "bin/busybox"
    require_elf_machine(busybox, arch)
    return GuestParts(tree / "boot", busybox, tree / "lib/modules", names)


def require_elf_machine(path: Path, arch: str) -> None:
    """FailedPrecondition unless `path` is an ELF binary for `arch` (not the build host's)."""
    try:
        head = path.read_bytes()[:20]
    except OSError as err:
        raise FailedPrecondition(f"{path}: {err.strerror}") from None
    if head[:4] != b"\x7fELF":
        raise FailedPrecondition(f"{path} is not an ELF binary")
    (machine,) = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)
    if machine != ELF_MACHINE[arch]:
        raise FailedPrecondition(f"{path} is built for ELF machine {machine:#x}, not {arch}")
