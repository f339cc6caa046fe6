"""The locked third-party wheels of one target architecture: fetched once into a cache, then
installed into a package's site-packages.

The target is Debian bookworm's CPython 3.11 (glibc 2.36), not the build machine's Python, so pip
is told the target's tags (--platform/--python-version/--abi) and never builds anything
(--only-binary). The cache directory is keyed by the lock file's hash: a changed lock is a new
directory, an unchanged one is never downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}  # Debian architecture -> wheel platform
TARGET_PYTHON = "3.11"
TARGET_GLIBC_MINOR = 36  # bookworm's glibc 2.36: any manylinux_2_17.._2_36 wheel runs there


def pip_platform_args(pyarch: str) -> list[str]:
    """pip options that select wheels for bookworm's CPython 3.11 on `pyarch`, and only wheels."""
    platforms = [f"manylinux2014_{pyarch}"]
    platforms += [f"manylinux_2_{minor}_{pyarch}" for minor in range(17, TARGET_GLIBC_MINOR + 1)]
    args = ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp"]
    for abi in ("cp311", "abi3", "none"):
        args += ["--abi", abi]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def lock_key(lock: Path) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build-deb: pip {args[0]} failed:\n{proc.stdout}{proc.stderr}")


def fetch(pyarch: str, lock: Path, cache: Path) -> Path:
    """The directory of the locked wheels for `pyarch`, downloaded (hash-checked) if missing."""
    wheel_dir = cache / "wheels" / lock_key(lock) / pyarch
    if (wheel_dir / ".complete").exists():
        return wheel_dir
    partial = wheel_dir.with_name(f".{pyarch}.{os.getpid()}.partial")  # one per build
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        pip("download", "-q", "--no-deps", "--require-hashes", "-r", str(lock), "-d",
            str(partial), *pip_platform_args(pyarch))  # fmt: skip
        (partial / ".complete").write_text(lock_key(lock) + "\n")
        if not (wheel_dir / ".complete").exists():  # else another build got there first
            shutil.rmtree(wheel_dir, ignore_errors=True)
            partial.rename(wheel_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return wheel_dir


def install(pyarch: str, lock: Path, wheel_dir: Path, site_packages: Path) -> None:
    """The locked wheels, unpacked into `site_packages` (no scripts: ours are written apart)."""
    site_packages.mkdir(parents=True, exist_ok=True)
    pip("install", "-q", "--no-deps", "--require-hashes", "--no-index", "--no-compile",
        "--find-links", str(wheel_dir), "--target", str(site_packages), "-r", str(lock),
        *pip_platform_args(pyarch))  # fmt: skip
    shutil.rmtree(site_packages / "bin", ignore_errors=True)  # numpy's f2py etc.: not shipped
    for tests in sorted((site_packages / "numpy").rglob("tests")):  # 27 of its 45 MB installed
        if tests.is_dir():
            shutil.rmtree(tests)
