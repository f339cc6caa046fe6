"""The physics of edge latency, shared by placement (estimates) and the lab (emulation).

Light in fiber covers about 200 km per millisecond one way, so a round trip over distance d
can never be faster than d / 100 km in ms; each edge type adds its access latency (radio,
last mile, gateway) on top. The lab emulates exactly this model, so the estimates placement
makes from distance are the latencies the lab's WAN then delivers.
"""

from __future__ import annotations

import math

from shared.domain import EdgeType

EARTH_RADIUS_KM = 6371.0088
FIBER_KM_PER_MS = 200.0  # one way
FIBER_KM_PER_MS_RTT = FIBER_KM_PER_MS / 2

# Round-trip access latency of each edge type, on top of the fiber path (ms).
ACCESS_RTT_MS: dict[EdgeType, float] = {
    EdgeType.MEC: 1.0,
    EdgeType.TELCO: 2.0,
    EdgeType.CDN: 2.0,
    EdgeType.ONPREM: 3.0,
    EdgeType.IOT: 5.0,
    EdgeType.CLOUD: 0.5,
}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def rtt_estimate_ms(distance_km: float, edge_type: EdgeType) -> float:
    """The physical lower bound of the RTT to a node of `edge_type` `distance_km` away."""
    return distance_km / FIBER_KM_PER_MS_RTT + ACCESS_RTT_MS[edge_type]
