"""The small lab against the real thing: registration, WAN latency/loss/bandwidth, a real guest."""

from __future__ import annotations

import re
import subprocess
import uuid

import libvirt
import pytest

from lab import probe
from lab.lab import Lab
from lab.processes import BIN
from lab.view import fetch
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for

pytestmark = pytest.mark.lab


def test_sites_register_ready_with_their_location_and_capacity(lab: Lab) -> None:
    nodes, _ = fetch(lab.controller_address, lab.client_dir)
    by_id = {n.node_id: n for n in nodes}
    for site in lab.topology.sites:
        node = by_id[site.id]
        assert node.condition == "ready"
        assert node.edge_type == site.edge_type.value
        assert node.country == site.country
        assert (node.latitude, node.longitude) == pytest.approx((site.latitude, site.longitude))
        assert node.vcpus == site.capacity.vcpus
        assert node.memory_mib == site.capacity.memory_mib
        assert node.labels["site"] == site.id


def test_agents_talk_to_the_controller_across_the_wan(lab: Lab) -> None:
    def crossed() -> bool:
        links = lab.status().wan_stats.get("links", {})
        assert isinstance(links, dict)
        return all(
            links.get(f"{s.id}>controller", {}).get("forwarded", 0) > 0 for s in lab.topology.sites
        )

    wait_for(crossed, 10, "agent traffic in the WAN router's counters")


@pytest.mark.parametrize(("a", "b"), [("controller", "mec-berlin"), ("mec-berlin", "iot-munich")])
def test_ping_rtt_is_as_configured(lab: Lab, a: str, b: str) -> None:
    src, dst = lab.topology.site(a), lab.topology.site(b)
    expected = probe.expected_rtt_ms(src, dst)
    result = probe.ping(src, dst, count=50, interval_s=0.04)
    assert result.received >= 40
    # The median, not the mean: on a loaded host a few replies the userspace WAN router was late
    # to forward pull the mean up by a millisecond or more. Late, never early: the bound above
    # allows a busy router's lateness (1.2 ms seen in CI right after the lab came up), the one
    # below does not; both still catch a delay not applied (~0.5 ms) or applied twice.
    tolerance = max(1.0, 0.1 * expected)
    assert expected - tolerance <= result.median_ms <= expected + 2 * tolerance
    jitter = 2 * (src.wan.jitter_ms + dst.wan.jitter_ms)  # both ends' jitter, both directions
    assert result.min_ms >= expected - jitter - 0.2  # the router is never early


def test_loss_is_as_configured(lab: Lab) -> None:
    src, dst = lab.topology.site("mec-berlin"), lab.topology.site("iot-munich")
    n, p = 5000, probe.expected_loss_pct(src, dst) / 100
    assert p == pytest.approx(0.02)
    result = probe.udp_loss(src, dst, count=n, rate_pps=2000)
    six_sigma = 6 * (n * p * (1 - p)) ** 0.5  # binomial: a false alarm about once in 10^9 runs
    assert abs((n - result.received) - n * p) <= six_sigma, result
    clean = probe.udp_loss(lab.topology.controller, src, count=2000, rate_pps=2000)
    assert clean.loss_pct <= 0.2


def test_bandwidth_cap_is_honoured(lab: Lab) -> None:
    src, dst = lab.topology.site("mec-berlin"), lab.topology.site("iot-munich")
    cap = probe.expected_bandwidth_mbit(src, dst)
    assert cap == 20.0
    measured = probe.udp_bandwidth(src, dst, seconds=3.0, offered_factor=2.0)
    assert 0.9 * cap <= measured <= 1.05 * cap


def test_a_vm_boots_on_one_site_and_is_invisible_to_the_other(lab: Lab) -> None:
    name = f"sys-{uuid.uuid4().hex[:6]}"
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
        vm = stub.DeployVM(
            api.DeployVMRequest(spec=spec, request_id=name, timeout_seconds=90), timeout=120
        )
        try:
            assert vm.state == pb.VM_STATE_RUNNING
            assert vm.node_id in {s.id for s in lab.topology.sites}
            console = ""

            def booted() -> bool:
                nonlocal console
                reply = stub.GetVMConsole(api.GetVMConsoleRequest(name_or_id=name), timeout=10)
                console = reply.text
                return "NovaCron guest" in console

            wait_for(booted, 120, f"{name} to print its first console line", interval_s=0.5)
            for site in lab.topology.sites:
                conn = libvirt.open(lab.libvirt_uri(site.id))
                try:
                    names = [d.name() for d in conn.listAllDomains(0)]
                finally:
                    conn.close()
                here = any(name in n for n in names)
                assert here == (site.id == vm.node_id), (site.id, names)
        finally:
            stub.DeleteVM(api.DeleteVMRequest(name_or_id=name), timeout=60)


def test_cli_status_exec_and_the_operator_cli_from_the_host(lab: Lab) -> None:
    lab_cli = [str(BIN / "novacron-lab"), "--state-dir", str(lab.state_dir)]
    status = subprocess.run([*lab_cli, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    for site in lab.topology.sites:
        assert re.search(rf"^{site.id}\s.*\sready\s", status.stdout, re.M), status.stdout
    virsh = subprocess.run(
        [*lab_cli, "exec", "mec-berlin", "--", "virsh", "uri"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert virsh.returncode == 0 and "qemu:///system" in virsh.stdout, virsh.stderr
    nodes = subprocess.run(
        [str(BIN / "novacron"), "--controller", lab.controller_address, "node", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        env=lab.cli_env(),
    )
    assert nodes.returncode == 0 and "mec-berlin" in nodes.stdout, nodes.stderr


def test_uplink_qos_caps_migration_traffic_and_keeps_control_first(lab: Lab) -> None:
    """Issue #5 item 6: htb classes on each site's uplink (agent/qos.py)."""
    munich, berlin = lab.topology.site("iot-munich"), lab.topology.site("mec-berlin")
    shown = subprocess.run(
        lab.exec_argv(munich.id, ["tc", "class", "show", "dev", _uplink(lab, munich.id)]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "class htb 1:10" in shown and "prio 0" in shown
    assert "class htb 1:30" in shown
    cap = munich.wan.bandwidth_mbit / 2  # what the lab configures for migration
    migration = probe.udp_bandwidth(munich, berlin, seconds=2.0, port=49160, cap_mbit=cap)
    assert 0.8 * cap <= migration <= 1.1 * cap, migration


def _uplink(lab: Lab, site: str) -> str:
    route = subprocess.run(
        lab.exec_argv(site, ["ip", "-o", "route", "get", lab.topology.controller.address]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return route[route.index("dev") + 1]
