"""The shipped units (systemd/) pass `systemd-analyze verify` unchanged, and say what the
daemons do (Type=notify and a watchdog, hardened). verify needs each command to exist, so it
runs with --root on a scratch root holding the host's systemd units, the two units as
installed (/etc/systemd/system) and a stub for every command they run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_backend

UNITS = Path(__file__).resolve().parents[2] / "systemd"
NAMES = ("novacron-agent.service", "novacron-controller.service")


def commands(text: str) -> list[str]:
    """The executables of every Exec*= line (after systemd's prefixes such as + - @ !)."""
    found = re.findall(r"^Exec\w+=[-+@!:|]*(\S+)", text, flags=re.M)
    return sorted(set(found))


def verify(root: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    require_backend(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for command in commands(text):
            stub = root / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
    )


def shipped() -> dict[str, str]:
    return {name: (UNITS / name).read_text() for name in NAMES}


def test_both_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    done = verify(tmp_path, shipped())
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # a value systemd ignores is only a warning


def test_verify_as_run_here_catches_a_bad_value(tmp_path: Path) -> None:
    bad = shipped()["novacron-agent.service"].replace("WatchdogSec=30", "WatchdogSec=often")
    done = verify(tmp_path, {"novacron-agent.service": bad})
    assert "Failed to parse sec value" in done.stderr


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_the_units_run_the_package_under_notify_and_a_watchdog(name: str) -> None:
    s = settings(shipped()[name])
    daemon = name.removesuffix(".service")
    assert s["ExecStart"][0].startswith(f"/opt/novacron-edge/bin/{daemon} ")
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
    }.items():
        assert value in s[key], (name, key)


def test_only_the_agent_has_capabilities_and_only_those_it_uses() -> None:
    agent = settings(shipped()["novacron-agent.service"])
    controller = settings(shipped()["novacron-controller.service"])
    assert agent["CapabilityBoundingSet"] == [
        "CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_OVERRIDE CAP_FOWNER"
    ]
    assert agent["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert controller["CapabilityBoundingSet"] == [""]
    assert controller["User"] == ["novacron"]
    assert controller["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


EXPOSURE = {"novacron-controller.service": 1.1, "novacron-agent.service": 2.7}  # docs/operations.md


@pytest.mark.parametrize("name", NAMES)
def test_the_exposure_scores_are_the_ones_documented(name: str) -> None:
    require_backend(shutil.which("systemd-analyze") is not None, "systemd-analyze not installed")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / name)],
        capture_output=True,
        text=True,
    )
    found = re.search(rf"Overall exposure level for {name}: (\d+\.\d)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) == EXPOSURE[name], "update docs/operations.md and EXPOSURE"
    assert f"| `{name}` | {EXPOSURE[name]} " in (UNITS.parent / "docs/operations.md").read_text()
