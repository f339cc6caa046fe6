"""Only the WireGuard device may deliver packets to the node's mesh address.

Linux accepts a packet for any local address on any interface (the weak host model), so a
host on the underlay that routes the mesh address to this node could otherwise reach what
listens there (the migration gateway, QEMU's incoming migration) without WireGuard. One
iptables chain fixes that: packets to the mesh address pass from the device or loopback,
every other is dropped. Idempotent; an address change moves the rule.
"""

from __future__ import annotations

import shutil
import subprocess

import structlog

log = structlog.get_logger(__name__)

CHAIN = "NOVACRON-OVERLAY"


def commands(address: str, device: str, previous: str = "") -> list[tuple[list[str], bool]]:
    """(argv, must succeed) in order; `address`/`previous` without prefix length."""
    ipt = ["iptables", "-w"]
    steps: list[tuple[list[str], bool]] = [
        ([*ipt, "-N", CHAIN], False),  # exists already: fine
        ([*ipt, "-F", CHAIN], True),
        ([*ipt, "-A", CHAIN, "-i", "lo", "-j", "RETURN"], True),
        ([*ipt, "-A", CHAIN, "-i", device, "-j", "RETURN"], True),
        ([*ipt, "-A", CHAIN, "-j", "DROP"], True),
    ]
    if previous and previous != address:
        steps.append(([*ipt, "-D", "INPUT", "-d", f"{previous}/32", "-j", CHAIN], False))
    return steps


def guard(address: str, device: str, previous: str = "") -> bool:
    """Install the rules; False (and a warning) where iptables is missing or refuses."""
    if shutil.which("iptables") is None:
        log.warning(
            "iptables missing: the mesh address is reachable from the underlay too",
            address=address,
        )
        return False
    for argv, required in commands(address, device, previous):
        done = subprocess.run(argv, capture_output=True, text=True)
        if required and done.returncode != 0:
            log.warning("overlay guard not installed", argv=argv, error=done.stderr.strip())
            return False
    rule = ["iptables", "-w", "INPUT", "-d", f"{address}/32", "-j", CHAIN]
    check = subprocess.run([rule[0], rule[1], "-C", *rule[2:]], capture_output=True)
    if check.returncode != 0:
        done = subprocess.run([rule[0], rule[1], "-I", *rule[2:]], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("overlay guard not installed", error=done.stderr.strip())
            return False
    return True
