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


CORE_FORBIDDEN = {"grpc", "google", "asyncio", "time", "sqlite3", "threading", "socket"}
CORE_FORBIDDEN_MODULES = {
    "controller.store",
    "controller.runner",
    "controller.sessions",
    "controller.api",
    "shared.pb",
    "shared.convert",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_the_controller_core_is_pure() -> None:
    """The core decides; it does no I/O and reads no clock (time comes with each event)."""
    files = sorted((ROOT / "controller" / "core").glob("*.py"))
    assert len(files) > 5
    violations = []
    for path in files:
        source = path.read_text()
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in CORE_FORBIDDEN or any(
                module == bad or module.startswith(bad + ".") for bad in CORE_FORBIDDEN_MODULES
            ):
                violations.append(f"{path.name} imports {module}")
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
                violations.append(f"{path.name}:{node.lineno} is async")
    assert not violations, violations


def test_no_hand_written_module_is_over_400_lines() -> None:
    """One job per module: past ~400 lines a module has picked up a second one."""
    too_long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for package in ("agent", "bench", "cli", "controller", "lab", "shared")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "/pb/" not in str(path) and (n := len(path.read_text().splitlines())) > 420
    ]
    assert not too_long, too_long
