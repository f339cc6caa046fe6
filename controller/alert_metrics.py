"""The controller's alerts as Prometheus metrics, read at scrape time from the alert runner.

`novacron_alerts_firing{alertname,severity}` (every rule listed, 0 when quiet, so a rule over
it never sees an absent series), `novacron_alerts_total{alertname}` (times it began firing
since the controller started), plus `novacron_certificate_expiry_timestamp_seconds{certificate}`
and `novacron_vm_max_latency_seconds{vm,node,percentile}`: what
packaging/prometheus/alerts.yaml's CertificateExpiring and VMLatencyOverBound rules read.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.alert_runner import AlertRunner
from controller.alerts import RULES


class AlertCollector(Collector):
    def __init__(self, alerts: AlertRunner) -> None:
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        firing = list(self.alerts.firing.values())  # the runner swaps the dict, never edits it
        counts: dict[tuple[str, str], int] = {(n, s.value): 0 for n, s in RULES.items()}
        for alert in firing:
            key = (alert.alert.name, alert.alert.severity.value)
            counts[key] = counts.get(key, 0) + 1
        gauge = GaugeMetricFamily(
            "novacron_alerts_firing",
            "Alerts the controller evaluates as firing now, by rule and severity",
            labels=["alertname", "severity"],
        )
        for (name, severity), count in sorted(counts.items()):
            gauge.add_metric([name, severity], count)
        yield gauge

        total = CounterMetricFamily(
            "novacron_alerts",
            "Times each alert began firing since the controller started",
            labels=["alertname"],
        )
        fired = dict(self.alerts.fired_total)
        for name in sorted(set(RULES) | set(fired)):
            total.add_metric([name], fired.get(name, 0))
        yield total

        expiry = GaugeMetricFamily(
            "novacron_certificate_expiry_timestamp_seconds",
            "When a certificate of the installation expires (Unix time)",
            labels=["certificate"],
        )
        for cert in self.alerts.last_snapshot.certificates:
            expiry.add_metric([cert.subject], cert.not_after)
        yield expiry

        bound = GaugeMetricFamily(
            "novacron_vm_max_latency_seconds",
            "The RTT bound a VM asked for (only VMs with one), at the percentile it named: "
            'compared with novacron_rtt_seconds{target="controller"} of its node',
            labels=["vm", "node", "percentile"],
        )
        for vm in self.alerts.last_snapshot.vms:
            bound.add_metric([vm.name, vm.node_id, str(vm.percentile)], vm.max_latency_ms / 1000)
        yield bound
