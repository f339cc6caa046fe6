"""`fail`, `partition` and `restore` on a real small lab, each checked by witnesses of its own:
pids and /proc, ping and a TCP stream between the sites, the controller's view of the node."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import libvirt
import pytest

from lab import netns, pids, probe
from lab.faults import FAILED, PARTITIONED, UP
from lab.lab import Lab, LabError
from lab.processes import BIN
from lab.state import LabState
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb
from tests.conftest import wait_for
from tests.system.test_lab_teardown import assert_nothing_left

pytestmark = pytest.mark.lab

TARGET, WITNESS = "mec-berlin", "iot-munich"
# a guest that only has to exist: paused, no disk, so it costs the 2-core host nothing
GUEST_XML = """<domain type='qemu'><name>fault-witness</name><memory unit='MiB'>32</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices/></domain>"""


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _in_netns(name: str) -> list[int]:
    """Pids whose network namespace is `name`, from /proc (not from the lab's own helper)."""
    there = os.stat(netns.netns_path(name))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                here = os.stat(entry / "ns" / "net")
            except OSError:
                continue
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                found.append(int(entry.name))
    return found


def _agent_pid(lab: Lab, site: str) -> int:
    state = LabState.load(lab.state_dir)
    assert state is not None
    return [p.pid for p in state.processes if p.name == f"agent-{site}"][-1]


def _libvirtd_pid(lab: Lab, site: str) -> int:
    return int(lab.libvirtd(site).pid_file.read_text())


def _condition(lab: Lab, site: str) -> int:
    with lab.channel() as channel:
        stub = edge_api_pb2_grpc.EdgeAPIStub(channel)
        nodes = stub.ListNodes(api.ListNodesRequest(), timeout=5).nodes
    return next(n.condition for n in nodes if n.info.node_id == site)


def _received(lab: Lab, src: str, dst: str) -> int:
    return probe.ping(
        lab.topology.site(src), lab.topology.site(dst), count=5, interval_s=0.2
    ).received


def _lab_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "novacron-lab"), "--state-dir", str(lab.state_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_partition_cuts_the_link_and_restore_heals_it_with_the_same_processes(lab: Lab) -> None:
    target, witness = lab.topology.site(TARGET), lab.topology.site(WITNESS)
    agent, libvirtd = _agent_pid(lab, TARGET), _libvirtd_pid(lab, TARGET)
    server = probe.netns_socket(target.netns, socket.SOCK_STREAM)
    client = probe.netns_socket(witness.netns, socket.SOCK_STREAM)
    try:
        server.bind((target.address, 0))
        server.listen(1)
        client.settimeout(10)
        client.connect(server.getsockname())
        stream, _ = server.accept()
        stream.settimeout(10)
        client.sendall(b"before")
        assert stream.recv(16) == b"before"
        try:
            assert "partitioned" in lab.partition(TARGET)
            assert lab.condition(TARGET) == PARTITIONED
            assert "already partitioned" in lab.partition(TARGET)
            client.sendall(b"during")
            stream.settimeout(1.5)
            with pytest.raises(TimeoutError):
                stream.recv(16)  # the established stream is cut
            assert _received(lab, WITNESS, TARGET) == 0
            wait_for(lambda: _condition(lab, TARGET) != pb.NODE_CONDITION_READY, 30, "suspect", 0.2)
            assert pids.alive(agent) and pids.alive(libvirtd)  # nothing was killed
        finally:
            lab.restore(TARGET, wait_ready=False)
        stream.settimeout(30)  # TCP retransmits what waited, on its own backoff
        assert stream.recv(16) == b"during"
        wait_for(lambda: _condition(lab, TARGET) == pb.NODE_CONDITION_READY, 60, "READY again", 0.2)
        assert (_agent_pid(lab, TARGET), _libvirtd_pid(lab, TARGET)) == (agent, libvirtd)
        assert lab.condition(TARGET) == UP
    finally:
        client.close()
        server.close()


def test_fail_kills_the_site_and_restore_brings_it_back_as_the_same_node(lab: Lab) -> None:
    target = lab.topology.site(TARGET)
    conn = libvirt.open(lab.libvirt_uri(TARGET))
    try:
        conn.createXML(GUEST_XML, libvirt.VIR_DOMAIN_START_PAUSED)
    finally:
        conn.close()
    qemu = int((lab.libvirtd(TARGET).dir("run") / "qemu" / "fault-witness.pid").read_text())
    victims = {"agent": _agent_pid(lab, TARGET), "libvirtd": _libvirtd_pid(lab, TARGET)}
    victims["qemu"] = qemu
    assert qemu in _in_netns(target.netns) and all(map(_exists, victims.values()))
    try:
        assert "SIGKILLed" in lab.fail(TARGET)
        wait_for(lambda: not any(map(_exists, victims.values())), 15, f"{victims} to be gone")
        wait_for(lambda: not _in_netns(target.netns), 15, f"no process left in {target.netns}")
        assert _received(lab, WITNESS, TARGET) == 0
        status = _lab_cli(lab, "status")
        assert re.search(rf"^{TARGET}\s.*\s{FAILED}\s", status.stdout, re.M), status.stdout
        again = _lab_cli(lab, "fail", TARGET)
        assert again.returncode == 0 and "already failed" in again.stdout, again
        unknown = _lab_cli(lab, "fail", "nowhere")
        assert unknown.returncode == 1 and f"{TARGET}, {WITNESS}" in unknown.stderr, unknown
        with pytest.raises(LabError, match="restore"):
            lab.partition(TARGET)
        wait_for(lambda: _condition(lab, TARGET) != pb.NODE_CONDITION_READY, 30, "suspect", 0.2)
    finally:
        lab.restore(TARGET, wait_ready=False)
    wait_for(lambda: _condition(lab, TARGET) == pb.NODE_CONDITION_READY, 60, "READY again", 0.2)
    assert _agent_pid(lab, TARGET) != victims["agent"] and _exists(_agent_pid(lab, TARGET))
    conn = libvirt.open(lab.libvirt_uri(TARGET))
    try:
        assert [d.name() for d in conn.listAllDomains(0)] == []  # guests stay dead
    finally:
        conn.close()
    assert _received(lab, WITNESS, TARGET) > 0
    assert lab.condition(TARGET) == UP


def test_down_after_a_fail_and_a_partition_leaves_nothing(lab: Lab) -> None:
    """Last in the module: it takes the module's lab down (the fixture's own down is then a
    no-op)."""
    lab.partition(TARGET)
    lab.fail(WITNESS)
    state = LabState.load(lab.state_dir)
    assert state is not None and state.conditions == {TARGET: PARTITIONED, WITNESS: FAILED}
    recorded = [(p.pid, p.start_time) for p in state.processes]
    lab.down()
    assert_nothing_left(lab.state_dir, recorded)
    with pytest.raises(LabError, match="no lab"):
        lab.restore(TARGET)
