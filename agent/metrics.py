"""The agent's Prometheus /metrics, read at scrape time in the scrape thread: its own process,
its VMs (libvirt's bulk domain stats, on the agent's own libvirt connection), the latency it
measures to the controller and its mesh peers, and the mesh's links.

Nothing is counted on the agent's hot paths. A part that cannot be read (libvirtd away, the
event loop busy) is left out of that scrape and counted in
novacron_agent_scrape_errors_total{part}; the rest is still answered.
"""

from __future__ import annotations

import asyncio
import platform
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.domain_stats import MEMORY_GAUGES, NET_COUNTERS, DomainSample, StatsSource, read_all
from agent.mesh import MeshManager
from shared.domain import LatencyStats, VMState
from shared.errors import ConfigError, NovaCronError

log = structlog.get_logger(__name__)

PERCENTILES = (("50", "p50_ms"), ("95", "p95_ms"), ("99", "p99_ms"))
LOOP_TIMEOUT_S = 2.0  # how long a scrape waits for the event loop's latency windows
LIBVIRT_TIMEOUT_S = 3.0  # ... and for libvirt's domain stats
T = TypeVar("T")
PARTS = ("libvirt", "latency", "mesh")


class Hypervisor(StatsSource, Protocol):
    """What the collector needs of the agent's LibvirtHypervisor."""

    def problem(self) -> str: ...


class AgentCollector(Collector):
    """The sources are attached as the agent starts them (libvirt may come up late)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.hypervisor: Hypervisor | None = None
        self.mesh: MeshManager | None = None
        # the latency windows belong to the event loop: read them there
        self.latencies: Callable[[], list[LatencyStats]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.libvirt_timeout_s = LIBVIRT_TIMEOUT_S
        self._errors = dict.fromkeys(PARTS, 0)
        self._lock = threading.Lock()
        self._reading: Future[list[DomainSample]] | None = None

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "novacron_agent_info", "This agent (always 1)", labels=["node", "version", "arch"]
        )
        info.add_metric([self.node_id, __version__, platform.machine()], 1)
        yield info
        yield from self._libvirt()
        yield from self._rtt()
        yield from self._mesh()
        errors = CounterMetricFamily(
            "novacron_agent_scrape_errors",
            "Scrapes that could not read a part (libvirt, latency, mesh)",
            labels=["part"],
        )
        with self._lock:
            for part, count in self._errors.items():
                errors.add_metric([part], count)
        yield errors

    def _failed(self, part: str, error: Exception) -> None:
        with self._lock:
            self._errors[part] += 1
        log.debug("metrics part not read", part=part, error=str(error))

    # -- VMs -------------------------------------------------------------------------------

    def _libvirt(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "novacron_agent_libvirt_up", "1 if the agent's libvirt connection works"
        )
        hv = self.hypervisor
        samples = self._read_vms(hv) if hv is not None and not hv.problem() else None
        up.add_metric([], float(samples is not None))
        yield up
        if samples is None:
            return
        counts = dict.fromkeys((s.value for s in VMState), 0)
        for s in samples:
            counts[s.state.value] += 1
        by_state = GaugeMetricFamily(
            "novacron_agent_vms", "This node's VMs by state (libvirt's view)", labels=["state"]
        )
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        yield from vm_metrics(samples)

    def _read_vms(self, hv: Hypervisor) -> list[DomainSample] | None:
        """libvirt's stats, waited for at most `libvirt_timeout_s`: a wedged libvirtd (until
        its keepalive gives up, ~15 s) must not hang the scrape. One read at a time; while
        one is stuck, scrapes answer without it."""
        with self._lock:
            if self._reading is not None and not self._reading.done():
                self._errors["libvirt"] += 1
                return None
            reading: Future[list[DomainSample]] = Future()
            self._reading = reading
        threading.Thread(
            target=_fill, args=(reading, read_all, hv), name="metrics-libvirt", daemon=True
        ).start()
        try:
            return reading.result(self.libvirt_timeout_s)
        except Exception as exc:  # NovaCronError from libvirt, or the wait timed out
            self._failed("libvirt", exc)
            return None

    # -- latency ---------------------------------------------------------------------------

    def _rtt(self) -> Iterator[Metric]:
        stats = self._read_latencies()
        rtt = GaugeMetricFamily(
            "novacron_agent_rtt_seconds",
            "Round-trip time to the controller or a mesh peer, over the last probe window",
            labels=["target", "percentile"],
        )
        jitter = GaugeMetricFamily(
            "novacron_agent_rtt_jitter_seconds",
            "Mean difference of consecutive RTTs",
            labels=["target"],
        )
        loss = GaugeMetricFamily(
            "novacron_agent_probe_loss_ratio", "Share of probes lost", labels=["target"]
        )
        samples = GaugeMetricFamily(
            "novacron_agent_probe_window_samples", "Probes in the window", labels=["target"]
        )
        for s in stats:
            for percentile, field in PERCENTILES:
                rtt.add_metric([s.target, percentile], getattr(s, field) / 1000)
            jitter.add_metric([s.target], s.jitter_ms / 1000)
            loss.add_metric([s.target], s.loss_pct / 100)
            samples.add_metric([s.target], s.samples)
        yield from (rtt, jitter, loss, samples)

    def _read_latencies(self) -> list[LatencyStats]:
        read, loop = self.latencies, self.loop
        if read is None or loop is None or loop.is_closed():
            return []

        done: Future[list[LatencyStats]] = Future()
        try:
            loop.call_soon_threadsafe(_fill, done, read)
            return done.result(LOOP_TIMEOUT_S)
        except Exception as exc:  # the loop stopped or is stuck: RTT left out, counted
            done.cancel()
            self._failed("latency", exc)
            return []

    # -- mesh ------------------------------------------------------------------------------

    def _mesh(self) -> Iterator[Metric]:
        if self.mesh is None:
            return
        try:
            status = self.mesh.peek()
        except NovaCronError as exc:
            self._failed("mesh", exc)
            return
        version = GaugeMetricFamily(
            "novacron_agent_mesh_applied_version", "The peer-set version this node applied"
        )
        version.add_metric([], status.applied_version)
        up = GaugeMetricFamily(
            "novacron_agent_mesh_peer_up", "1 if the peer handshook within 180 s", labels=["peer"]
        )
        age = GaugeMetricFamily(
            "novacron_agent_mesh_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake (-1: never)",
            labels=["peer"],
        )
        rx = CounterMetricFamily(
            "novacron_agent_mesh_peer_receive_bytes",
            "Bytes received from the peer",
            labels=["peer"],
        )
        tx = CounterMetricFamily(
            "novacron_agent_mesh_peer_transmit_bytes", "Bytes sent to the peer", labels=["peer"]
        )
        for peer in status.peers:
            labels = [peer.node_id or peer.public_key]
            up.add_metric(labels, float(peer.up))
            age.add_metric(labels, peer.last_handshake_age_s)
            rx.add_metric(labels, peer.rx_bytes)
            tx.add_metric(labels, peer.tx_bytes)
        yield from (version, up, age, rx, tx)


def _fill(future: Future[T], call: Callable[..., T], *args: Any) -> None:
    """Run `call` into `future`, unless the scrape gave up on it already."""
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(call(*args))
        except Exception as exc:
            future.set_exception(exc)


def vm_metrics(samples: list[DomainSample]) -> Iterator[Metric]:
    """Per-VM families; labels: the VM's name and id (bounded by the VMs on this node) and
    for network counters the host-side device."""
    vm_labels = ["vm", "vm_id"]
    cpu = CounterMetricFamily(
        "novacron_vm_cpu_seconds",
        "CPU time the VM used (all vCPUs, libvirt's cpu.time)",
        labels=vm_labels,
    )
    memory = {
        suffix: GaugeMetricFamily(f"novacron_vm_{suffix}", _MEMORY_HELP[suffix], labels=vm_labels)
        for suffix, _ in MEMORY_GAUGES
    }
    net = {
        suffix: CounterMetricFamily(
            f"novacron_vm_network_{suffix}", _net_help(suffix), labels=[*vm_labels, "interface"]
        )
        for suffix, _ in NET_COUNTERS
    }
    for s in samples:
        labels = [s.name, s.vm_id]
        if s.cpu_seconds is not None:
            cpu.add_metric(labels, s.cpu_seconds)
        for suffix, value in s.memory.items():
            memory[suffix].add_metric(labels, value)
        for iface in s.interfaces:
            for suffix, value in iface.counters.items():
                net[suffix].add_metric([*labels, iface.name], value)
    yield cpu
    yield from memory.values()
    yield from net.values()


_MEMORY_HELP = {
    "memory_bytes": "Memory the guest has now (balloon current)",
    "memory_max_bytes": "Memory the guest may have (balloon maximum)",
    "memory_rss_bytes": "Host memory resident for the VM (its QEMU process)",
    "memory_usable_bytes": "Memory usable inside the guest (needs its balloon driver)",
}


def _net_help(suffix: str) -> str:
    direction, what = suffix.split("_", 1)
    return f"{what.capitalize()} {'received' if direction == 'receive' else 'sent'} on the NIC"


class AgentMetricsServer:
    """/metrics on its own thread (prometheus_client's WSGI server), with the process's own
    figures (CPU seconds, RSS, open fds) next to the agent's."""

    def __init__(self, node_id: str, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.collector = AgentCollector(node_id)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self.collector)
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def attach(
        self,
        hypervisor: Hypervisor | None = None,
        mesh: MeshManager | None = None,
        latencies: Callable[[], list[LatencyStats]] | None = None,
    ) -> None:
        """Sources as the agent starts them; latencies are read on the calling event loop."""
        c = self.collector
        if hypervisor is not None:
            c.hypervisor = hypervisor
        if mesh is not None:
            c.mesh = mesh
        if latencies is not None:
            c.latencies, c.loop = latencies, asyncio.get_running_loop()


def serve_metrics(node_id: str, listen: str) -> AgentMetricsServer | None:
    """The agent's /metrics (None when `metrics_listen` is ""); a port in use is a clear
    error at start."""
    if not listen:
        return None
    try:
        server = AgentMetricsServer(node_id, listen)
    except OSError as exc:
        raise ConfigError(f"agent.metrics_listen: cannot listen on {listen}: {exc}") from None
    log.info("metrics on /metrics", listen=listen, port=server.port)
    return server
