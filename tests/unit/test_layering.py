"""Principle 1: agent -> shared <- controller. Agent and controller never import each other,
and shared imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "agent": {"controller", "cli", "lab"},
    "controller": {"agent", "cli", "lab"},
    "shared": {"agent", "controller", "cli", "lab"},
    "cli": {"agent", "controller", "lab"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found for {package}"
    violations = [
        f"{path.relative_to(ROOT)} imports {bad}"
        for path in files
        for bad in imported_packages(path) & FORBIDDEN[package]
    ]
    assert not violations, violations


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from controller.core import Controller\nimport agent.session\n")
    assert {"controller", "agent"} <= imported_packages(bad)
