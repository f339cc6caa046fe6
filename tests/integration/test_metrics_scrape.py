"""Both daemons' /metrics scraped for real with a QEMU guest running, and linted by
`promtool check metrics`: the agent's per-VM figures come from libvirt's bulk domain stats on
a real libvirtd, the controller's from the fleet it sees and the decisions it took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from agent.metrics import AgentMetricsServer
from lab.libvirtd import PrivateLibvirtd
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, RunningAgent, eventually
from tests.metrics_check import promtool_check, samples, scrape, value

pytestmark = pytest.mark.qemu

NODE = "edge-metrics"
TAP = "ncmetrics0"
NIC_XML = f"<interface type='ethernet'><target dev='{TAP}'/><model type='virtio'/></interface>"


@pytest.fixture
async def agent(
    cluster: Cluster, private_libvirtd: PrivateLibvirtd, tiny_image_dir: Path
) -> RunningAgent:
    return await cluster.start_agent(NODE, private_libvirtd.uri, tiny_image_dir)


@pytest.fixture
async def agent_metrics(agent: RunningAgent) -> AsyncIterator[AgentMetricsServer]:
    server = AgentMetricsServer(NODE, "127.0.0.1:0")  # as agent/main.py wires it
    server.attach(agent.hypervisor, None, agent.session.latencies)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def plug_nic(uri: str, vm_id: str) -> None:
    conn = libvirt.open(uri)
    try:
        conn.lookupByUUIDString(vm_id).attachDeviceFlags(NIC_XML, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        conn.close()


async def test_both_daemons_metrics_with_a_real_guest(
    cluster: Cluster,
    agent: RunningAgent,
    agent_metrics: AgentMetricsServer,
    private_libvirtd: PrivateLibvirtd,
) -> None:
    vm = await cluster.api.DeployVM(
        epb.DeployVMRequest(spec=pb.VMSpec(name="metrics-1", image="tiny", vcpus=1, memory_mib=128))
    )
    try:
        text = ""

        async def agent_reports() -> bool:
            nonlocal text
            text = await asyncio.to_thread(scrape, agent_metrics.port)
            cpu = value(text, "novacron_vm_cpu_seconds_total", vm="metrics-1")
            rtt = value(text, "novacron_agent_rtt_seconds", target="controller", percentile="95")
            return cpu is not None and cpu > 0 and rtt is not None

        await eventually(agent_reports, 60, "the guest's CPU time and the RTT", interval=0.5)
        promtool_check(text)
        assert value(text, "novacron_agent_libvirt_up") == 1.0
        assert value(text, "novacron_agent_vms", state="running") == 1.0
        assert value(text, "novacron_vm_memory_max_bytes", vm="metrics-1", vm_id=vm.id) == (
            128 * 2**20
        )
        assert (value(text, "novacron_vm_memory_rss_bytes", vm="metrics-1") or 0) > 0
        assert (value(text, "process_resident_memory_bytes") or 0) > 0
        first_cpu = value(text, "novacron_vm_cpu_seconds_total", vm="metrics-1") or 0.0

        async def cpu_grows() -> bool:
            later = await asyncio.to_thread(scrape, agent_metrics.port)
            return (value(later, "novacron_vm_cpu_seconds_total", vm="metrics-1") or 0) > first_cpu

        await eventually(cpu_grows, 30, "the guest's CPU counter to grow", interval=0.5)

        # a NIC (a tap without addresses: no traffic leaves), for libvirt's interface stats
        await asyncio.to_thread(plug_nic, private_libvirtd.uri, vm.id)

        async def nic_counted() -> bool:
            later = await asyncio.to_thread(scrape, agent_metrics.port)
            rx = value(later, "novacron_vm_network_receive_bytes_total", vm="metrics-1")
            tx = value(later, "novacron_vm_network_transmit_packets_total", vm="metrics-1")
            return rx is not None and tx is not None

        await eventually(nic_counted, 30, "the NIC's counters", interval=0.5)
        nic = samples(await asyncio.to_thread(scrape, agent_metrics.port))
        (labels, _), *_ = nic["novacron_vm_network_receive_bytes_total"]
        assert labels["interface"] == TAP

        assert cluster.server is not None and cluster.server.metrics is not None
        controller = await asyncio.to_thread(scrape, cluster.server.metrics.port)
        promtool_check(controller)
        assert value(controller, "novacron_nodes", condition="ready") == 1.0
        assert value(controller, "novacron_vms", state="running") == 1.0
        assert (value(controller, "novacron_node_heartbeat_age_seconds", node=NODE) or -1) >= 0
        assert value(controller, "novacron_agent_streams") == 1.0
        assert (value(controller, "novacron_placement_decision_seconds_count") or 0) >= 1
        assert "novacron_rtt_seconds" in samples(controller)
    finally:
        await cluster.api.DeleteVM(epb.DeleteVMRequest(name_or_id="metrics-1"))

    async def gone() -> bool:
        after = await asyncio.to_thread(scrape, agent_metrics.port)
        return value(after, "novacron_vm_cpu_seconds_total", vm="metrics-1") is None

    await eventually(gone, 30, "the deleted VM's series to go")
