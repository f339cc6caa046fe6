"""Controller configuration: the `controller:` block of a YAML file, env, then flags."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from controller.alerts import AlertsConfig
from controller.edge_config import (  # noqa: F401  (PlacementWeights: re-exported)
    EdgeComputingConfig,
    PlacementWeights,
    apply_to_controller,
    build_edge,
)
from controller.placement import PlacementProfile
from controller.policies import Policies, load_policies
from controller.security_policy import TlsPolicy, combine
from shared.config import Seconds, SecondsOrNever, build, check_sections, env_overrides, read_yaml
from shared.config_sources import Setting, describe
from shared.errors import ConfigError

ENV_PREFIX = "NOVACRON_CONTROLLER"
log = structlog.get_logger(__name__)
SECTIONS = ("controller", "edge_computing", "policies")
FOREIGN = {"agent": "belongs to the agent's file (novacron-agent --config), not the controller's"}


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
    # the read-only web dashboard (controller/dashboard/): HTTPS behind the API's
    # authentication, plain HTTP only with --insecure ("" = off)
    dashboard_listen: str = "127.0.0.1:7780"
    failure_detector: FailureDetectorConfig = field(default_factory=FailureDetectorConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    edge_computing: EdgeComputingConfig = field(default_factory=EdgeComputingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # controller/alerts.py
    policies: Policies = field(default_factory=Policies)  # the file's `policies:` section

    @property
    def tls(self) -> TlsPolicy:
        return combine(self.policies.security, self.edge_computing.require_tls)

    def placement_profile(self) -> PlacementProfile:
        """edge_computing's placement keys, with policies.data_residency's rules."""
        return self.edge_computing.placement_profile(self.policies.residency())

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
        for name in ("listen", "metrics_listen", "enrol_listen", "dashboard_listen"):
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


def _layers(
    path: Path | None, flags: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], EdgeComputingConfig]:
    """The file's `controller:` block, the environment, the flags given, and edge_computing."""
    if path is not None:
        check_sections(path, SECTIONS, FOREIGN)
    file: dict[str, Any] = read_yaml(path, "controller") if path else {}
    for key in ("edge_computing", "policies"):
        if key in file:
            raise ConfigError(f"controller.{key}: {key} is a top-level section, not in controller:")
    env = env_overrides(ENV_PREFIX, ControllerConfig)
    for key in ("edge_computing", "policies"):
        if env.pop(key, None) is not None:
            raise ConfigError(f"{ENV_PREFIX}_{key.upper()}: set {key} in the file")
    given = {k: v for k, v in flags.items() if v is not None}
    problems: list[str] = []  # every refused key of both sections at once
    try:
        edge = build_edge(read_yaml(path, "edge_computing") if path else {})
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        load_policies(path)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return file, env, given, edge


def load_config(path: Path | None, flags: dict[str, Any], warn: bool = True) -> ControllerConfig:
    """File < environment (NOVACRON_CONTROLLER_<KEY>) < flags that were given; the
    edge_computing keys that set a controller value are applied (or refused) last."""
    file, env, given, edge = _layers(path, flags)
    policies = load_policies(path)
    raw = apply_to_controller(edge, {**file, **env, **given})
    config = replace(
        build(ControllerConfig, raw, "controller"), edge_computing=edge, policies=policies
    )
    config.placement_profile()  # refuse a bad profile at start-up, naming the bad key
    if warn and (warning := edge.weights_warning()):
        log.warning(warning)
    if config.insecure and config.tls.require_tls:
        raise ConfigError(
            "require_tls is true (edge_computing.require_tls or a policies.security entry), "
            "so --insecure is refused: run `novacron-controller init` and start with TLS"
        )
    return config


def describe_config(path: Path, flags: dict[str, Any]) -> tuple[list[Setting], list[str]]:
    """`novacron-controller config check`: every effective key with its source, and the
    warnings the file earns."""
    config = load_config(path, flags, warn=False)
    file, env, given, edge = _layers(path, flags)
    derived: dict[str, Any] = {}
    if edge.health_check_interval is not None:
        derived["heartbeat_interval"] = True
    if edge.offline_mode:
        derived["failover"] = {"stop_after": True}
    top = replace(config, edge_computing=EdgeComputingConfig(), policies=Policies())
    settings = describe(
        top,
        "controller",
        [("file", file), ("file (edge_computing)", derived), ("env", env), ("flag", given)],
    )
    settings = [
        s
        for s in settings
        if not s.path.startswith(("controller.edge_computing", "controller.policies"))
    ]
    settings += describe(edge, "edge_computing", [("file", read_yaml(path, "edge_computing"))])
    settings += describe(config.policies, "policies", [("file", read_yaml(path, "policies"))])
    warnings = [w for w in (edge.weights_warning(),) if w]
    return settings, warnings
