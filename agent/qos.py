"""Traffic classes on the node's uplink (htb; `tc netem` is not available here, htb is), so
control traffic keeps priority over bulk migration traffic, which is capped.

    1:10  control   gRPC to/from the controller (port 7700), prio 0, guaranteed
    1:20  default   everything else (WireGuard, VM traffic), prio 1
    1:30  bulk      live migration (QEMU 49152-49215, libvirtd 16509), prio 2, capped
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import structlog

from shared.errors import InvalidArgument

log = structlog.get_logger(__name__)

CONTROL_PORT = 7700
# QEMU's migration ports 49152-49215 are one u32 match: 0xC000 with mask 0xFFC0.
MIGRATION_PORT_BASE, MIGRATION_PORT_MASK = 0xC000, 0xFFC0
LIBVIRTD_TCP_PORT = 16509


@dataclass(frozen=True, slots=True)
class UplinkClasses:
    ifname: str
    link_mbit: float
    migration_mbit: float

    def __post_init__(self) -> None:
        if not self.link_mbit > 0:
            raise InvalidArgument(f"uplink {self.ifname}: link speed must be > 0 Mbit/s")
        if not 0 < self.migration_mbit <= self.link_mbit:
            raise InvalidArgument(
                f"uplink {self.ifname}: migration cap must be in (0, {self.link_mbit:g}] Mbit/s"
            )

    def commands(self) -> list[list[str]]:
        """The `tc` invocations, in order, onto a device without our qdisc (`apply` removes
        an earlier one first: this kernel refuses `qdisc replace` of an existing htb root,
        "Change operation not supported", so an agent restarted without a reboot failed)."""
        dev = ["dev", self.ifname]
        link, bulk = self.link_mbit, self.migration_mbit
        control = max(link * 0.1, 1.0)  # guaranteed to the control plane
        rest = max(link - control - bulk, 1.0)
        cls = ["tc", "class", "replace", *dev, "parent", "1:1", "classid"]
        filt = ["tc", "filter", "replace", *dev, "parent", "1:", "protocol", "ip"]
        return [
            ["tc", "qdisc", "add", *dev, "root", "handle", "1:", "htb", "default", "20"],
            ["tc", "class", "replace", *dev, "parent", "1:", "classid", "1:1",
             "htb", "rate", f"{link:g}mbit"],
            [*cls, "1:10", "htb", "rate", f"{control:g}mbit", "ceil", f"{link:g}mbit", "prio", "0"],
            [*cls, "1:20", "htb", "rate", f"{rest:g}mbit", "ceil", f"{link:g}mbit", "prio", "1"],
            [*cls, "1:30", "htb", "rate", f"{bulk:g}mbit", "ceil", f"{bulk:g}mbit", "prio", "2"],
            [*filt, "pref", "10", "u32", "match", "ip", "dport", str(CONTROL_PORT), "0xffff",
             "flowid", "1:10"],
            [*filt, "pref", "11", "u32", "match", "ip", "sport", str(CONTROL_PORT), "0xffff",
             "flowid", "1:10"],
            [*filt, "pref", "30", "u32", "match", "ip", "dport", str(MIGRATION_PORT_BASE),
             hex(MIGRATION_PORT_MASK), "flowid", "1:30"],
            [*filt, "pref", "31", "u32", "match", "ip", "sport", str(MIGRATION_PORT_BASE),
             hex(MIGRATION_PORT_MASK), "flowid", "1:30"],
            [*filt, "pref", "32", "u32", "match", "ip", "dport", str(LIBVIRTD_TCP_PORT), "0xffff",
             "flowid", "1:30"],
        ]  # fmt: skip

    def apply(self) -> None:
        # no root qdisc yet (a fresh boot) is fine: "Cannot delete qdisc with handle of zero"
        subprocess.run(["tc", "qdisc", "del", "dev", self.ifname, "root"], capture_output=True)
        for argv in self.commands():
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise InvalidArgument(f"{' '.join(argv)}: {done.stderr.strip()}")
        log.info(
            "uplink qos applied",
            ifname=self.ifname,
            link_mbit=self.link_mbit,
            migration_mbit=self.migration_mbit,
        )


POSTCOPY_SHARE = 0.8


def postcopy_cap_mbit(migration_class_mbit: float) -> int:
    """QEMU's own rate for a post-copy that names none: 80 % of the uplink's migration class
    (0 = no class, no cap). Capped by QEMU, the background pages wait in QEMU's queue, and the
    pages the running guest faults on are sent first; capped only by the class, they wait
    behind a full qdisc and socket buffer. Measured on the lab's IoT link (10 Mbit/s class): a
    pinged guest went unanswered for 31.8 s after the switch, and for 7.8 s at 8 Mbit/s."""
    if migration_class_mbit <= 0:
        return 0
    return max(1, int(migration_class_mbit * POSTCOPY_SHARE))


def route_device(destination: str) -> str:
    """The interface the kernel uses to reach `destination` (the uplink, by definition)."""
    done = subprocess.run(["ip", "-o", "route", "get", destination], capture_output=True, text=True)
    words = done.stdout.split()
    if done.returncode != 0 or "dev" not in words:
        raise InvalidArgument(f"no route to {destination}: {done.stderr.strip()}")
    return words[words.index("dev") + 1]
