"""Prometheus metrics of the controller. Gauges are read from the controller's state at scrape
time (nothing is counted on the hot paths): nodes, their heartbeat lag and capacity, VMs,
migrations and failovers under way, agent streams, measured latency, the mesh's link health.
Histograms of what finished (placement decisions, migrations, failovers) are observed as the
runner persists records and the engine decides (controller/metrics_records.py). Base units:
seconds and bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.core.instructions import Persist
from controller.metrics_records import Observations, TimedEngine
from controller.records import MigrationPhase, NodeRecord
from controller.view import ControllerView
from shared.domain import NodeCondition, VMState

PERCENTILES = (("50", "p50_ms"), ("95", "p95_ms"), ("99", "p99_ms"))
MIB = 1024 * 1024
GIB = 1024 * MIB


class Observed(Protocol):
    """What the metrics read of controller.runner.Runner."""

    view: ControllerView
    on_persisted: list[Callable[[Persist], None]]
    sessions_opened: int

    @property
    def open_sessions(self) -> int: ...


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class ControllerCollector(Collector):
    def __init__(self, runner: Observed) -> None:
        self.runner = runner
        self.c = runner.view

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._vms()
        yield from self._jobs()
        yield from self._streams()
        yield from self._latency()
        yield from self._mesh()

    def _nodes(self) -> Iterator[Metric]:
        nodes = list(self.c.nodes.values())  # snapshots: the event loop owns these dicts
        now = self.c.clock()
        by_condition = _gauge("novacron_nodes", "Nodes by condition", ["condition"])
        per_node = _gauge(
            "novacron_node_condition",
            "1 for the node's condition, 0 for the others",
            ["node", "condition"],
        )
        lag = _gauge(
            "novacron_node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat (nodes heard from since the start)",
            ["node"],
        )
        connected = _gauge("novacron_node_connected", "1 if the node's stream is open", ["node"])
        counts = dict.fromkeys((c.value for c in NodeCondition), 0)
        for node in nodes:
            condition = self.c.core.state.condition(node, now)[0].value
            counts[condition] += 1
            for c in NodeCondition:
                per_node.add_metric([node.node_id, c.value], float(c.value == condition))
            if node.last_heartbeat > 0:
                lag.add_metric([node.node_id], max(0.0, now - node.last_heartbeat))
            connected.add_metric([node.node_id], float(node.connected))
        for condition, count in counts.items():
            by_condition.add_metric([condition], count)
        yield from (by_condition, per_node, lag, connected)
        yield from self._capacity(nodes)

    def _capacity(self, nodes: list[NodeRecord]) -> Iterator[Metric]:
        allocated: dict[str, list[int]] = {}
        for vm in list(self.c.vms.values()):
            if not vm.reserves_capacity:
                continue
            need = vm.spec.capacity()
            for node_id in {vm.node_id, vm.migrating_to} - {""}:
                held = allocated.setdefault(node_id, [0, 0, 0])
                held[0] += need.vcpus
                held[1] += need.memory_mib
                held[2] += need.storage_gib
        families = {
            name: _gauge(f"novacron_node_{name}", doc, ["node"])
            for name, doc in (
                ("vcpus", "vCPUs the node offers"),
                ("memory_bytes", "Memory the node offers"),
                ("storage_bytes", "Storage the node offers"),
                ("allocated_vcpus", "vCPUs booked by VMs (a migration books both ends)"),
                ("allocated_memory_bytes", "Memory booked by VMs"),
                ("allocated_storage_bytes", "Storage booked by VMs"),
            )
        }
        for node in nodes:
            cap, held = node.capacity, allocated.get(node.node_id, [0, 0, 0])
            label = [node.node_id]
            families["vcpus"].add_metric(label, cap.vcpus)
            families["memory_bytes"].add_metric(label, cap.memory_mib * MIB)
            families["storage_bytes"].add_metric(label, cap.storage_gib * GIB)
            families["allocated_vcpus"].add_metric(label, held[0])
            families["allocated_memory_bytes"].add_metric(label, held[1] * MIB)
            families["allocated_storage_bytes"].add_metric(label, held[2] * GIB)
        yield from families.values()

    def _vms(self) -> Iterator[Metric]:
        by_state = _gauge("novacron_vms", "VMs by observed state", ["state"])
        states = dict.fromkeys((s.value for s in VMState), 0)
        for vm in list(self.c.vms.values()):
            states[vm.state.value] += 1
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state

    def _jobs(self) -> Iterator[Metric]:
        state = self.c.core.state
        phases = [p for p in MigrationPhase if not p.terminal]
        active = dict.fromkeys((p.value for p in phases), 0)
        for mig in list(state.migrations.values()):
            if mig.active:
                active[mig.phase.value] += 1
        migrating = _gauge("novacron_migrations_active", "Migrations under way by phase", ["phase"])
        for phase, count in active.items():
            migrating.add_metric([phase], count)
        failing_over = _gauge("novacron_failovers_active", "Failovers under way")
        failing_over.add_metric([], sum(1 for f in list(state.failovers.values()) if f.active))
        yield from (migrating, failing_over)

    def _streams(self) -> Iterator[Metric]:
        streams = _gauge("novacron_agent_streams", "Agent session streams open now")
        streams.add_metric([], self.runner.open_sessions)
        opened = CounterMetricFamily(
            "novacron_agent_streams_opened", "Agent session streams opened since the start"
        )
        opened.add_metric([], self.runner.sessions_opened)
        yield from (streams, opened)

    def _latency(self) -> Iterator[Metric]:
        rtt = _gauge(
            "novacron_rtt_seconds",
            "Round-trip time measured by a node's agent (to the controller or a mesh peer)",
            ["node", "target", "percentile"],
        )
        loss = _gauge(
            "novacron_probe_loss_ratio", "Share of latency probes lost", ["node", "target"]
        )
        for node in list(self.c.nodes.values()):
            for stats in node.latencies:
                for percentile, field in PERCENTILES:
                    value = getattr(stats, field) / 1000
                    rtt.add_metric([node.node_id, stats.target, percentile], value)
                loss.add_metric([node.node_id, stats.target], stats.loss_pct / 100)
        yield from (rtt, loss)

    def _mesh(self) -> Iterator[Metric]:
        labels = ["node", "peer"]
        up = _gauge("novacron_mesh_peer_up", "1 if the peer handshook within 180 s", labels)
        age = _gauge(
            "novacron_mesh_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake (-1: never)",
            labels,
        )
        rx = CounterMetricFamily(
            "novacron_mesh_peer_receive_bytes", "Bytes received from the peer", labels=labels
        )
        tx = CounterMetricFamily(
            "novacron_mesh_peer_transmit_bytes", "Bytes sent to the peer", labels=labels
        )
        converged = _gauge(
            "novacron_mesh_converged",
            "1 if the node applied the peer set the controller wants",
            ["node"],
        )
        for node in list(self.c.nodes.values()):
            status = node.mesh_status
            if node.mesh is None or status is None:
                continue
            converged.add_metric(
                [node.node_id], float(status.applied_version == self.c.mesh_version)
            )
            for peer in status.peers:
                pair = [node.node_id, peer.node_id or peer.public_key]
                up.add_metric(pair, float(peer.up))
                age.add_metric(pair, peer.last_handshake_age_s)
                rx.add_metric(pair, peer.rx_bytes)
                tx.add_metric(pair, peer.tx_bytes)
        yield from (up, age, rx, tx, converged)


class _Histograms(Collector):
    def __init__(self, runner: Observed, observations: Observations) -> None:
        self.engine = runner.view.core.engine
        self.observations = observations

    def collect(self) -> Iterator[Metric]:
        if isinstance(self.engine, TimedEngine):
            yield from self.engine.times.histogram.collect()
            yield from self.engine.times.batch.collect()
        yield from self.observations.collect()


class MetricsServer:
    """The /metrics endpoint on its own thread (prometheus_client's WSGI server). Started on
    the event loop: it is told of every record persisted from then on."""

    def __init__(self, runner: Observed, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        state = runner.view.core.state
        self.observations = Observations()
        self.observations.already_finished(state.migrations.values(), state.failovers.values())
        runner.on_persisted.append(self.observations.persisted)
        self._runner = runner
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU seconds, RSS, open fds
        PlatformCollector(registry=self.registry)
        self.registry.register(ControllerCollector(runner))
        self.registry.register(_Histograms(runner, self.observations))
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        if self.observations.persisted in self._runner.on_persisted:
            self._runner.on_persisted.remove(self.observations.persisted)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
