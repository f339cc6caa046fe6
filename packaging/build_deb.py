"""Builds the .deb packages of NovaCron Edge for amd64 and arm64 with dpkg-deb (`make packages`).

Three packages per architecture (packaging/README.md says why):
  novacron-edge-common  the virtualenv in /opt/novacron-edge (locked wheels for the target
                        architecture, our shared/controller/agent/cli code, the `novacron` CLI)
                        and the `novacron` system user;
  novacron-controller   its entry point, unit and /etc/novacron/controller.yaml;
  novacron-agent        its entry points, unit and /etc/novacron/agent.yaml.
The venv is assembled for the TARGET (Debian bookworm's /usr/bin/python3.11), not with the build
machine's Python: pyvenv.cfg points at /usr/bin and sees system site packages, where Debian's
python3-libvirt of the target architecture lives (libvirt-python has no wheels).
"""

from __future__ import annotations

import argparse
import base64
import compileall
import hashlib
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheels
from deb_tree import PackageTree

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
PREFIX = "opt/novacron-edge"
SITE = f"{PREFIX}/lib/python{wheels.TARGET_PYTHON}/site-packages"
OUR_CODE = ("shared", "controller", "agent", "cli")  # not lab/ nor bench/: development only
NOT_SHIPPED = {"__pycache__", ".mypy_cache"}
DIST_NAME = "novacron-edge"
# console script -> the package that ships it (novacron-lab is development only)
SCRIPT_OWNER = {
    "novacron": "novacron-edge-common",
    "novacron-controller": "novacron-controller",
    "novacron-agent": "novacron-agent",
    "novacron-image": "novacron-agent",
}
DAEMONS = ("novacron-controller", "novacron-agent")
# what a purge removes under /var/lib/novacron (the StateDirectory= and the agent's images)
STATE_DIRS = {"novacron-controller": ["controller"], "novacron-agent": ["agent", "images"]}


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


def source_date_epoch() -> int:
    """The mtime of every file and archive member: the last commit's time, so rebuilding the
    same commit gives the same bytes."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True, text=True
    )
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else 0


def copy_our_code(site: Path) -> list[Path]:
    """shared/, controller/, agent/, cli/ as they are in this tree (no caches, no stubs)."""
    copied = []
    for package in OUR_CODE:
        for src in sorted((ROOT / package).rglob("*")):
            rel = src.relative_to(ROOT)
            if src.is_dir() or NOT_SHIPPED & set(rel.parts) or src.suffix in (".pyc", ".pyi"):
                continue
            dest = site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            copied.append(dest)
    return copied


def write_dist_info(site: Path, version: str, files: list[Path]) -> None:
    """Our distribution's metadata, so importlib.metadata.version('novacron-edge') works."""
    info = site / f"{DIST_NAME.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    meta = project()
    scripts = meta["scripts"]
    assert isinstance(scripts, dict)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
        f"Summary: {meta['description']}\nLicense: {meta['license']}\n"
    )
    (info / "INSTALLER").write_text("novacron-build-deb\n")
    points = [f"{name} = {target}" for name, target in scripts.items() if name in SCRIPT_OWNER]
    (info / "entry_points.txt").write_text("[console_scripts]\n" + "\n".join(points) + "\n")
    (info / "top_level.txt").write_text("\n".join(OUR_CODE) + "\n")
    record = []
    for path in [*files, *sorted(info.iterdir())]:
        digest = hashlib.sha256(path.read_bytes()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path.relative_to(site)},sha256={b64},{path.stat().st_size}")
    record.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


def console_script(target: str) -> str:
    module, _, func = target.partition(":")
    return (
        f"#!/{PREFIX}/bin/python\n"
        "import sys\n"
        f"from {module} import {func}\n"
        "if __name__ == '__main__':\n"
        f"    sys.exit({func}())\n"
    )


def assemble_venv(tree: PackageTree, pyarch: str, lock: Path, cache: Path, version: str) -> None:
    """The target's virtualenv, by hand: pyvenv.cfg, python symlinks, wheels, our code, pycs."""
    tree.write(f"{PREFIX}/pyvenv.cfg", (
        "home = /usr/bin\n"
        "include-system-site-packages = true\n"
        f"version = {wheels.TARGET_PYTHON}\n"
        f"executable = /usr/bin/python{wheels.TARGET_PYTHON}\n"
    ))  # fmt: skip
    tree.symlink(f"{PREFIX}/bin/python", f"/usr/bin/python{wheels.TARGET_PYTHON}")
    tree.symlink(f"{PREFIX}/bin/python3", "python")
    tree.symlink(f"{PREFIX}/bin/python{wheels.TARGET_PYTHON}", "python")
    tree.symlink(f"{PREFIX}/lib64", "lib")
    site = tree.root / SITE
    wheels.install(pyarch, lock, wheels.fetch(pyarch, lock, cache), site)
    write_dist_info(site, version, copy_our_code(site))
    # Compiled here, hash-checked (no mtimes inside): the daemons run with /opt read-only
    # (ProtectSystem=strict), and every .pyc is a file dpkg knows, so purge leaves nothing.
    # ddir: the path recorded in each .pyc is where it is installed, not this staging tree's
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    ok = compileall.compile_dir(site, ddir=f"/{SITE}", quiet=2, invalidation_mode=mode, workers=0)
    if not ok:
        raise SystemExit(f"build-deb: byte-compiling {site} failed")


def add_scripts(trees: dict[str, PackageTree]) -> None:
    scripts = project()["scripts"]
    assert isinstance(scripts, dict)
    for name, package in SCRIPT_OWNER.items():
        if name not in scripts:
            raise SystemExit(f"build-deb: pyproject.toml has no [project.scripts] {name}")
        trees[package].write(f"{PREFIX}/bin/{name}", console_script(scripts[name]), mode=0o755)
        trees[package].symlink(f"usr/bin/{name}", f"/{PREFIX}/bin/{name}")


def extra_configure(unit: Path) -> str:
    """Shell for postinst: a unit that runs as `novacron` and talks to libvirt needs the group."""
    text = unit.read_text()
    if re.search(r"^User=novacron\s*$", text, re.M) and "libvirt" in text:
        return (
            "    if getent group libvirt >/dev/null; then\n"
            "        adduser --quiet novacron libvirt >/dev/null || true\n"
            "    fi"
        )
    return "    :"


def commented_out(example: str) -> str:
    """The example with every key commented out: the installed file sets nothing, so every
    node starts from the defaults (its hostname as node id, not the example's `mec-berlin-1`)
    and the operator uncomments what this node needs."""
    lines = []
    for line in example.splitlines():
        indented = line[:1].isspace() and line.strip() and not line.lstrip().startswith("#")
        lines.append(f"#{line}" if indented else line)
    return "\n".join(lines) + "\n"


def add_daemon(tree: PackageTree, daemon: str) -> None:
    """The unit as it is in systemd/, the packaging drop-in, the conffile, maintainer scripts."""
    short = daemon.removeprefix("novacron-")
    unit = ROOT / "systemd" / f"{daemon}.service"
    if not unit.exists():
        raise SystemExit(f"build-deb: {unit} is missing")
    tree.copy(unit, f"lib/systemd/system/{daemon}.service")
    dropin = PACKAGING / "debian" / f"{daemon}.service.d"
    for conf in sorted(dropin.glob("*.conf")):
        tree.copy(conf, f"lib/systemd/system/{daemon}.service.d/{conf.name}")
    # the agent's file holds the join token until the node has enrolled (read by root)
    mode = 0o600 if daemon == "novacron-agent" else 0o644
    example = (PACKAGING / f"{short}.example.yaml").read_text()
    tree.write(f"etc/novacron/{short}.yaml", commented_out(example), mode)
    tree.conffile(f"/etc/novacron/{short}.yaml")
    tree.script_template = "daemon"
    tree.substitutions["@STATE_DIRS@"] = " ".join(STATE_DIRS[daemon])
    tree.substitutions["@EXTRA_CONFIGURE@"] = extra_configure(unit)


def build_arch(arch: str, version: str, out: Path, cache: Path, epoch: int) -> list[Path]:
    # a private staging tree: two builds at once (e.g. two tests) must not share one
    with tempfile.TemporaryDirectory(prefix=f"novacron-deb-{arch}-") as staging:
        return build_trees(Path(staging), arch, version, out, cache, epoch)


def build_trees(
    staging: Path, arch: str, version: str, out: Path, cache: Path, epoch: int
) -> list[Path]:
    pyarch = wheels.ARCHES[arch]
    names = ("novacron-edge-common", *DAEMONS)
    trees = {name: PackageTree(staging / name, name, version, arch, PACKAGING) for name in names}
    assemble_venv(trees["novacron-edge-common"], pyarch, PACKAGING / "requirements.lock", cache,
                  version)  # fmt: skip
    add_scripts(trees)
    # the units' ExecCondition= (packaging/debian/*.service.d): used by both daemons
    trees["novacron-edge-common"].copy(
        PACKAGING / "debian" / "novacron-configured", f"{PREFIX}/libexec/novacron-configured", 0o755
    )
    for daemon in DAEMONS:
        add_daemon(trees[daemon], daemon)
    built = []
    for tree in trees.values():
        tree.doc_copyright(ROOT / "README.md")
        built.append(tree.build(out, epoch))
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="where the .deb files go")
    p.add_argument("--arch", action="append", choices=sorted(wheels.ARCHES),
                   help="build only this architecture (repeatable; default: all)")  # fmt: skip
    p.add_argument("--version", help="package version (default: pyproject's, e.g. 0.1.0)")
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("NOVACRON_CACHE", Path.home() / ".cache/novacron")),
                   help="downloaded wheels, keyed by the lock file's hash")  # fmt: skip
    args = p.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        # the .pyc files are for the target's CPython 3.11; another version writes other ones
        raise SystemExit(f"build-deb: needs Python 3.11 to build, not {sys.version.split()[0]}")
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("build-deb: dpkg-deb not found (Debian: apt-get install dpkg)")
    version = args.version or str(project()["version"])
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", version):
        raise SystemExit(f"build-deb: {version!r} is not a Debian version")
    args.out.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch()
    for arch in args.arch or sorted(wheels.ARCHES):
        for deb in build_arch(arch, version, args.out, args.cache, epoch):
            print(f"build-deb: {deb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
