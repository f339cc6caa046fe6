"""The edge mesh on a fresh small lab (its own, so that no earlier test's load - a bandwidth
flood, a booting TCG guest - sits in the agents' latency windows): convergence, cross-site
reachability, measured latency against the WAN profile, key rotation, VM networking."""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import threading
import urllib.request

import pytest

from lab import probe
from lab.lab import Lab
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for

pytestmark = pytest.mark.lab


def test_agents_measured_rtt_to_the_controller_matches_the_wan(lab: Lab) -> None:
    """Issue #5: latency figures come from real probes. These cross the session itself (gRPC
    over TCP through the WAN router), so they are the WAN's RTT plus what two Python gRPC stacks
    add per round trip (~1 ms here): never less than the WAN, and not much more."""
    channel = lab.channel()
    api_stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
    site = lab.topology.site("mec-berlin")
    expected = probe.expected_rtt_ms(lab.topology.site("controller"), site)

    def stats() -> pb.LatencyStats | None:
        node = api_stub.GetNode(api.GetNodeRequest(node_id=site.id), timeout=5)
        return next((s for s in node.latencies if s.target == "controller"), None)

    try:
        wait_for(lambda: (s := stats()) is not None and s.samples >= 10, 30, "10 probes")
        # the baseline over the same WAN router at the same time: what the host's load adds to
        # every packet it forwards is in both, so only the stacks' own cost is left between them
        icmp = probe.ping(lab.topology.site("controller"), site, count=25, interval_s=0.04)
        measured = stats()
    finally:
        channel.close()
    assert measured is not None
    assert measured.p50_ms >= expected * 0.95  # a real probe cannot beat the configured WAN
    assert measured.p50_ms <= max(icmp.median_ms, expected) + STACK_OVERHEAD_MS
    assert measured.loss_pct == 0.0


STACK_OVERHEAD_MS = 3.0  # per round trip, for the agent's and the controller's gRPC stacks


def _node(lab: Lab, node_id: str) -> pb.Node:
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        return stub.GetNode(api.GetNodeRequest(node_id=node_id), timeout=5)


def _peer_latency(lab: Lab, source: str, target: str) -> pb.LatencyStats:
    node = _node(lab, source)
    return next(s for s in node.latencies if s.target == target)


def _window(lab: Lab, source: str, target: str) -> int:
    return next((s.samples for s in _node(lab, source).latencies if s.target == target), 0)


def _mesh_converged(lab: Lab) -> bool:
    sites = [s.id for s in lab.topology.sites]
    for site in sites:
        node = _node(lab, site)
        peers = {p.node_id: p for p in node.mesh.peers}
        if node.mesh.applied_version != node.mesh_version or node.mesh.error:
            return False
        if set(peers) != set(sites) - {site} or not all(p.up for p in peers.values()):
            return False
    return True


def test_the_mesh_converges_and_sites_reach_each_other_over_it(lab: Lab) -> None:
    """Issue #5: WireGuard managed by the agents, coordinated by the controller."""
    wait_for(lambda: _mesh_converged(lab), 60, "every site to apply its peer set and handshake")
    berlin, munich = _node(lab, "mec-berlin"), _node(lab, "iot-munich")
    assert berlin.mesh_address != munich.mesh_address
    assert berlin.mesh.public_key and berlin.mesh.public_key != munich.mesh.public_key
    metrics = urllib.request.urlopen(lab.metrics_url, timeout=5).read().decode()
    assert 'novacron_mesh_peer_up{node="mec-berlin",peer="iot-munich"} 1.0' in metrics
    assert 'novacron_mesh_converged{node="iot-munich"} 1.0' in metrics
    target = munich.mesh_address
    done = subprocess.run(
        lab.exec_argv("mec-berlin", ["ping", "-c", "3", "-i", "0.2", "-W", "2", target]),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


PING_TIME = re.compile(r"time=([\d.]+) ms")


def _start_ping(lab: Lab, site: str, address: str, count: int) -> subprocess.Popen[str]:
    """`ping` five times a second, one line per reply."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "3", address]
    return subprocess.Popen(lab.exec_argv(site, argv), stdout=subprocess.PIPE, text=True)


def _rtts(proc: subprocess.Popen[str], first: list[float]) -> list[float]:
    out, _ = proc.communicate(timeout=120)
    return first + [float(m.group(1)) for m in PING_TIME.finditer(out)]


def _first_reply(proc: subprocess.Popen[str]) -> list[float]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := PING_TIME.search(line):
            return [float(m.group(1))]
    pytest.fail(f"no ping reply: {proc.wait()}")


def test_peer_latency_is_measured_over_the_tunnel_and_matches_the_wan(lab: Lab) -> None:
    """Issue #5 item 4. The WAN router emulates the profile between the sites' addresses;
    the agents probe each other through the WireGuard tunnel on top, which costs a real ~0.5 ms
    per round trip here (wireguard-go, four crossings). So `ping`, over the same minute,
    checks both halves: over the underlay the emulator matches the profile, and over the
    tunnel the agent's p50 matches what ping sees. 300 pings each: Munich adds +-2 ms of
    jitter per end and direction (RTT sd 1.6 ms), so a median of 300 is within +-0.12 ms
    (1 sd) of the path's; the agent's window of 60 within +-0.26 ms."""
    wait_for(lambda: _mesh_converged(lab), 60, "the mesh")
    a, b = lab.topology.site("mec-berlin"), lab.topology.site("iot-munich")
    expected = probe.expected_rtt_ms(a, b)
    overlay_address = _node(lab, b.id).mesh_address
    underlay = _start_ping(lab, a.id, b.address, 300)
    first = _first_reply(underlay)  # the overlay ping starts ~13 ms later: never in step
    overlay = _start_ping(lab, a.id, overlay_address, 300)
    underlay_rtts, overlay_rtts = _rtts(underlay, first), _rtts(overlay, [])
    # The agent's rounds are randomly spaced around 1 s and slow down when these 2 cores are
    # busy, so its window may hold a few short of 60 after the pings' minute: let it fill.
    # The path is stationary, so a window a few seconds later still measures the same minute.
    wait_for(lambda: _window(lab, a.id, b.id) >= 55, 30, "the agent's window of probes")
    measured = _peer_latency(lab, a.id, b.id)
    wan, tunnel = statistics.median(underlay_rtts), statistics.median(overlay_rtts)
    print(
        f"\nRTT {a.id}->{b.id}: profile {expected:.2f} ms, ping underlay {wan:.2f}"
        f" (n {len(underlay_rtts)}), ping tunnel {tunnel:.2f} (n {len(overlay_rtts)}),"
        f" agent p50 {measured.p50_ms:.2f} jitter {measured.jitter_ms:.2f} n {measured.samples}"
    )
    assert len(underlay_rtts) >= 250 and len(overlay_rtts) >= 250  # 2 % loss each end
    assert wan == pytest.approx(expected, abs=max(1.0, 0.1 * expected))
    assert measured.p50_ms == pytest.approx(tunnel, abs=max(1.0, 0.1 * tunnel)), measured
    assert measured.p50_ms >= 0.95 * expected  # never below the physics of the path


def test_key_rotation_keeps_the_mesh(lab: Lab) -> None:
    wait_for(lambda: _mesh_converged(lab), 60, "the mesh")
    before = _node(lab, "iot-munich").mesh.public_key
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        rotated = stub.RotateMeshKey(api.GetNodeRequest(node_id="iot-munich"), timeout=30)
    assert rotated.mesh.public_key != before
    wait_for(lambda: _mesh_converged(lab), 30, "the peers to learn the new key")
    berlin = _node(lab, "mec-berlin")
    assert {p.public_key for p in berlin.mesh.peers} == {rotated.mesh.public_key}


def _vm_console(lab: Lab, name: str) -> str:
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        return stub.GetVMConsole(api.GetVMConsoleRequest(name_or_id=name), timeout=10).text


def test_vms_on_different_sites_reach_each_other_over_the_mesh(lab: Lab) -> None:
    """Issue #5 item 5: VM addresses are routed over the mesh (allowed IPs follow the VM)."""
    wait_for(lambda: _mesh_converged(lab), 60, "the mesh")
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        vms = {}
        try:
            # net-b first: net-a is told to ping net-b's address from inside the guest
            for name, site in (("net-b", "iot-munich"), ("net-a", "mec-berlin")):
                placement = pb.PlacementConstraints(required_labels={"site": site})
                spec = pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128)
                if name == "net-a":
                    spec.labels["novacron.io/ping"] = vms["net-b"].address.split("/")[0]
                if name == "net-a":
                    spec.bandwidth_mbps = 50  # tbf on its tap, and on an IFB for its egress
                spec.placement.CopyFrom(placement)
                vms[name] = stub.DeployVM(api.DeployVMRequest(spec=spec), timeout=120)
                assert vms[name].node_id == site
                assert vms[name].address
            wait_for(lambda: _mesh_converged(lab), 30, "every site to learn the VMs' routes")
            a_ip = vms["net-a"].address.split("/")[0]
            b_ip = vms["net-b"].address.split("/")[0]
            for name, ip in (("net-a", a_ip), ("net-b", b_ip)):
                wait_for(
                    lambda n=name, i=ip: f"net eth0 {i}" in _vm_console(lab, n),  # type: ignore[misc]
                    120,
                    f"{name} to configure its network",
                    interval_s=1.0,
                )
            # guest to guest: net-a (Berlin) reaches net-b (Munich) by IP, across the mesh
            wait_for(
                lambda: f"ping {b_ip} ok" in _vm_console(lab, "net-a"),
                60,
                "net-a's own pings to net-b to get answers",
                interval_s=1.0,
            )
            # and from Berlin's site (the VM's gateway) to the VM in Munich
            done = subprocess.run(
                lab.exec_argv("mec-berlin", ["ping", "-c", "3", "-W", "3", b_ip]),
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            qdiscs = subprocess.run(
                lab.exec_argv("mec-berlin", ["tc", "qdisc", "show"]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            shaped = [line for line in qdiscs.splitlines() if "tbf" in line and "dev vnet" in line]
            assert shaped and "rate 50Mbit" in shaped[0], qdiscs
            egress = [line for line in qdiscs.splitlines() if "tbf" in line and "dev ncq-" in line]
            assert egress and "rate 50Mbit" in egress[0], qdiscs
            berlin = _node(lab, "mec-berlin")
            munich_peer = next(p for p in berlin.mesh.peers if p.node_id == "iot-munich")
            assert munich_peer.up
        finally:
            for name in vms:
                stub.DeleteVM(api.DeleteVMRequest(name_or_id=name), timeout=60)
        links = subprocess.run(
            lab.exec_argv("mec-berlin", ["ip", "-o", "link", "show"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ncq-" not in links, "the deleted VM's IFB device was left behind"


def test_a_live_migrated_vm_keeps_its_address_and_the_route_follows_it(lab: Lab) -> None:
    """Issue #5 item 5: when a VM moves, its address moves with it. A tiny guest deployed on
    Munich (Berlin cordoned for the deploy) is live-migrated to Berlin over Munich's lossy
    20 Mbit/s link: before the move Munich routes its address to its own bridge, after it into
    the mesh, and Munich's site reaches the guest, now on Berlin, across the mesh.

    The guest gets no network traffic during this move: on this link (a ~60 s pre-copy through
    the 10 Mbit/s migration class with 2 % loss) a guest answering 5 pings a second came out
    with a broken virtio-net queue in 3 of 3 tries (QEMU 7.2, TCG), and one pinging every 2 s
    in 1 of 4; the same load on a clean 1 Gbit/s link never did (bench/migration.py moves a
    guest under pings). See docs/migration.md."""
    wait_for(lambda: _mesh_converged(lab), 60, "the mesh")
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        spec = pb.VMSpec(name="mover", image="tiny", vcpus=1, memory_mib=128)
        stub.CordonNode(api.CordonNodeRequest(node_id="mec-berlin", cordoned=True), timeout=10)
        try:
            vm = stub.DeployVM(api.DeployVMRequest(spec=spec), timeout=120)
        finally:
            stub.CordonNode(api.CordonNodeRequest(node_id="mec-berlin", cordoned=False), timeout=10)
        ip = vm.address.split("/")[0]
        try:
            assert vm.node_id == "iot-munich"
            wait_for(
                lambda: f"net eth0 {ip}" in _vm_console(lab, "mover"),
                120,
                "the guest to boot and configure its network",
                interval_s=1.0,
            )
            assert _site_pings(lab, "iot-munich", ip)
            assert _route_dev(lab, "iot-munich", ip) == "ncbr0"
            # one anycast gateway MAC everywhere: the guest's ARP entry survives the move
            macs = {_bridge_mac(lab, site) for site in ("iot-munich", "mec-berlin")}
            assert len(macs) == 1 and macs.pop().startswith("02:4e:")
            watched: list[api.Migration] = []
            watch = stub.WatchMigration(api.GetMigrationRequest(vm="mover"), timeout=300)
            watcher = threading.Thread(target=lambda: watched.extend(watch), daemon=True)
            watcher.start()  # subscribed before the request: it waits for the next migration
            moved = stub.MigrateVM(
                api.MigrateVMRequest(name_or_id="mover", target_node_id="mec-berlin"),
                timeout=300,
            )
            watcher.join(30)
            assert not watcher.is_alive(), "WatchMigration did not end with the migration"
            _assert_watched_in_order(watched, moved.migration.id)
            assert moved.vm.node_id == "mec-berlin" and moved.source_node_id == "iot-munich"
            assert moved.vm.address == vm.address
            assert moved.vm.state == pb.VM_STATE_RUNNING
            assert moved.elapsed_ms > 0 and moved.memory_bytes > 0
            # the route followed: Munich now sends the address into the mesh, Berlin to its bridge
            assert _route_dev(lab, "iot-munich", ip).startswith("ncwg-")
            assert _route_dev(lab, "mec-berlin", ip) == "ncbr0"
            wait_for(lambda: _mesh_converged(lab), 30, "the mesh after the move")
            wait_for(
                lambda: _site_pings(lab, "iot-munich", ip),
                30,
                "Munich's site to reach the guest on Berlin across the mesh",
                interval_s=1.0,
            )
            wait_for(  # the guest itself runs on: its console log goes on at the destination
                lambda: "heartbeat" in _vm_console(lab, "mover"),
                # 10 s heartbeats; once in ~8 runs none came within 30 s although the guest
                # answered pings on Berlin (cause not established; a 60 s pre-copy under TCG,
                # see docs/migration.md). A wedged guest still fails here.
                90,
                "a console line from the guest on Berlin",
                interval_s=1.0,
            )
        finally:
            stub.DeleteVM(api.DeleteVMRequest(name_or_id="mover"), timeout=60)
        print(
            f"migration: job {moved.elapsed_ms:.0f} ms, downtime {moved.downtime_ms:.0f} ms, "
            f"{moved.memory_bytes / 2**20:.1f} MiB, total {moved.total_ms:.0f} ms"
        )


def _assert_watched_in_order(watched: list[api.Migration], migration_id: str) -> None:
    """WatchMigration saw this migration's phases in order, with the source's job stats:
    bytes remaining fall to 0."""
    assert watched and {m.id for m in watched} == {migration_id}
    order = [
        api.MIGRATION_PHASE_PRE_CHECKS,
        api.MIGRATION_PHASE_SNAPSHOT,
        api.MIGRATION_PHASE_TRANSFER,
        api.MIGRATION_PHASE_SWITCHOVER,
        api.MIGRATION_PHASE_CLEANUP,
        api.MIGRATION_PHASE_SUCCEEDED,
    ]
    seen = [m.phase for m in watched]
    assert seen == sorted(seen, key=order.index), seen
    assert seen[-1] == api.MIGRATION_PHASE_SUCCEEDED
    assert api.MIGRATION_PHASE_TRANSFER in seen and api.MIGRATION_PHASE_SWITCHOVER in seen
    transfer = [m for m in watched if m.phase == api.MIGRATION_PHASE_TRANSFER]
    assert transfer[0].bytes_total > 0
    remaining = [m.bytes_remaining for m in transfer]
    assert remaining[0] > 0 and len(set(remaining)) > 1, remaining
    assert watched[-1].bytes_remaining == 0
    print(f"watched {len(watched)} updates; bytes remaining {remaining[0]} -> 0")


def _site_pings(lab: Lab, site: str, ip: str) -> bool:
    argv = lab.exec_argv(site, ["ping", "-n", "-c", "3", "-i", "0.3", "-W", "2", ip])
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _bridge_mac(lab: Lab, site: str) -> str:
    out = subprocess.run(
        lab.exec_argv(site, ["ip", "-j", "link", "show", "ncbr0"]),
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)[0]["address"])


def _route_dev(lab: Lab, site: str, ip: str) -> str:
    out = subprocess.run(
        lab.exec_argv(site, ["ip", "-o", "route", "get", ip]),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else ""


def test_a_live_migration_crosses_the_underlay_only_inside_wireguard(lab: Lab) -> None:
    """Issue 11 item 7: captured on the source site's uplink during a live migration, no
    packet of libvirtd (16509) or of QEMU's migration and disk streams (49152-49215) is in
    clear text; the migration is WireGuard (UDP 51820) there. And no site listens for
    migrations on its underlay address: the gateway listens on the mesh address only."""
    wait_for(lambda: _mesh_converged(lab), 60, "the mesh")
    source, target = "iot-munich", "mec-berlin"
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        spec = pb.VMSpec(name="sealed", image="tiny", vcpus=1, memory_mib=128)
        stub.CordonNode(api.CordonNodeRequest(node_id=target, cordoned=True), timeout=10)
        try:
            vm = stub.DeployVM(api.DeployVMRequest(spec=spec), timeout=120)
        finally:
            stub.CordonNode(api.CordonNodeRequest(node_id=target, cordoned=False), timeout=10)
        try:
            assert vm.node_id == source
            ip = vm.address.split("/")[0]
            wait_for(  # a booted guest dirties little memory: the pre-copy converges
                lambda: f"net eth0 {ip}" in _vm_console(lab, "sealed"),
                120,
                "the guest to boot",
                interval_s=1.0,
            )
            uplink = _route_dev(lab, source, lab.topology.site(target).address)
            clear = _capture(lab, source, uplink, "tcp port 16509 or tcp portrange 49152-49215")
            sealed = _capture(lab, source, uplink, "udp port 51820", count=300)
            try:
                moved = stub.MigrateVM(
                    api.MigrateVMRequest(
                        name_or_id="sealed", target_node_id=target, timeout_seconds=240
                    ),
                    timeout=300,
                )
            finally:
                clear_lines, sealed_lines = _stop(clear), _stop(sealed)
            assert moved.vm.node_id == target and moved.memory_bytes > 0
            assert clear_lines == [], clear_lines[:5]
            assert len(sealed_lines) == 300  # the guest's memory went through the tunnel
            for site in (source, target):
                listening = _listeners(lab, site)
                underlay = lab.topology.site(site).address
                assert not [a for a in listening if a.startswith((f"{underlay}:", "0.0.0.0:", "*:"))
                            and a.rsplit(":", 1)[1] == "16509"], listening  # fmt: skip
        finally:
            stub.DeleteVM(api.DeleteVMRequest(name_or_id=vm.spec.name), timeout=60)
    print(
        f"\nmigration over the mesh: {moved.memory_bytes / 2**20:.1f} MiB in "
        f"{moved.elapsed_ms:.0f} ms; {len(sealed_lines)} WireGuard packets on {source}'s "
        "uplink, 0 clear-text migration packets"
    )


def _capture(lab: Lab, site: str, ifname: str, bpf: str, count: int = 0) -> subprocess.Popen[str]:
    """tcpdump on `ifname` in `site`, once it is armed; `count`: exit after that many."""
    argv = ["tcpdump", "-i", ifname, "-nn", "-q", "-l", "--immediate-mode"]
    argv += [*(["-c", str(count)] if count else []), bpf]
    proc = subprocess.Popen(
        lab.exec_argv(site, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # "listening on ...": the capture is armed
        if "listening on" in line:
            return proc
    pytest.fail(f"tcpdump did not start: {proc.wait()}")


def _stop(proc: subprocess.Popen[str]) -> list[str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # our own tcpdump, by its pid
    out, _ = proc.communicate(timeout=30)
    return [line for line in out.splitlines() if line.strip()]


def _listeners(lab: Lab, site: str) -> list[str]:
    out = subprocess.run(
        lab.exec_argv(site, ["ss", "-ltnH"]), capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]
