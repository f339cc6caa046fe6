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
        self._configured = threading.Event()

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
            # The same gateway MAC on every site: a live-migrated guest's ARP entry for its
            # gateway stays right, so its traffic flows the moment it resumes elsewhere.
            _ip("link", "set", self.bridge, "address", gateway_mac(gateway))
            _ip("addr", "replace", f"{gateway}/32", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            _ip("route", "replace", pool, "dev", mesh_ifname, "proto", ROUTE_PROTO)
            self.gateway = gateway
            self._configured.set()
            log.info("vm network ready", bridge=self.bridge, pool=pool, gateway=gateway)

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until configured (the controller pushes the mesh right after a hello)."""
        return self._configured.wait(timeout_s)

    def attach(self, address: str) -> None:
        """Traffic for this local VM goes to the bridge, not into the mesh."""
        if not self.ready:
            raise FailedPrecondition("VM networking is not configured yet (no mesh config)")
        _ip("route", "replace", _host(address), "dev", self.bridge, "proto", ROUTE_PROTO)

    def shape(self, tap: str, mbps: int, vm_id: str) -> None:
        """Cap the VM's traffic at `mbps` in each direction. To the VM: tbf on its tap (the
        tap's egress). From the VM: the tap's ingress is redirected (act_mirred) to an IFB
        device of its own that has the same tbf. libvirt's <bandwidth> would need the sfq
        qdisc and ingress policing act_police; these kernels have neither, but they have
        ifb, u32 and mirred. Idempotent: a re-create re-applies the same settings."""
        ifb = ifb_name(vm_id)
        _tbf(tap, mbps)
        if not _exists(ifb):
            _ip("link", "add", ifb, "type", "ifb")
        _ip("link", "set", ifb, "up")
        _tbf(ifb, mbps)
        _tc("qdisc", "replace", "dev", tap, "handle", "ffff:", "ingress")
        subprocess.run(["tc", "filter", "del", "dev", tap, "parent", "ffff:"], capture_output=True)
        _tc(
            "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "prio", "1",
            "u32", "match", "u32", "0", "0",
            "action", "mirred", "egress", "redirect", "dev", ifb,
        )  # fmt: skip

    def unshape(self, vm_id: str) -> None:
        """Remove the VM's IFB device (its tap, and the tap's qdiscs, go with the domain)."""
        subprocess.run(["ip", "link", "del", ifb_name(vm_id)], capture_output=True)

    def detach(self, address: str) -> None:
        subprocess.run(
            ["ip", "route", "del", _host(address), "dev", self.bridge],
            capture_output=True,
        )


def gateway_mac(gateway: str) -> str:
    """The anycast gateway's MAC: locally administered unicast (02:...), from its address."""
    packed = ipaddress.ip_address(gateway).packed[-4:]
    return "02:4e:" + ":".join(f"{b:02x}" for b in packed)


def ifb_name(vm_id: str) -> str:
    """The VM's IFB device: from its id, so a restarted agent finds it again (<= 15 chars)."""
    return f"ncq-{vm_id.replace('-', '')[:11]}"


def _tbf(dev: str, mbps: int) -> None:
    burst_bytes = max(32 * 1024, mbps * 1_000_000 // 8 // 100)  # >= 10 ms at the rate
    _tc(
        "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbps}mbit",
        "burst", str(burst_bytes), "latency", "50ms",
    )  # fmt: skip


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InvalidArgument(f"tc {' '.join(args)}: {done.stderr.strip()}")


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
