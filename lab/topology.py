"""The lab topology: sites with real coordinates and a WAN profile each, loaded from YAML.

Delays follow geography. The emulated WAN is a star around a hub (by default the controller's
city), so a site's one-way delay to the core is

    delay_ms = ACCESS_MS[edge_type] + haversine_km(site, hub) / FIBER_KM_PER_MS

(light in fiber covers ~200 km per ms; ACCESS_MS is half the edge type's round-trip access
latency of `shared.geo`, the model placement estimates with), and a packet from site A to
site B takes delay(A) + delay(B). Every WAN key of a site may be set in the YAML to override
the derived value.
A bad file is refused with the dotted path of the bad key, e.g. `topology.sites[2].country`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shared.config import build, read_yaml
from shared.domain import EdgeType
from shared.errors import ConfigError
from shared.geo import ACCESS_RTT_MS, FIBER_KM_PER_MS, haversine_km

CONTROLLER_ID = "controller"
RESERVED_IDS = frozenset({CONTROLLER_ID, "wan", "mgmt"})  # lab namespaces of their own
DEFAULT_SUBNET = "10.213.0.0/16"
CONTROLLER_PORT = 7700

# Per edge type: access latency (ms), jitter (ms), loss (%), bandwidth (Mbit/s) of its uplink.
ACCESS_MS = {edge_type: rtt / 2 for edge_type, rtt in ACCESS_RTT_MS.items()}  # one way
JITTER_MS = {
    EdgeType.CLOUD: 0.1,
    EdgeType.MEC: 0.2,
    EdgeType.CDN: 0.3,
    EdgeType.TELCO: 0.5,
    EdgeType.ONPREM: 0.5,
    EdgeType.IOT: 2.0,
}
LOSS_PCT = {
    EdgeType.CLOUD: 0.0,
    EdgeType.MEC: 0.0,
    EdgeType.CDN: 0.0,
    EdgeType.TELCO: 0.0,
    EdgeType.ONPREM: 0.1,
    EdgeType.IOT: 1.0,
}
BANDWIDTH_MBIT = {
    EdgeType.CLOUD: 1000.0,
    EdgeType.MEC: 1000.0,
    EdgeType.CDN: 1000.0,
    EdgeType.TELCO: 500.0,
    EdgeType.ONPREM: 100.0,
    EdgeType.IOT: 20.0,
}

# Price of a site's capacity per hour, for the placement cost score: cloud regions are the
# cheapest per unit, edge capacity costs more the closer it sits to users.
COST_PER_HOUR = {
    EdgeType.CLOUD: 0.05,
    EdgeType.ONPREM: 0.08,
    EdgeType.CDN: 0.12,
    EdgeType.TELCO: 0.15,
    EdgeType.MEC: 0.20,
    EdgeType.IOT: 0.04,
}

_SITE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class WanProfile:
    """One site's access link to the emulated WAN core (one way)."""

    delay_ms: float
    jitter_ms: float
    loss_pct: float
    bandwidth_mbit: float


@dataclass(frozen=True, slots=True)
class Capacity:
    """Advertised to placement through the agent's `capacity` config (0 = what the node has)."""

    vcpus: int = 0
    memory_mib: int = 0
    storage_gib: int = 0


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    edge_type: EdgeType
    city: str
    latitude: float
    longitude: float
    country: str
    capacity: Capacity
    labels: dict[str, str]
    wan: WanProfile
    address: str  # on the lab subnet

    @property
    def netns(self) -> str:
        return f"nclab-{self.id}"


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    subnet: str
    mtu: int
    hub_latitude: float
    hub_longitude: float
    controller: Site
    sites: tuple[Site, ...]
    source: str = ""  # the file it was loaded from, so `novacron-lab status` can reload it

    @property
    def all_sites(self) -> tuple[Site, ...]:
        """The controller first, then the edge sites."""
        return (self.controller, *self.sites)

    def site(self, site_id: str) -> Site:
        for s in self.all_sites:
            if s.id == site_id:
                return s
        known = ", ".join(s.id for s in self.all_sites)
        raise ConfigError(f"unknown site {site_id!r} (known: {known})")

    @property
    def controller_address(self) -> str:
        """Where agents dial the controller, across the WAN."""
        return f"{self.controller.address}:{CONTROLLER_PORT}"

    @property
    def mgmt_network(self) -> ipaddress.IPv4Network:
        """The host's management /30 to the controller: the last /30 of the lab subnet."""
        net = ipaddress.IPv4Network(self.subnet)
        return ipaddress.IPv4Network((int(net.broadcast_address) - 3, 30))

    @property
    def mgmt_host_ip(self) -> str:
        return str(self.mgmt_network.network_address + 1)

    @property
    def mgmt_controller_ip(self) -> str:
        return str(self.mgmt_network.network_address + 2)


# -- raw YAML shapes (what `shared.config.build` checks key by key) -----------------------------


@dataclass(frozen=True, slots=True)
class _RawWan:
    delay_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None
    bandwidth_mbit: float | None = None


@dataclass(frozen=True, slots=True)
class _RawSite:
    id: str
    edge_type: EdgeType
    city: str
    latitude: float
    longitude: float
    country: str
    capacity: Capacity = field(default_factory=Capacity)
    labels: dict[str, str] = field(default_factory=dict)
    wan: _RawWan = field(default_factory=_RawWan)


@dataclass(frozen=True, slots=True)
class _RawHub:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class _RawTopology:
    name: str = "lab"
    subnet: str = DEFAULT_SUBNET
    mtu: int = 9000
    hub: _RawHub | None = None
    controller: Any = None  # checked as a site below
    sites: Any = None  # a list, checked item by item below


def derived_delay_ms(
    edge_type: EdgeType, lat: float, lon: float, hub_lat: float, hub_lon: float
) -> float:
    """One-way delay from a site to the WAN core: access latency + distance in fiber."""
    km = haversine_km(lat, lon, hub_lat, hub_lon)
    return round(ACCESS_MS[edge_type] + km / FIBER_KM_PER_MS, 2)


def derive_profile(
    edge_type: EdgeType,
    lat: float,
    lon: float,
    hub_lat: float,
    hub_lon: float,
    override: _RawWan | None = None,
) -> WanProfile:
    """The edge type's defaults and the geographic delay, with any YAML override applied."""
    o = override or _RawWan()
    return WanProfile(
        delay_ms=o.delay_ms
        if o.delay_ms is not None
        else derived_delay_ms(edge_type, lat, lon, hub_lat, hub_lon),
        jitter_ms=o.jitter_ms if o.jitter_ms is not None else JITTER_MS[edge_type],
        loss_pct=o.loss_pct if o.loss_pct is not None else LOSS_PCT[edge_type],
        bandwidth_mbit=o.bandwidth_mbit
        if o.bandwidth_mbit is not None
        else BANDWIDTH_MBIT[edge_type],
    )


def _check_site(raw: _RawSite, where: str) -> None:
    if not _SITE_ID.match(raw.id):
        raise ConfigError(
            f"{where}.id: {raw.id!r} is invalid: lowercase letters, digits and '-' (at most 32)"
        )
    if not -90.0 <= raw.latitude <= 90.0:
        raise ConfigError(f"{where}.latitude: {raw.latitude} is not in [-90, 90]")
    if not -180.0 <= raw.longitude <= 180.0:
        raise ConfigError(f"{where}.longitude: {raw.longitude} is not in [-180, 180]")
    if not _COUNTRY.match(raw.country):
        raise ConfigError(f"{where}.country: {raw.country!r} is not an ISO 3166-1 alpha-2 code")
    for name in ("vcpus", "memory_mib", "storage_gib"):
        if getattr(raw.capacity, name) < 0:
            raise ConfigError(f"{where}.capacity.{name}: must be >= 0")
    w = raw.wan
    for name in ("delay_ms", "jitter_ms", "loss_pct"):
        value = getattr(w, name)
        if value is not None and value < 0:
            raise ConfigError(f"{where}.wan.{name}: must be >= 0")
    if w.loss_pct is not None and w.loss_pct >= 100:
        raise ConfigError(f"{where}.wan.loss_pct: must be < 100")
    if w.bandwidth_mbit is not None and w.bandwidth_mbit <= 0:
        raise ConfigError(f"{where}.wan.bandwidth_mbit: must be > 0")


def _site(raw: Any, where: str, hub: tuple[float, float] | None, address: str) -> Site:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    parsed = build(_RawSite, raw, where)
    _check_site(parsed, where)
    hub_lat, hub_lon = hub if hub else (parsed.latitude, parsed.longitude)
    return Site(
        id=parsed.id,
        edge_type=parsed.edge_type,
        city=parsed.city,
        latitude=parsed.latitude,
        longitude=parsed.longitude,
        country=parsed.country,
        capacity=parsed.capacity,
        labels=dict(parsed.labels),
        wan=derive_profile(
            parsed.edge_type, parsed.latitude, parsed.longitude, hub_lat, hub_lon, parsed.wan
        ),
        address=address,
    )


def parse_topology(body: dict[str, Any], where: str = "topology") -> Topology:
    """Validate the `topology:` mapping of a file."""
    raw = build(_RawTopology, body, where)
    try:
        net = ipaddress.IPv4Network(raw.subnet)
    except ValueError as exc:
        raise ConfigError(f"{where}.subnet: {exc}") from None
    if net.prefixlen > 24:
        raise ConfigError(f"{where}.subnet: {raw.subnet} is too small (at most /24)")
    if not 576 <= raw.mtu <= 65535:
        raise ConfigError(f"{where}.mtu: {raw.mtu} is not in [576, 65535]")
    if raw.controller is None:
        raise ConfigError(f"{where}.controller: required (the controller's site)")
    if not isinstance(raw.controller, dict):
        raise ConfigError(f"{where}.controller: expected a mapping")
    if not isinstance(raw.sites, list) or not raw.sites:
        raise ConfigError(f"{where}.sites: at least one site is required")
    if len(raw.sites) > 200:
        raise ConfigError(f"{where}.sites: at most 200 sites")
    base = int(net.network_address)
    ctl_raw = {"id": CONTROLLER_ID, "edge_type": "cloud", **raw.controller}
    if ctl_raw["id"] != CONTROLLER_ID:
        raise ConfigError(f"{where}.controller.id: must be {CONTROLLER_ID!r} if given")
    hub = (raw.hub.latitude, raw.hub.longitude) if raw.hub else None
    if hub is None:
        probe = build(_RawSite, ctl_raw, f"{where}.controller")
        hub = (probe.latitude, probe.longitude)
    controller = _site(ctl_raw, f"{where}.controller", hub, str(ipaddress.IPv4Address(base + 1)))
    sites: list[Site] = []
    seen = {CONTROLLER_ID}
    for i, item in enumerate(raw.sites):
        site_where = f"{where}.sites[{i}]"
        address = str(ipaddress.IPv4Address(base + 10 + i))
        site = _site(item, site_where, hub, address)
        if site.id in RESERVED_IDS:
            raise ConfigError(f"{site_where}.id: {site.id!r} is reserved by the lab")
        if site.id in seen:
            raise ConfigError(f"{site_where}.id: {site.id!r} is used twice")
        seen.add(site.id)
        sites.append(site)
    return Topology(
        name=raw.name,
        subnet=str(net),
        mtu=raw.mtu,
        hub_latitude=hub[0],
        hub_longitude=hub[1],
        controller=controller,
        sites=tuple(sites),
    )


def load_topology(path: Path | str | None = None) -> Topology:
    """Load a topology file; None or a bare name ("default", "small") means a shipped one."""
    if path is None:
        path = "default"
    if isinstance(path, str) and "/" not in path and not path.endswith((".yaml", ".yml")):
        path = shipped(path)
    path = Path(path)
    body = read_yaml(path, "topology")
    if not body:
        raise ConfigError(f"{path}: topology: required (a mapping with controller and sites)")
    try:
        topology = parse_topology(body)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(topology, source=str(path.absolute()))


def shipped(name: str) -> Path:
    """Path of a topology shipped in lab/topologies."""
    path = Path(str(resources.files("lab") / "topologies" / f"{name}.yaml"))
    if not path.exists():
        raise ConfigError(f"no shipped topology named {name!r}")
    return path
