"""A VM's bandwidth cap holds in both directions, measured through real kernel qdiscs.

Two network namespaces of our own stand in for a node and a guest: a veth pair whose node end
plays the VM's tap. `VMNetwork.shape` runs in the node namespace exactly as the agent runs it
(tbf on the tap; the tap's ingress redirected to an IFB device with the same tbf), then UDP is
offered at twice the cap each way and the receiver measures what got through. Namespaces, and
everything in them, are removed even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.vmnet import VMNetwork, ifb_name
from lab.probe import in_netns, udp_stream
from tests.conftest import require_backend

CAP_MBIT = 8
PAYLOAD = 1200
TOLERANCE = 0.15


@dataclass(frozen=True)
class End:
    netns: str
    address: str


@dataclass(frozen=True)
class Pair:
    node: End
    guest: End
    tap: str


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@pytest.fixture
def pair() -> Iterator[Pair]:
    require_backend(os.geteuid() == 0, "network namespaces need root")
    require_backend(shutil.which("tc") is not None, "tc (iproute2) not installed")
    tag = uuid.uuid4().hex[:8]
    node_ns, guest_ns = f"ncshape-n-{tag}", f"ncshape-g-{tag}"
    made: list[str] = []
    try:
        for ns in (node_ns, guest_ns):
            proc = _run("ip", "netns", "add", ns)
            require_backend(proc.returncode == 0, f"ip netns add: {proc.stderr.strip()}")
            made.append(ns)
        steps = [
            ("ip", "-n", node_ns, "link", "add", "tap0", "type", "veth", "peer", "eth0",
             "netns", guest_ns),
            ("ip", "-n", node_ns, "addr", "add", "10.77.0.1/24", "dev", "tap0"),
            ("ip", "-n", guest_ns, "addr", "add", "10.77.0.2/24", "dev", "eth0"),
            ("ip", "-n", node_ns, "link", "set", "tap0", "up"),
            ("ip", "-n", guest_ns, "link", "set", "eth0", "up"),
        ]  # fmt: skip
        for step in steps:
            proc = _run(*step)
            assert proc.returncode == 0, f"{' '.join(step)}: {proc.stderr}"
        yield Pair(End(node_ns, "10.77.0.1"), End(guest_ns, "10.77.0.2"), "tap0")
    finally:
        for ns in made:
            _run("ip", "netns", "del", ns)


def _mbit(src: End, dst: End) -> float:
    rate_pps = CAP_MBIT * 2 * 1e6 / 8 / (PAYLOAD + 28)  # offer twice the cap
    result = udp_stream(src, dst, count=int(rate_pps * 2.0), rate_pps=rate_pps, payload=PAYLOAD)
    return result.wire_mbit(PAYLOAD)


def test_the_cap_holds_to_and_from_the_vm(pair: Pair) -> None:
    before_to, before_from = _mbit(pair.node, pair.guest), _mbit(pair.guest, pair.node)
    assert min(before_to, before_from) > CAP_MBIT * 1.6  # unshaped, the offer gets through

    vm_id = str(uuid.uuid4())
    network = VMNetwork()
    in_netns(pair.node.netns, lambda: network.shape(pair.tap, CAP_MBIT, vm_id))
    in_netns(pair.node.netns, lambda: network.shape(pair.tap, CAP_MBIT, vm_id))  # idempotent

    to_vm, from_vm = _mbit(pair.node, pair.guest), _mbit(pair.guest, pair.node)
    assert abs(to_vm - CAP_MBIT) <= CAP_MBIT * TOLERANCE, f"to the VM: {to_vm:.1f} Mbit/s"
    assert abs(from_vm - CAP_MBIT) <= CAP_MBIT * TOLERANCE, f"from the VM: {from_vm:.1f} Mbit/s"

    ifb = ifb_name(vm_id)
    assert _run("ip", "-n", pair.node.netns, "link", "show", ifb).returncode == 0
    in_netns(pair.node.netns, lambda: network.unshape(vm_id))
    assert _run("ip", "-n", pair.node.netns, "link", "show", ifb).returncode != 0
