"""The host side of VM networking on one node.

VMs attach to a local bridge whose address is the VM network's anycast gateway (the same on
every site, so a VM keeps its gateway wherever it runs). Each local VM gets a /32 route to the
bridge; the rest of the VM pool is routed into the WireGuard mesh, where the controller's
peer sets (allowed IPs) pick the node that hosts each address.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from pathlib import Path

import structlog

from shared.errors import FailedPrecondition, InvalidArgument

log = structlog.get_logger(__name__)

BRIDGE = "ncbr0"
ROUTE_PROTO = "214"  # marks our routes, so they can be told from the operator's


class VMNetwork:
    """Blocking (`ip`, /proc): called off the event loop. Idempotent throughout."""

    def __init__(self, bridge: str = BRIDGE) -> None:
        self.bridge = bridge
        self.gateway = ""
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return bool(self.gateway)

    def configure(self, pool: str, gateway: str, mesh_ifname: str) -> None:
        with self._lock:
            try:
                ipaddress.ip_network(pool)
                ipaddress.ip_address(gateway)
            except ValueError as exc:
                raise InvalidArgument(f"VM network: {exc}") from None
            if not _exists(self.bridge):
                _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "replace", f"{gateway}/32", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            _ip("route", "replace", pool, "dev", mesh_ifname, "proto", ROUTE_PROTO)
            self.gateway = gateway
            log.info("vm network ready", bridge=self.bridge, pool=pool, gateway=gateway)

    def attach(self, address: str) -> None:
        """Traffic for this local VM goes to the bridge, not into the mesh."""
        if not self.ready:
            raise FailedPrecondition("VM networking is not configured yet (no mesh config)")
        _ip("route", "replace", _host(address), "dev", self.bridge, "proto", ROUTE_PROTO)

    def shape(self, tap: str, mbps: int) -> None:
        """Cap traffic to the VM with tbf on its tap (the tap's egress). libvirt's own
        <bandwidth> needs the sfq qdisc and ingress policing needs act_police; neither exists
        on these kernels, so traffic from the VM is not capped per VM."""
        burst_bytes = max(32 * 1024, mbps * 1_000_000 // 8 // 100)  # >= 10 ms at the rate
        _ip_tc = ["tc", "qdisc", "replace", "dev", tap, "root", "tbf", "rate", f"{mbps}mbit"]
        done = subprocess.run(
            [*_ip_tc, "burst", str(burst_bytes), "latency", "50ms"], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise InvalidArgument(f"tc tbf on {tap}: {done.stderr.strip()}")

    def detach(self, address: str) -> None:
        subprocess.run(
            ["ip", "route", "del", _host(address), "dev", self.bridge],
            capture_output=True,
        )


def _host(address: str) -> str:
    try:
        return f"{ipaddress.ip_interface(address).ip}/32"
    except ValueError as exc:
        raise InvalidArgument(f"VM address {address!r}: {exc}") from None


def _exists(link: str) -> bool:
    return subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InvalidArgument(f"ip {' '.join(args)}: {done.stderr.strip()}")
