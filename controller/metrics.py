"""Prometheus metrics, read from the controller's state at scrape time (nothing is counted on
the hot paths): nodes, VMs, measured latency, and the mesh's link health."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.view import ControllerView

QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))


class ControllerCollector(Collector):
    def __init__(self, controller: ControllerView) -> None:
        self.c = controller

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nodes = list(self.c.nodes.values())  # snapshots: the event loop owns these dicts
        vms = list(self.c.vms.values())

        by_condition = GaugeMetricFamily(
            "novacron_nodes", "Nodes by condition", labels=["condition"]
        )
        counts: dict[str, int] = {}
        for node in nodes:
            condition = self.c.condition(node)[0].value
            counts[condition] = counts.get(condition, 0) + 1
        for condition, count in sorted(counts.items()):
            by_condition.add_metric([condition], count)
        yield by_condition

        by_state = GaugeMetricFamily("novacron_vms", "VMs by observed state", labels=["state"])
        states: dict[str, int] = {}
        for vm in vms:
            states[vm.state.value] = states.get(vm.state.value, 0) + 1
        for state, count in sorted(states.items()):
            by_state.add_metric([state], count)
        yield by_state

        rtt = GaugeMetricFamily(
            "novacron_rtt_ms",
            "Round-trip time measured by a node's agent (to the controller or a mesh peer)",
            labels=["node", "target", "quantile"],
        )
        loss = GaugeMetricFamily(
            "novacron_probe_loss_ratio", "Share of latency probes lost", labels=["node", "target"]
        )
        for node in nodes:
            for stats in node.latencies:
                for quantile, field in QUANTILES:
                    rtt.add_metric([node.node_id, stats.target, quantile], getattr(stats, field))
                loss.add_metric([node.node_id, stats.target], stats.loss_pct / 100)
        yield rtt
        yield loss

        up = GaugeMetricFamily(
            "novacron_mesh_peer_up", "1 if the peer handshook within 180 s", labels=["node", "peer"]
        )
        age = GaugeMetricFamily(
            "novacron_mesh_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake (-1: never)",
            labels=["node", "peer"],
        )
        rx = GaugeMetricFamily(
            "novacron_mesh_peer_rx_bytes", "Bytes received from the peer", labels=["node", "peer"]
        )
        tx = GaugeMetricFamily(
            "novacron_mesh_peer_tx_bytes", "Bytes sent to the peer", labels=["node", "peer"]
        )
        converged = GaugeMetricFamily(
            "novacron_mesh_converged",
            "1 if the node applied the peer set the controller wants",
            labels=["node"],
        )
        for node in nodes:
            status = node.mesh_status
            if node.mesh is None or status is None:
                continue
            converged.add_metric(
                [node.node_id], float(status.applied_version == self.c.mesh_version)
            )
            for peer in status.peers:
                labels = [node.node_id, peer.node_id or peer.public_key]
                up.add_metric(labels, float(peer.up))
                age.add_metric(labels, peer.last_handshake_age_s)
                rx.add_metric(labels, peer.rx_bytes)
                tx.add_metric(labels, peer.tx_bytes)
        yield from (up, age, rx, tx, converged)


class MetricsServer:
    """The /metrics endpoint on its own thread (prometheus_client's WSGI server)."""

    def __init__(self, controller: ControllerView, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(controller))
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), host, self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
