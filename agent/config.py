"""Agent configuration: the `agent:` block of a YAML file, env, then flags."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Seconds, build, check_sections, env_overrides, read_yaml
from shared.domain import EdgeType, Location
from shared.errors import ConfigError

ENV_PREFIX = "NOVACRON_AGENT"
# One file per daemon: a controller section in the agent's file is a file mixed up
FOREIGN = {
    name: "belongs to the controller's file (novacron-controller --config), not the agent's"
    for name in ("controller", "edge_computing", "policies")
}
_NODE_ID = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class LocationConfig:
    latitude: float
    longitude: float
    country: str = ""

    def __post_init__(self) -> None:
        if not -90.0 <= self.latitude <= 90.0:
            raise ConfigError(f"agent.location.latitude: {self.latitude} is not in [-90, 90]")
        if not -180.0 <= self.longitude <= 180.0:
            raise ConfigError(f"agent.location.longitude: {self.longitude} is not in [-180, 180]")
        if self.country and not re.fullmatch(r"[A-Z]{2}", self.country):
            raise ConfigError(
                f"agent.location.country: {self.country!r} is not an ISO 3166-1 alpha-2 code"
            )

    def to_domain(self) -> Location:
        return Location(self.latitude, self.longitude, self.country)


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    """Advertised capacity; 0 means "what the hypervisor and disk report"."""

    vcpus: int = 0
    memory_mib: int = 0
    storage_gib: int = 0
    # vCPUs and memory above what libvirt reports are refused at start, unless this says the
    # node is meant to advertise more (overcommit; the lab's emulated sites)
    beyond_host: bool = False

    def __post_init__(self) -> None:
        for name in ("vcpus", "memory_mib", "storage_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.capacity.{name}: must be >= 0")

    def check_against(self, host_vcpus: int, host_memory_mib: int) -> None:
        """A claim the hypervisor cannot back draws deploys onto a node that fails them."""
        if self.beyond_host:
            return
        for name, claimed, real in (
            ("vcpus", self.vcpus, host_vcpus),
            ("memory_mib", self.memory_mib, host_memory_mib),
        ):
            if claimed > real > 0:
                raise ConfigError(
                    f"agent.capacity.{name}: {claimed} is more than libvirt reports ({real}); "
                    "lower it, or set agent.capacity.beyond_host: true to overcommit"
                )


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """This node's end of the WireGuard edge mesh (wireguard-go, configured over UAPI)."""

    enabled: bool = False
    endpoint_host: str = ""  # the address other nodes reach this one at ("" = behind NAT)
    listen_port: int = 51820
    behind_nat: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.listen_port < 65536:
            raise ConfigError(f"agent.mesh.listen_port: {self.listen_port} is not a port")
        if self.endpoint_host:
            try:
                ipaddress.ip_address(self.endpoint_host)
            except ValueError:
                raise ConfigError(
                    f"agent.mesh.endpoint_host: {self.endpoint_host!r} is not an IP address"
                ) from None


@dataclass(frozen=True, slots=True)
class QosConfig:
    """htb traffic classes on the uplink: control first, migration capped (agent/qos.py)."""

    enabled: bool = False
    uplink: str = ""  # "" = the interface of the route to the controller
    link_mbit: float = 0.0  # the uplink's real speed (htb must know it)
    migration_mbit: float = 0.0  # cap on live-migration traffic (the spec's migration_bandwidth)

    def __post_init__(self) -> None:
        if self.enabled and not 0 < self.migration_mbit <= self.link_mbit:
            raise ConfigError(
                "agent.qos: need 0 < migration_mbit <= link_mbit when enabled "
                f"(got {self.migration_mbit:g} and {self.link_mbit:g})"
            )


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_id: str = ""
    controller: str = "127.0.0.1:7700"
    libvirt_uri: str = "qemu:///system"
    # Without the mesh only: the address other nodes' libvirtd reach this node's libvirtd at
    # (TCP, port 16509, in clear text: keep such nodes on a trusted network) and send
    # migration data to. On the mesh, migrations arrive over WireGuard on the mesh address
    # instead (agent/migration_gateway.py) and this is not used.
    migration_host: str = ""
    virt_type: str = "auto"
    edge_type: EdgeType = EdgeType.ONPREM
    labels: dict[str, str] = field(default_factory=dict)
    location: LocationConfig | None = None
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    cost_per_hour: float = 0.0  # price of this node's capacity, for the cost score
    mesh: MeshConfig = field(default_factory=MeshConfig)
    qos: QosConfig = field(default_factory=QosConfig)
    state_dir: Path = Path("/var/lib/novacron/agent")
    images_dir: Path = Path("/var/lib/novacron/images")
    heartbeat_interval: Seconds = Seconds(5.0)
    probe_interval: Seconds = Seconds(1.0)  # latency probes to the controller
    reconnect_max: Seconds = Seconds(30.0)
    # no controller this long after start: restore the node from the cached desired state
    offline_grace: Seconds = Seconds(10.0)
    insecure: bool = False
    # enrolment (once; then the certificate in state_dir/pki is used): agent/enrolment.py
    join_token: str = ""
    ca_pin: str = ""
    enrol_address: str = ""  # the controller's join port; "" = its port + 1
    log_level: str = "info"
    metrics_listen: str = "127.0.0.1:9471"  # Prometheus /metrics, HOST:PORT ("" = off)

    def __post_init__(self) -> None:
        if not self.node_id:
            object.__setattr__(self, "node_id", socket.gethostname().lower())
        if not _NODE_ID.match(self.node_id):
            raise ConfigError(
                f"agent.node_id: {self.node_id!r} is invalid: use lowercase letters, digits, "
                "'.' and '-' (at most 63)"
            )
        if self.virt_type not in ("auto", "qemu", "kvm", "test"):
            raise ConfigError(f"agent.virt_type: {self.virt_type!r} is not auto, qemu or kvm")
        if not self.cost_per_hour >= 0:
            raise ConfigError(f"agent.cost_per_hour: must be >= 0, got {self.cost_per_hour}")
        for name in ("heartbeat_interval", "probe_interval", "reconnect_max", "offline_grace"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.{name}: must be > 0")
        if self.migration_host:
            try:
                ipaddress.ip_address(self.migration_host)
            except ValueError:
                raise ConfigError(
                    f"agent.migration_host: {self.migration_host!r} is not an IP address"
                ) from None
        host, _, port = self.metrics_listen.rpartition(":")
        if self.metrics_listen and not (host and port.isdigit() and int(port) < 65536):
            raise ConfigError(
                f"agent.metrics_listen: {self.metrics_listen!r} is not HOST:PORT (empty = off)"
            )
        if ":" not in self.controller:
            raise ConfigError(f"agent.controller: expected HOST:PORT, got {self.controller!r}")


def load_config(path: Path | None, flags: dict[str, Any]) -> AgentConfig:
    """File < environment (NOVACRON_AGENT_<KEY>) < flags that were given."""
    if path is not None:
        check_sections(path, ("agent",), FOREIGN)
    raw: dict[str, Any] = read_yaml(path, "agent") if path else {}
    raw.update(env_overrides(ENV_PREFIX, AgentConfig))
    for key, value in flags.items():
        if value is None:
            continue
        if key == "labels":
            raw["labels"] = {**raw.get("labels", {}), **value}
        else:
            raw[key] = value
    return build(AgentConfig, raw, "agent")
