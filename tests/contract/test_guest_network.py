"""A real tiny guest on a host bridge configures its own address and answers ping.

The private libvirtd runs in the root network namespace, so the bridge lives there too: a
host-unique name and a 10.252.<x>.0/24 subnet that no address or route on this host uses. Only
this machine sees the traffic. Guest and bridge are removed even when the test fails.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.hypervisor.base import NetworkAttachment, mac_for
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.builder import NET_LINE
from agent.images.catalog import ImageCatalog
from lab.libvirtd import PrivateLibvirtd
from shared.domain import VMSpec, VMState
from shared.errors import NovaCronError
from tests.conftest import require_backend, wait_for

NET_TIMEOUT_S = 90.0

pytestmark = pytest.mark.qemu


@dataclass(frozen=True)
class Bridge:
    name: str
    subnet: ipaddress.IPv4Network

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def guest_ip(self) -> str:
        return str(self.subnet.network_address + 2)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix this host has as an address or a route (not the default route)."""
    nets: list[ipaddress.IPv4Network] = []
    for iface in json.loads(_ip("-j", "-4", "addr").stdout or "[]"):
        for a in iface.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for table in ("main", "local"):
        for r in json.loads(_ip("-j", "-4", "route", "show", "table", table).stdout or "[]"):
            if r.get("dst") not in (None, "default"):
                nets.append(ipaddress.IPv4Network(r["dst"], strict=False))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.252.<x>.0/24 that overlaps nothing more specific than a /24 on this host
    (a covering route such as a lab's 'unreachable 10.0.0.0/8' loses to our connected /24)."""
    used = _used_networks()
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for x in candidates:
        net = ipaddress.IPv4Network(f"10.252.{x}.0/24")
        if not any(u.overlaps(net) and u.prefixlen >= net.prefixlen for u in used):
            return net
    pytest.fail("no free 10.252.<x>.0/24 on this host")


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    require_backend(_ip("-V").returncode == 0, "iproute2 not installed")
    name = f"nctb{uuid.uuid4().hex[:8]}"  # 12 chars: fits IFNAMSIZ, unique host-wide
    br = Bridge(name, _free_subnet())
    made = _ip("link", "add", "name", name, "type", "bridge")
    require_backend(made.returncode == 0, f"cannot create a bridge: {made.stderr.strip()}")
    try:
        for args in (
            ("addr", "add", f"{br.host_ip}/{br.subnet.prefixlen}", "dev", name),
            ("link", "set", name, "up"),
        ):
            proc = _ip(*args)
            assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"
        yield br
    finally:
        _ip("link", "del", name)


@pytest.fixture
def hv(private_libvirtd: PrivateLibvirtd) -> Iterator[LibvirtHypervisor]:
    driver = LibvirtHypervisor(private_libvirtd.uri)
    try:
        yield driver
    finally:
        driver.close()


def test_guest_configures_its_address_and_answers_ping(
    hv: LibvirtHypervisor, bridge: Bridge, tiny_image_dir: Path, tmp_path: Path
) -> None:
    vm_id = str(uuid.uuid4())
    name = f"net-{vm_id[:8]}"
    net = NetworkAttachment(
        bridge=bridge.name,
        mac=mac_for(vm_id),
        address=f"{bridge.guest_ip}/{bridge.subnet.prefixlen}",
        gateway=bridge.host_ip,
    )
    media = dataclasses.replace(
        ImageCatalog(tiny_image_dir).prepare("tiny", tmp_path / vm_id), network=net
    )
    log = tmp_path / vm_id / "console.log"
    spec = VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
    try:
        t0 = time.monotonic()
        assert hv.create(vm_id, spec, 1, media, str(log)).state == VMState.RUNNING
        expected = NET_LINE.format(name=name, ip=net.address, gw=net.gateway)

        def text() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        def configured() -> bool:
            out = text()
            if f"NovaCron guest {name} net error" in out:
                pytest.fail(f"guest reported a network error:\n{out}")
            return expected in out

        wait_for(configured, NET_TIMEOUT_S, f"{expected!r} in {log}", interval_s=0.1)
        t_net = time.monotonic() - t0
        lines = [ln for ln in text().splitlines() if ln.startswith("NovaCron guest")]
        assert lines[0].startswith(f"NovaCron guest {name} booted: kernel ")  # still first

        ping = subprocess.run(
            ["ping", "-c", "3", "-W", "2", "-I", bridge.name, bridge.guest_ip],
            capture_output=True,
            text=True,
            check=False,
        )
        t_ping = time.monotonic() - t0
        assert ping.returncode == 0, f"no reply from the guest:\n{ping.stdout}{ping.stderr}"
        assert " 0 received" not in ping.stdout
        neigh = json.loads(_ip("-j", "neigh", "show", bridge.guest_ip, "dev", bridge.name).stdout)
        assert [n.get("lladdr") for n in neigh] == [net.mac]  # the MAC we asked for
        print(f"create -> net line {t_net:.2f}s, -> ping done {t_ping:.2f}s\n{ping.stdout}")
    finally:
        try:
            hv.delete(vm_id)
        except NovaCronError as err:  # pragma: no cover - report, keep cleaning
            print(f"cleanup of {vm_id} failed: {err}")
