"""Kernel WireGuard detection only. There is no kernel driver class yet: this machine has no
wireguard module, so one could not be tested (the userspace driver is used instead)."""

from __future__ import annotations

import secrets
import subprocess

import structlog

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 5.0


def kernel_wireguard_available() -> bool:
    """Try `ip link add <tmp> type wireguard` in the current network namespace, then clean up.
    False without root, without `ip`, or without the module."""
    probe = f"ncwgprobe{secrets.token_hex(3)}"
    try:
        added = subprocess.run(
            ["ip", "link", "add", probe, "type", "wireguard"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("kernel wireguard probe failed", error=str(exc))
        return False
    if added.returncode != 0:
        log.debug("no kernel wireguard", detail=added.stderr.strip())
        return False
    subprocess.run(
        ["ip", "link", "del", probe],
        capture_output=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    return True
