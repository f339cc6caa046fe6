"""Synthetic, seeded edge fleets and request mixes for the placement benchmarks.

Real fleets are not uniform: nodes cluster around metro areas, capacity and price follow the
edge type (an IoT gateway is 4 vCPU, a cloud host 96), some nodes are busy, a few are down,
and requests come from users in many cities with latency, residency and type constraints.
A benchmark on a uniform grid would flatter any spatial index and any cache, so both the fleet
and the request stream are drawn from these spreads. Everything is a pure function of the
seed: the same seed gives the same rows and requests on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from controller.placement import NodeRow, PlacementRequest
from shared.domain import (
    Capacity,
    EdgeType,
    Location,
    PlacementConstraints,
    PlacementMode,
    SpreadScope,
)


@dataclass(frozen=True, slots=True)
class Metro:
    name: str
    lat: float
    lon: float
    country: str
    weight: float  # relative share of nodes and users (roughly population)


METROS: tuple[Metro, ...] = (
    Metro("frankfurt", 50.11, 8.68, "DE", 3),
    Metro("berlin", 52.52, 13.40, "DE", 3),
    Metro("munich", 48.14, 11.58, "DE", 2),
    Metro("paris", 48.86, 2.35, "FR", 4),
    Metro("marseille", 43.30, 5.37, "FR", 1.5),
    Metro("london", 51.51, -0.13, "GB", 4),
    Metro("manchester", 53.48, -2.24, "GB", 1.5),
    Metro("amsterdam", 52.37, 4.90, "NL", 2.5),
    Metro("madrid", 40.42, -3.70, "ES", 2.5),
    Metro("milan", 45.46, 9.19, "IT", 2),
    Metro("warsaw", 52.23, 21.01, "PL", 1.5),
    Metro("stockholm", 59.33, 18.07, "SE", 1.5),
    Metro("helsinki", 60.17, 24.94, "FI", 1),
    Metro("lisbon", 38.72, -9.14, "PT", 1),
    Metro("new-york", 40.71, -74.01, "US", 5),
    Metro("ashburn", 39.04, -77.49, "US", 4),
    Metro("chicago", 41.88, -87.63, "US", 3),
    Metro("dallas", 32.78, -96.80, "US", 3),
    Metro("los-angeles", 34.05, -118.24, "US", 4),
    Metro("san-jose", 37.34, -121.89, "US", 3),
    Metro("seattle", 47.61, -122.33, "US", 2),
    Metro("miami", 25.76, -80.19, "US", 2),
    Metro("toronto", 43.65, -79.38, "CA", 2),
    Metro("montreal", 45.50, -73.57, "CA", 1),
    Metro("mexico-city", 19.43, -99.13, "MX", 2.5),
    Metro("sao-paulo", -23.55, -46.63, "BR", 3),
    Metro("buenos-aires", -34.60, -58.38, "AR", 1.5),
    Metro("santiago", -33.45, -70.67, "CL", 1),
    Metro("bogota", 4.71, -74.07, "CO", 1),
    Metro("tokyo", 35.68, 139.69, "JP", 5),
    Metro("osaka", 34.69, 135.50, "JP", 2),
    Metro("seoul", 37.57, 126.98, "KR", 3),
    Metro("singapore", 1.35, 103.82, "SG", 3),
    Metro("mumbai", 19.08, 72.88, "IN", 3),
    Metro("bangalore", 12.97, 77.59, "IN", 2),
    Metro("hong-kong", 22.32, 114.17, "HK", 2),
    Metro("sydney", -33.87, 151.21, "AU", 2),
    Metro("melbourne", -37.81, 144.96, "AU", 1.5),
    Metro("johannesburg", -26.20, 28.05, "ZA", 1.5),
    Metro("lagos", 6.52, 3.38, "NG", 1),
    Metro("cairo", 30.04, 31.24, "EG", 1),
    Metro("dubai", 25.20, 55.27, "AE", 1.5),
)
EUROPE = tuple(m for m in METROS if m.lon > -10 and m.lon < 30 and m.lat > 35)

# Per edge type: share of the fleet, capacity (vCPU, MiB, GiB), price per hour, share of
# aarch64, location jitter (km, standard deviation) around the metro.
_TYPES: dict[EdgeType, tuple[float, tuple[int, int, int], float, float, float]] = {
    EdgeType.IOT: (0.25, (4, 4096, 64), 0.02, 0.7, 60.0),
    EdgeType.MEC: (0.20, (32, 131072, 1024), 0.80, 0.1, 25.0),
    EdgeType.CDN: (0.15, (16, 65536, 2048), 0.40, 0.0, 20.0),
    EdgeType.ONPREM: (0.15, (24, 98304, 512), 0.30, 0.1, 40.0),
    EdgeType.TELCO: (0.15, (48, 196608, 1024), 0.60, 0.2, 30.0),
    EdgeType.CLOUD: (0.10, (96, 393216, 4096), 1.20, 0.2, 10.0),
}
ACCESS_RTT_MS = {
    EdgeType.MEC: 1.0,
    EdgeType.TELCO: 2.0,
    EdgeType.CDN: 2.0,
    EdgeType.ONPREM: 3.0,
    EdgeType.IOT: 5.0,
    EdgeType.CLOUD: 0.5,
}
IMAGE = "ubuntu-24.04"
SMALL_IMAGE = "alpine-3.20"
NODES_PER_SITE = 4


def _jitter(rng: random.Random, metro: Metro, sigma_km: float) -> Location:
    """A point around the metro, clipped to valid coordinates."""
    dlat = rng.gauss(0.0, sigma_km) / 111.19
    dlon = rng.gauss(0.0, sigma_km) / (111.19 * max(0.2, math.cos(math.radians(metro.lat))))
    lat = max(-89.9, min(89.9, metro.lat + dlat))
    lon = (metro.lon + dlon + 180.0) % 360.0 - 180.0
    return Location(round(lat, 5), round(lon, 5), metro.country)


def make_fleet(n: int, seed: int = 1, metros: tuple[Metro, ...] = METROS) -> list[NodeRow]:
    """`n` nodes around `metros`, drawn from the spreads above (deterministic in `seed`)."""
    rng = random.Random(seed)
    types = list(_TYPES)
    type_weights = [_TYPES[t][0] for t in types]
    metro_weights = [m.weight for m in metros]
    rows: list[NodeRow] = []
    for i in range(n):
        edge_type = rng.choices(types, type_weights)[0]
        _, (vcpus, mem, disk), price, arm_share, sigma = _TYPES[edge_type]
        if edge_type is EdgeType.ONPREM:  # on-prem boxes come in many sizes
            scale = rng.choice((0.5, 1.0, 1.0, 2.0))
            vcpus, mem, disk = int(vcpus * scale), int(mem * scale), int(disk * scale)
        metro = rng.choices(metros, metro_weights)[0]
        capacity = Capacity(vcpus, mem, disk)
        used = rng.uniform(0.0, 0.7)
        allocated = Capacity(int(vcpus * used), int(mem * used), int(disk * used * 0.5))
        vm_count = 0 if used < 0.05 else min(9, 1 + int(used * rng.randint(1, 8)))
        ready = rng.random() >= 0.02
        site = f"{metro.name}-{edge_type.value}-{i // NODES_PER_SITE % 50}"
        labels = {"site": site, "zone": metro.name}
        if rng.random() < 0.05:
            labels["gpu"] = "true"
        if rng.random() < 0.10:
            labels["pci-dss"] = "true"
        access = ACCESS_RTT_MS[edge_type]
        rtt: tuple[float, float, float] | None = None
        if rng.random() < 0.3:  # agents that report measured RTT (to the controller's region)
            p50 = access + rng.uniform(0.5, 40.0)
            rtt = (round(p50, 2), round(p50 * 1.4, 2), round(p50 * 2.2, 2))
        images = frozenset({SMALL_IMAGE} if edge_type is EdgeType.IOT else {IMAGE, SMALL_IMAGE})
        groups = {"web": 1} if rng.random() < 0.03 else {}
        rows.append(
            NodeRow(
                node_id=f"n{i:06d}",
                ready=ready,
                not_ready_reason="not ready" if rng.random() < 0.7 else "cordoned",
                capacity=capacity,
                allocated=allocated,
                vm_count=vm_count,
                location=_jitter(rng, metro, sigma),
                edge_type=edge_type,
                arch="aarch64" if rng.random() < arm_share else "x86_64",
                labels=labels,
                images=images,
                cost_per_hour=round(
                    price * rng.uniform(0.7, 1.3) * (vcpus / _TYPES[edge_type][1][0]), 4
                ),
                rtt_ms=rtt,
                groups=groups,
            )
        )
    return rows


_SIZES = ((1, 1024, 10), (2, 2048, 20), (2, 4096, 40), (4, 8192, 80), (8, 16384, 160))
_SIZE_WEIGHTS = (3, 4, 3, 2, 1)


def make_requests(
    n: int,
    seed: int = 2,
    metros: tuple[Metro, ...] = METROS,
    *,
    buffer: float = 0.15,
    max_vms_per_node: int = 10,
    default_latency_ms: float = 100.0,
    mode: PlacementMode = PlacementMode.SPREAD,
) -> list[PlacementRequest]:
    """A stream of `n` requests from users around `metros`: every user location is distinct,
    so the engine's static cache misses unless a test repeats a request on purpose."""
    rng = random.Random(seed)
    weights = [m.weight for m in metros]
    out: list[PlacementRequest] = []
    for _ in range(n):
        metro = rng.choices(metros, weights)[0]
        vcpus, mem, disk = rng.choices(_SIZES, _SIZE_WEIGHTS)[0]
        near: Location | None = _jitter(rng, metro, 30.0)
        if rng.random() < 0.05:  # no user location: ranked on measured RTT
            near = None
        max_latency = float(rng.randint(10, 50)) if rng.random() < 0.4 else 0.0
        countries: tuple[str, ...] = ()
        if rng.random() < 0.15:
            countries = (metro.country,)
        elif rng.random() < 0.05:
            countries = ("DE", "FR", "NL")
        edge_types: tuple[EdgeType, ...] = ()
        exclude: tuple[EdgeType, ...] = ()
        roll = rng.random()
        if roll < 0.15:
            edge_types = (EdgeType.MEC, EdgeType.TELCO)
        elif roll < 0.25:
            exclude = (EdgeType.IOT,)
        image = IMAGE
        arch = ""
        if rng.random() < 0.08:  # a small ARM workload for the IoT gateways
            image, arch, edge_types, exclude = SMALL_IMAGE, "aarch64", (EdgeType.IOT,), ()
            vcpus, mem, disk = 1, 512, 4
        labels: tuple[tuple[str, str], ...] = ()
        if rng.random() < 0.03:
            labels = (("gpu", "true"),)
        elif rng.random() < 0.05:
            labels = (("pci-dss", "true"),)
        group, scope = "", SpreadScope.NODE
        if rng.random() < 0.1:
            group = f"svc-{rng.randint(0, 20)}"
            scope = SpreadScope.SITE if rng.random() < 0.3 else SpreadScope.NODE
        cost_cap = round(rng.uniform(0.3, 1.5), 2) if rng.random() < 0.1 else 0.0
        constraints = PlacementConstraints(
            near=near,
            max_latency_ms=max_latency,
            latency_percentile=rng.choice((50, 95, 95, 99)),
            countries=countries,
            edge_types=edge_types,
            exclude_edge_types=exclude,
            arch=arch,
            required_labels=labels,
            spread_group=group,
            spread_scope=scope,
            max_cost_per_hour=cost_cap,
        )
        out.append(
            PlacementRequest(
                need=Capacity(vcpus, mem, disk),
                image=image,
                constraints=constraints,
                max_latency_ms=max_latency or default_latency_ms,
                mode=mode,
                buffer=buffer,
                max_vms_per_node=max_vms_per_node,
            )
        )
    return out
