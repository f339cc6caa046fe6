"""The agent's /metrics over libvirt's test driver (test:///default, which runs a foreign
domain of its own next to ours), scraped over HTTP and linted by promtool; libvirt's
bulk-stats records of a QEMU guest converted to base units; and the parts that fail."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.domain_stats import sample
from agent.hypervisor.base import BootMedia
from agent.hypervisor.domain_xml import VMMetadata
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.metrics import AgentMetricsServer, serve_metrics
from lab.processes import wait_until
from shared.domain import LatencyStats, VMSpec, VMState
from shared.errors import ConfigError
from tests.metrics_check import promtool_check, samples, scrape, value
from tests.unit.metrics_fixtures import agent_text

VM_ID = "0f8a3c52-5a4e-4a7e-9d0b-4c61f3a2b9e1"


@pytest.fixture
def hypervisor(tmp_path: Path) -> Iterator[LibvirtHypervisor]:
    hv = LibvirtHypervisor("test:///default")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    spec = VMSpec(name="metrics-vm", image="tiny", vcpus=1, memory_mib=64)
    hv.create(VM_ID, spec, 1, BootMedia(str(kernel), str(initrd)), str(tmp_path / "console"))
    try:
        yield hv
    finally:
        if not hv.problem():
            hv.delete(VM_ID)  # test:///default is shared by the whole process
        hv.close()


@pytest.fixture
def server() -> Iterator[AgentMetricsServer]:
    s = AgentMetricsServer("edge-1", "127.0.0.1:0")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on its own thread, as the agent's (the scrape runs on another)."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, daemon=True)
    thread.start()
    try:
        yield lp
    finally:
        lp.call_soon_threadsafe(lp.stop)
        thread.join(timeout=10)
        lp.close()


def test_vms_and_process_from_the_test_driver(
    hypervisor: LibvirtHypervisor, server: AgentMetricsServer
) -> None:
    server.collector.hypervisor = hypervisor
    text = scrape(server.port)
    promtool_check(text)
    assert value(text, "novacron_agent_libvirt_up") == 1.0
    # ours only: the driver's own running domain "test" has no NovaCron metadata
    assert value(text, "novacron_agent_vms", state="running") == 1.0
    assert value(text, "novacron_agent_vms", state="paused") == 0.0
    assert value(text, "novacron_agent_info", node="edge-1") == 1.0
    assert (value(text, "process_resident_memory_bytes") or 0) > 0
    assert (value(text, "process_open_fds") or 0) > 0
    assert "process_cpu_seconds_total" in samples(text)
    # the test driver reports no CPU time: absent, never a made-up 0
    assert "novacron_vm_cpu_seconds_total" not in samples(text)

    hypervisor.suspend(VM_ID)
    text = scrape(server.port)
    assert value(text, "novacron_agent_vms", state="paused") == 1.0
    assert value(text, "novacron_agent_vms", state="running") == 0.0


def test_libvirt_away_still_answers(
    hypervisor: LibvirtHypervisor, server: AgentMetricsServer
) -> None:
    server.collector.hypervisor = hypervisor
    hypervisor.close()
    text = scrape(server.port)
    promtool_check(text)
    assert value(text, "novacron_agent_libvirt_up") == 0.0
    assert "novacron_agent_vms" not in samples(text)
    assert "process_cpu_seconds_total" in samples(text)


def test_rtt_read_on_the_event_loop_in_base_units(
    server: AgentMetricsServer, loop: asyncio.AbstractEventLoop
) -> None:
    on_loop: list[bool] = []

    def latencies() -> list[LatencyStats]:
        on_loop.append(threading.current_thread() is not threading.main_thread())
        return [LatencyStats("controller", 12.0, 20.0, 31.0, 1.5, 5.0, 60)]

    server.collector.latencies, server.collector.loop = latencies, loop
    text = scrape(server.port)
    promtool_check(text)
    assert on_loop == [True]
    got = value(text, "novacron_agent_rtt_seconds", target="controller", percentile="95")
    assert got == pytest.approx(0.020)
    assert value(text, "novacron_agent_rtt_jitter_seconds", target="controller") == 0.0015
    assert value(text, "novacron_agent_probe_loss_ratio", target="controller") == 0.05


def test_a_stuck_event_loop_leaves_rtt_out_and_counts_it(server: AgentMetricsServer) -> None:
    stuck = asyncio.new_event_loop()  # never run: nothing answers
    try:
        server.collector.latencies = list
        server.collector.loop = stuck
        text = scrape(server.port)
    finally:
        stuck.close()
    assert "novacron_agent_rtt_seconds" not in samples(text)
    assert value(text, "novacron_agent_scrape_errors_total", part="latency") == 1.0
    assert value(text, "novacron_agent_scrape_errors_total", part="libvirt") == 0.0


def test_a_qemu_record_in_base_units() -> None:
    """The keys and units libvirt's qemu driver uses (cpu.time ns, balloon KiB)."""
    record = {
        "state.state": 1,
        "state.reason": 1,
        "cpu.time": 2_500_000_000,
        "cpu.user": 1_000_000_000,
        "balloon.current": 131072,
        "balloon.maximum": 131072,
        "balloon.rss": 65536,
        "net.count": 1,
        "net.0.name": "vnet3",
        "net.0.rx.bytes": 4096,
        "net.0.rx.pkts": 8,
        "net.0.tx.bytes": 1024,
        "net.0.tx.pkts": 4,
        "net.0.tx.drop": 0,
    }
    s = sample(VMMetadata(VM_ID, "web-1", 3, "tiny"), record)
    assert s.state is VMState.RUNNING and s.cpu_seconds == 2.5
    assert s.memory == {
        "memory_bytes": 128 * 1024 * 1024,
        "memory_max_bytes": 128 * 1024 * 1024,
        "memory_rss_bytes": 64 * 1024 * 1024,
    }
    (nic,) = s.interfaces
    assert nic.name == "vnet3"
    assert nic.counters["receive_bytes"] == 4096 and nic.counters["transmit_packets"] == 4
    assert "receive_errors" not in nic.counters  # not reported: not invented


def test_metrics_listen_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"agent\.metrics_listen: 'nonsense' is not HOST:PORT"):
        AgentConfig(node_id="n1", metrics_listen="nonsense")
    with pytest.raises(ConfigError, match=r"agent\.metrics_listen: '127.0.0.1:99999'"):
        AgentConfig(node_id="n1", metrics_listen="127.0.0.1:99999")
    assert serve_metrics("n1", "") is None  # "" = off


def test_a_port_in_use_is_a_clear_error(server: AgentMetricsServer) -> None:
    with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{server.port}"):
        serve_metrics("n1", f"127.0.0.1:{server.port}")


def test_mesh_links_and_a_full_qemu_record_in_one_scrape() -> None:
    text = agent_text()  # a stand-in libvirt answering as the qemu driver; a mesh with a peer
    promtool_check(text)
    assert value(text, "novacron_agent_mesh_peer_up", peer="edge-b") == 1.0
    assert value(text, "novacron_agent_mesh_peer_handshake_age_seconds", peer="edge-b") == 3.0
    assert value(text, "novacron_agent_mesh_peer_receive_bytes_total", peer="edge-b") == 100.0
    assert value(text, "novacron_agent_mesh_applied_version") == 4.0
    assert value(text, "novacron_vm_cpu_seconds_total", vm="web-1") == 2.5
    assert value(text, "novacron_vm_memory_usable_bytes", vm="web-1") == 100000 * 1024
    nic = {"vm": "web-1", "interface": "vnet3"}
    assert value(text, "novacron_vm_network_transmit_drops_total", **nic) == 10.0
    assert value(text, "novacron_agent_rtt_seconds", target="edge-b", percentile="99") == 0.025


class Wedged:
    """A libvirtd that answers nothing until released (SIGSTOPped, say)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def problem(self) -> str:
        return ""  # its connection looks alive: keepalive has not given up yet

    def domain_stats(self, stats: int) -> list[tuple[VMMetadata, dict[str, Any]]]:
        self.calls += 1
        self.release.wait(60)
        return []


def test_a_wedged_libvirtd_does_not_hang_the_scrape(server: AgentMetricsServer) -> None:
    wedged = Wedged()
    server.collector.hypervisor = wedged
    server.collector.libvirt_timeout_s = 0.2
    try:
        first = scrape(server.port)
        assert value(first, "novacron_agent_libvirt_up") == 0.0
        assert "process_cpu_seconds_total" in samples(first)
        second = scrape(server.port)  # still stuck: not asked again
        assert value(second, "novacron_agent_libvirt_up") == 0.0
        assert value(second, "novacron_agent_scrape_errors_total", part="libvirt") == 2.0
        assert wedged.calls == 1
    finally:
        wedged.release.set()

    def answered() -> bool:
        return value(scrape(server.port), "novacron_agent_libvirt_up") == 1.0

    wait_until(answered, 10, "libvirt read again once it answers")
    assert wedged.calls >= 2
