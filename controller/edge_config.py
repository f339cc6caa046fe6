"""The spec's `edge_computing:` block (docs/configuration.md, key by key). Every key either
takes effect or is refused at start-up with its path and the reason; none is accepted and
ignored. Keys that cannot mean anything here are not fields: `REFUSED` says why."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.placement import PlacementProfile
from controller.placement.filters import FILTERS
from controller.placement.site_policy import SitePolicy, countries_of, residency_rules
from shared.config import Seconds, build, parse_duration
from shared.domain import Capacity, EdgeType, PlacementMode
from shared.errors import ConfigError

W = "edge_computing"
REFUSED: dict[str, str] = {
    "discovery_interval": (
        "nodes are not discovered by scanning: each agent dials the controller and registers "
        "itself with its inventory (hello), so there is no discovery round to time; remove it"
    ),
    "discovery_timeout": (
        "nodes are not discovered by scanning (see discovery_interval); whether a registered "
        "node still answers is the failure detector's call (controller.failure_detector)"
    ),
    "metrics_interval": (
        "metrics are scraped, not pushed: Prometheus reads /metrics at its own scrape_interval "
        "(set it there), and nodes' utilisation arrives with every heartbeat "
        "(edge_computing.health_check_interval); remove it"
    ),
}
ENABLE_KEYS = {
    "enable_mec": EdgeType.MEC,
    "enable_iot_gateway": EdgeType.IOT,
    "enable_cdn_edge": EdgeType.CDN,
    "enable_telco_edge": EdgeType.TELCO,
}
WEIGHT_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class PlacementWeights:
    latency: float = 0.5
    resources: float = 0.3
    cost: float = 0.2
    proximity: float = 0.0


@dataclass(frozen=True, slots=True)
class MinEdgeResources:
    """A node with less capacity than this is never placed on (the `site` filter). Storage
    is compared with what agents report in GiB (the spec's GB is read as GiB)."""

    min_cpu_cores: int = 0
    min_memory_mb: int = 0
    min_storage_gb: int = 0
    min_bandwidth_mbps: int = 0

    def __post_init__(self) -> None:
        where = f"{W}.min_edge_resources"
        problems = [
            f"{where}.{name}: must be >= 0"
            for name in ("min_cpu_cores", "min_memory_mb", "min_storage_gb", "min_bandwidth_mbps")
            if getattr(self, name) < 0
        ]
        if self.min_bandwidth_mbps > 0:
            problems.append(
                f"{where}.min_bandwidth_mbps: refused: nodes do not report their link bandwidth "
                "(agent.qos.link_mbit stays on the node and NodeInfo has no such field), so no "
                "filter can compare it; remove it or set it to 0"
            )
        if problems:
            raise ConfigError("\n".join(problems))

    def capacity(self) -> Capacity:
        return Capacity(self.min_cpu_cores, self.min_memory_mb, self.min_storage_gb)


@dataclass(frozen=True, slots=True)
class EdgeComputingConfig:
    placement_weights: PlacementWeights = field(default_factory=PlacementWeights)
    placement_filters: tuple[str, ...] = tuple(FILTERS)
    placement_mode: PlacementMode = PlacementMode.SPREAD
    max_edge_latency: Seconds = Seconds(0.1)
    min_edge_resources: MinEdgeResources = field(default_factory=MinEdgeResources)
    max_edge_vms_per_node: int = 10
    edge_resource_buffer: float = 0.15
    # a migration request without a timeout gets this one (None: controller.deploy_timeout)
    migration_timeout: Seconds | None = None
    migration_bandwidth: int = 0  # bits/s: cap of migrations that name none (0 = none)
    enable_mec: bool = True  # false: nodes of that edge type are never placed on
    enable_iot_gateway: bool = True
    enable_cdn_edge: bool = True
    enable_telco_edge: bool = True
    # targets, not knobs: a deploy, migration or placement decision slower is logged
    target_provision_time: Seconds = Seconds(30.0)
    target_migration_time: Seconds = Seconds(5.0)
    target_placement_time: Seconds = Seconds(0.1)
    edge_mesh_enabled: bool = True
    vpn_enabled: bool = True
    offline_mode: bool = False  # true: VMs keep running through any controller outage
    health_check_interval: Seconds | None = None  # = controller.heartbeat_interval
    require_tls: bool = False
    allowed_regions: tuple[str, ...] = ("*",)
    data_residency_rules: tuple[str, ...] = ()  # "REGION:REGULATION", e.g. "EU:GDPR"

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError("\n".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []
        for name in ("target_provision_time", "target_migration_time", "target_placement_time"):
            if not getattr(self, name) > 0:
                out.append(f"{W}.{name}: must be > 0")
        for name in ("migration_timeout", "health_check_interval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                out.append(f"{W}.{name}: must be > 0")
        if self.migration_bandwidth < 0 or 0 < self.migration_bandwidth < 1_000_000:
            out.append(
                f"{W}.migration_bandwidth: {self.migration_bandwidth} bits/s: must be 0 (no cap) "
                "or at least 1000000 (1 Mbit/s, the unit the migration cap is sent in)"
            )
        mesh = "the edge mesh is WireGuard: it is this system's VPN, and the only one"
        if self.edge_mesh_enabled != self.vpn_enabled:
            out.append(
                f"{W}.vpn_enabled: {str(self.vpn_enabled).lower()} contradicts "
                f"edge_mesh_enabled: {str(self.edge_mesh_enabled).lower()}: {mesh}"
            )
        elif not self.edge_mesh_enabled:
            out.append(
                f"{W}.edge_mesh_enabled: false is refused: the controller coordinates the mesh "
                "of exactly the nodes whose agent joins it (agent.mesh.enabled), so run "
                "without it by setting agent.mesh.enabled: false on the agents"
            )
        for i, rule in enumerate(self.data_residency_rules):
            region, sep, regulation = rule.partition(":")
            if not sep or not region.strip() or not regulation.strip():
                out.append(
                    f"{W}.data_residency_rules[{i}]: {rule!r} is not REGION:REGULATION "
                    "(e.g. EU:GDPR)"
                )
        try:
            self.site_policy()
        except ConfigError as exc:
            out.append(str(exc))
        return out

    def weights_warning(self) -> str:
        """Weights that do not sum to 1 are normalised (only their ratios rank nodes; the
        scores shown stay in [0, 1]); this says so, or "" when they do."""
        w = self.placement_weights
        total = w.latency + w.resources + w.cost + w.proximity
        if not math.isfinite(total) or total <= 0 or abs(total - 1.0) <= WEIGHT_TOLERANCE:
            return ""
        scaled = ", ".join(f"{k} {v / total:.3f}" for k, v in self._weights().items())
        return f"{W}.placement_weights sum to {total:g}, not 1: normalised to {scaled}"

    def _weights(self) -> dict[str, float]:
        w = self.placement_weights
        return {
            "latency": w.latency,
            "resources": w.resources,
            "cost": w.cost,
            "proximity": w.proximity,
        }

    def site_policy(self, residency: Sequence[tuple[str, frozenset[str], str]] = ()) -> SitePolicy:
        """The fleet-wide rules; `residency` adds policies.data_residency entries
        (regulation, countries, where they were said)."""
        countries: set[str] | None = None
        if "*" not in self.allowed_regions:
            countries = set()
            for i, region in enumerate(self.allowed_regions):
                countries |= countries_of(region, f"{W}.allowed_regions[{i}]")
        rules = []
        for i, rule in enumerate(self.data_residency_rules):
            region, sep, regulation = rule.partition(":")
            if sep and region.strip() and regulation.strip():
                where = f"{W}.data_residency_rules[{i}]"
                rules.append((regulation.strip(), countries_of(region, where), where))
        return SitePolicy(
            min_capacity=self.min_edge_resources.capacity(),
            disabled_edge_types=tuple(t for k, t in ENABLE_KEYS.items() if not getattr(self, k)),
            countries=None if countries is None else tuple(sorted(countries)),
            residency=residency_rules((*rules, *residency)),
        )

    def placement_profile(
        self, residency: Sequence[tuple[str, frozenset[str], str]] = ()
    ) -> PlacementProfile:
        weights = self._weights()
        total = sum(weights.values())
        if self.weights_warning():
            weights = {k: v / total for k, v in weights.items()}
        return PlacementProfile(
            weights=weights,
            filters=self.placement_filters,
            mode=self.placement_mode,
            max_edge_latency_ms=self.max_edge_latency * 1000,
            edge_resource_buffer=self.edge_resource_buffer,
            max_edge_vms_per_node=self.max_edge_vms_per_node,
            site_policy=self.site_policy(residency),
            target_placement_ms=self.target_placement_time * 1000,
        )

    def core_settings(self) -> dict[str, Any]:
        """What the core reads (controller.core.state.Settings fields)."""
        return {
            "migration_timeout": self.migration_timeout or 0.0,
            "migration_bandwidth_mbit": self.migration_bandwidth // 1_000_000,
            "target_provision_s": float(self.target_provision_time),
            "target_migration_s": float(self.target_migration_time),
        }


def build_edge(raw: Mapping[str, Any]) -> EdgeComputingConfig:
    """The block, every refused key named at once (with why), then the rest type-checked."""
    refused = [f"{W}.{key}: refused: {REFUSED[key]}" for key in raw if key in REFUSED]
    kept = {k: v for k, v in raw.items() if k not in REFUSED}
    try:
        edge = build(EdgeComputingConfig, kept, W)
    except ConfigError as exc:
        refused.append(str(exc))
    if refused:
        raise ConfigError("\n".join(refused))
    return edge


def apply_to_controller(edge: EdgeComputingConfig, raw: dict[str, Any]) -> dict[str, Any]:
    """The keys that set a controller value: health_check_interval is the heartbeat (agents'
    health reports, judged by the failure detector); offline_mode makes `never` the default
    failover.stop_after. A contradicting explicit value is refused, never overridden."""
    out = dict(raw)
    if edge.health_check_interval is not None:
        given = out.get("heartbeat_interval")
        if given is not None and parse_duration(given, "") != edge.health_check_interval:
            raise ConfigError(
                f"{W}.health_check_interval ({edge.health_check_interval:g}s) contradicts "
                f"controller.heartbeat_interval ({given}): both are the agents' health report "
                "interval; give one"
            )
        out["heartbeat_interval"] = edge.health_check_interval
    if edge.offline_mode:
        failover = dict(out.get("failover") or {})
        given = failover.get("stop_after")
        if given is not None and str(given).strip().lower() != "never":
            raise ConfigError(
                f"{W}.offline_mode: true contradicts controller.failover.stop_after ({given}): "
                "offline mode keeps VMs running through any controller outage; remove one"
            )
        failover["stop_after"] = "never"
        out["failover"] = failover
    return out
