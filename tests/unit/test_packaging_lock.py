"""packaging/requirements.lock against pyproject.toml: the .deb packages ship exactly the pinned,
hash-checked wheels, so a dependency changed in pyproject without re-locking must fail here
(rerun `python3 packaging/lock_deps.py`), not in a package on an edge node."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
FROM_DEBIAN = {"libvirt-python"}  # python3-libvirt, through the venv's system site packages
# one wheel per architecture (x86_64, aarch64); the rest are pure Python: one wheel for both
NATIVE = {"cffi", "cryptography", "grpcio", "numpy", "protobuf", "psutil", "pyyaml"}


def locked() -> dict[str, tuple[Version, list[str]]]:
    text = (REPO / "packaging/requirements.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*", line)
        assert m, f"not an exact, hashed pin: {line!r}"
        pins[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"[0-9a-f]{64}", m[3]))
    return pins


def test_every_runtime_dependency_is_locked_within_pyproject_bounds() -> None:
    pins = locked()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.name in FROM_DEBIAN:
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock"
        version, _ = pins[name]
        assert req.specifier.contains(version), f"{name}=={version} is outside {req.specifier}"


def test_native_wheels_are_hashed_once_per_architecture() -> None:
    for name, (version, hashes) in locked().items():
        assert len(set(hashes)) == len(hashes), f"{name}: a hash is repeated"
        expected = 2 if name in NATIVE else 1
        assert len(hashes) == expected, f"{name}=={version}: {len(hashes)} hashes"
    assert set(locked()) >= NATIVE
