"""Controller configuration: the `controller:` block of a YAML file, env, then flags."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.placement import PlacementProfile
from controller.placement.filters import FILTERS
from controller.security_policy import SecurityPolicy, TlsPolicy, combine, load_policies
from shared.config import Seconds, SecondsOrNever, build, env_overrides, read_yaml
from shared.domain import PlacementMode
from shared.errors import ConfigError

ENV_PREFIX = "NOVACRON_CONTROLLER"


@dataclass(frozen=True, slots=True)
class PlacementWeights:
    latency: float = 0.5
    resources: float = 0.3
    cost: float = 0.2
    proximity: float = 0.0


@dataclass(frozen=True, slots=True)
class EdgeComputingConfig:
    """The spec's `edge_computing:` block. Every key of the spec's example is accepted (and
    type-checked); the placement keys drive the engine, the others are not used yet."""

    placement_weights: PlacementWeights = field(default_factory=PlacementWeights)
    placement_filters: tuple[str, ...] = tuple(FILTERS)
    placement_mode: PlacementMode = PlacementMode.SPREAD
    max_edge_latency: Seconds = Seconds(0.1)
    max_edge_vms_per_node: int = 10
    edge_resource_buffer: float = 0.15
    # accepted from the spec, not used yet
    discovery_interval: Seconds = Seconds(30.0)
    discovery_timeout: Seconds = Seconds(5.0)
    min_edge_resources: dict[str, str] = field(default_factory=dict)
    migration_timeout: Seconds = Seconds(5.0)
    migration_bandwidth: int = 0
    enable_mec: bool = False
    enable_iot_gateway: bool = False
    enable_cdn_edge: bool = False
    enable_telco_edge: bool = False
    target_provision_time: Seconds = Seconds(30.0)
    target_migration_time: Seconds = Seconds(5.0)
    target_placement_time: Seconds = Seconds(0.1)
    edge_mesh_enabled: bool = False
    vpn_enabled: bool = False
    offline_mode: bool = False
    metrics_interval: Seconds = Seconds(10.0)
    health_check_interval: Seconds = Seconds(15.0)
    require_tls: bool = False
    allowed_regions: tuple[str, ...] = ("*",)
    data_residency_rules: tuple[str, ...] = ()

    def placement_profile(self) -> PlacementProfile:
        w = self.placement_weights
        return PlacementProfile(
            weights={
                "latency": w.latency,
                "resources": w.resources,
                "cost": w.cost,
                "proximity": w.proximity,
            },
            filters=self.placement_filters,
            mode=self.placement_mode,
            max_edge_latency_ms=self.max_edge_latency * 1000,
            edge_resource_buffer=self.edge_resource_buffer,
            max_edge_vms_per_node=self.max_edge_vms_per_node,
        )


@dataclass(frozen=True, slots=True)
class FailureDetectorConfig:
    """`controller.failure_detector`: when a node is suspect, and when lost (phi-accrual over
    its own heartbeat intervals; see controller/core/detector.py)."""

    suspect_phi: float = 3.0
    lost_phi: float = 8.0
    min_std_heartbeats: float = 0.25  # floor on the learnt spread, in heartbeat intervals
    acceptable_pause_heartbeats: float = 2.0  # silence that is no signal, in intervals
    disconnect_lost_after: Seconds = Seconds(10.0)
    window: int = 100

    def __post_init__(self) -> None:
        where = "controller.failure_detector"
        if not 0 < self.suspect_phi < self.lost_phi:
            raise ConfigError(f"{where}: need 0 < suspect_phi < lost_phi")
        if self.min_std_heartbeats <= 0:
            raise ConfigError(f"{where}.min_std_heartbeats: must be > 0")
        if self.acceptable_pause_heartbeats < 0 or self.disconnect_lost_after < 0:
            raise ConfigError(
                f"{where}: acceptable_pause_heartbeats and disconnect_lost_after must be >= 0"
            )
        if self.window < 2:
            raise ConfigError(f"{where}.window: must be >= 2")


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """`controller.failover`: the disconnect policy of a VM that names none, and the limit
    on automatic failovers (see controller/core/disconnect.py and docs/failover.md)."""

    replace_after: SecondsOrNever = SecondsOrNever(0.0)  # after its node is lost
    # the agent pauses it on its own; also through a controller outage that long
    stop_after: SecondsOrNever = SecondsOrNever(30.0)
    clock_margin: Seconds = Seconds(2.0)  # added to stop_after before replacing
    max_per_interval: int = 10  # automatic failovers started per interval, fleet-wide
    interval: Seconds = Seconds(60.0)

    def __post_init__(self) -> None:
        where = "controller.failover"
        if self.max_per_interval < 1 or self.interval <= 0:
            raise ConfigError(f"{where}: max_per_interval must be >= 1 and interval > 0")


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    listen: str = "127.0.0.1:7700"
    state_dir: Path = Path("/var/lib/novacron/controller")
    heartbeat_interval: Seconds = Seconds(5.0)
    probe_interval: Seconds = Seconds(1.0)  # agents' latency probes to the controller
    command_timeout: Seconds = Seconds(30.0)
    deploy_timeout: Seconds = Seconds(120.0)
    # cold migration: how long a guest gets to shut down (ACPI) before it is forced off
    cold_shutdown_timeout: Seconds = Seconds(30.0)
    # live migration: the pause QEMU aims for at the switch-over, unless a request says (the
    # spec's max_downtime); a pre-copy that cannot meet it in time is escalated, then aborted
    max_downtime: Seconds = Seconds(0.15)
    insecure: bool = False
    # Where joining agents call Enroll (TLS, no client certificate): "" = the host of
    # `listen`, its port + 1. Every other method is served only on `listen`, with mTLS.
    enrol_listen: str = ""
    # renewed at 2/3 of it; a node offline for longer must enrol again (docs/security.md):
    # 30 days, so that a gateway that boots offline for a week or two comes back by itself
    node_certificate_lifetime: Seconds = Seconds(30 * 86400.0)
    # This state dir starts a new installation: agents that remember another installation are
    # taken over (their VMs shown as orphans, never deleted).
    new_installation: bool = False
    controller_id: str = ""
    log_level: str = "info"
    mesh_pool: str = "10.250.0.0/16"  # overlay addresses for the WireGuard mesh
    vm_pool: str = "10.251.0.0/16"  # VM addresses, routed between sites over the mesh
    metrics_listen: str = "127.0.0.1:9470"  # Prometheus /metrics ("" = off)
    failure_detector: FailureDetectorConfig = field(default_factory=FailureDetectorConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    edge_computing: EdgeComputingConfig = field(default_factory=EdgeComputingConfig)
    security_policies: tuple[SecurityPolicy, ...] = ()  # the file's `policies.security`

    @property
    def tls(self) -> TlsPolicy:
        return combine(self.security_policies, self.edge_computing.require_tls)

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval",
            "probe_interval",
            "command_timeout",
            "deploy_timeout",
            "cold_shutdown_timeout",
            "max_downtime",
            "node_certificate_lifetime",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"controller.{name}: must be > 0")
        for name in ("mesh_pool", "vm_pool"):
            try:
                ipaddress.ip_network(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"controller.{name}: {exc}") from None
        for name in ("listen", "metrics_listen", "enrol_listen"):
            value = getattr(self, name)
            if name != "listen" and not value:
                continue
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(f"controller.{name}: expected HOST:PORT, got {value!r}")


def enrol_listen_of(config: ControllerConfig) -> str:
    if config.enrol_listen:
        return config.enrol_listen
    host, _, port = config.listen.rpartition(":")
    return f"{host}:{int(port) + 1 if int(port) else 0}"


def load_config(path: Path | None, flags: dict[str, Any]) -> ControllerConfig:
    """File < environment (NOVACRON_CONTROLLER_<KEY>) < flags that were given."""
    raw: dict[str, Any] = read_yaml(path, "controller") if path else {}
    raw.pop("edge_computing", None)
    raw.update(env_overrides(ENV_PREFIX, ControllerConfig))
    raw.update({k: v for k, v in flags.items() if v is not None})
    edge = build(
        EdgeComputingConfig, read_yaml(path, "edge_computing") if path else {}, "edge_computing"
    )
    edge.placement_profile()  # refuse a bad profile at start-up, naming the bad key
    config = replace(
        build(ControllerConfig, raw, "controller"),
        edge_computing=edge,
        security_policies=load_policies(path),
    )
    if config.insecure and config.tls.require_tls:
        raise ConfigError(
            "require_tls is true (edge_computing.require_tls or a policies.security entry), "
            "so --insecure is refused: run `novacron-controller init` and start with TLS"
        )
    return config
