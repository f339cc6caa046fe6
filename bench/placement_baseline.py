"""The straightforward implementation of the spec's "Placement Algorithm" the benchmarks divide by.

One Python loop over every node per decision: hard filters (readiness, image, arch, edge type,
countries, labels, cost cap, latency bound, resources with `edge_resource_buffer` head-room and
`max_edge_vms_per_node`, spread groups), then the weighted score with the formulas of
controller/placement/scores.py, then the highest score (ties: lowest node id). Distances are
the spec's haversine in float64. Nothing is cached, indexed or vectorised: this is the code a
reader of the spec would write first, and the point of the ratios is how far the columnar
engine is from it. It doubles as an oracle: on the same inputs it must pick the engine's node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.placement import DEFAULT_WEIGHTS, NodeRow, PlacementRequest
from controller.placement.geo import (
    ACCESS_RTT_MS,
    FIBER_KM_PER_MS_RTT,
    PROXIMITY_SCALE_KM,
    haversine_km,
)
from shared.domain import PlacementMode, SpreadScope

TIE = 1e-12  # the engine's: scores this close are equal, the lowest node id wins
KM_PER_DEGREE = 111.19
PERCENTILE_COLUMN = {50: 0, 95: 1, 99: 2}


@dataclass(slots=True)
class _Node:
    """A node with its mutable bookings (what the controller's store would hold)."""

    row: NodeRow
    lat: float
    alloc: list[float]  # vCPU, MiB, GiB
    vm_count: int
    groups: dict[str, int]
    site: str


@dataclass(frozen=True, slots=True)
class Decision:
    node_id: str | None
    feasible: frozenset[str]
    scores: dict[str, float]  # node id -> weighted total, feasible nodes only


class Baseline:
    def __init__(self, rows: Sequence[NodeRow], weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.max_cost = max((r.cost_per_hour for r in rows), default=0.0)
        self.nodes = [
            _Node(
                row=r,
                lat=r.location.latitude if r.location else 0.0,
                alloc=[
                    float(r.allocated.vcpus),
                    float(r.allocated.memory_mib),
                    float(r.allocated.storage_gib),
                ],
                vm_count=r.vm_count,
                groups=dict(r.groups),
                site=r.labels.get("site", r.node_id),
            )
            for r in rows
        ]
        self.by_id = {n.row.node_id: n for n in self.nodes}

    # -- per node ---------------------------------------------------------------------------

    def latency_ms(self, node: _Node, request: PlacementRequest) -> float:
        """Estimated RTT from the users (light in fiber + the edge type's access latency), or
        the agent's measured RTT when the request names no user location."""
        r, c = node.row, request.constraints
        access = ACCESS_RTT_MS[r.edge_type]
        if c.near is not None:
            if r.location is None:
                return math.inf
            km = haversine_km(
                c.near.latitude, c.near.longitude, r.location.latitude, r.location.longitude
            )
            return km / FIBER_KM_PER_MS_RTT + access
        if r.rtt_ms is not None:
            return r.rtt_ms[PERCENTILE_COLUMN.get(c.latency_percentile, 1)]
        return access

    def static_ok(self, node: _Node, request: PlacementRequest, latency: float) -> bool:
        """The filters that do not depend on bookings."""
        r, c = node.row, request.constraints
        if request.image not in r.images:
            return False
        if c.arch and r.arch != c.arch:
            return False
        if c.edge_types and r.edge_type not in c.edge_types:
            return False
        if c.exclude_edge_types and r.edge_type in c.exclude_edge_types:
            return False
        if c.countries and (r.location.country_code if r.location else "") not in c.countries:
            return False
        for key, value in c.required_labels:
            if r.labels.get(key) != value:
                return False
        if c.max_cost_per_hour > 0 and r.cost_per_hour > c.max_cost_per_hour:
            return False
        return latency <= request.max_latency_ms

    def fits(self, node: _Node, request: PlacementRequest) -> bool:
        """Resources after the head-room buffer, and the per-node VM limit."""
        cap, need, keep = node.row.capacity, request.need, 1.0 - request.buffer
        if cap.memory_mib * keep - node.alloc[1] < need.memory_mib:
            return False
        if cap.vcpus * keep - node.alloc[0] < need.vcpus:
            return False
        if need.storage_gib and cap.storage_gib * keep - node.alloc[2] < need.storage_gib:
            return False
        return node.vm_count < request.max_vms_per_node

    def utilisation(self, node: _Node, request: PlacementRequest) -> float:
        cap, need, keep = node.row.capacity, request.need, 1.0 - request.buffer
        headroom = 0.0
        for usable, used, wanted in (
            (cap.vcpus * keep, node.alloc[0], need.vcpus),
            (cap.memory_mib * keep, node.alloc[1], need.memory_mib),
        ):
            if usable > 0:
                headroom += (usable - used - wanted) / usable
        return min(max(1.0 - 0.5 * headroom, 0.0), 1.0)

    # -- per decision -----------------------------------------------------------------------

    def evaluate(self, request: PlacementRequest) -> Decision:
        c = request.constraints
        group = c.spread_group
        taken_sites: set[str] = set()
        if group and c.spread_scope is SpreadScope.SITE:
            taken_sites = {n.site for n in self.nodes if n.groups.get(group, 0) > 0}
        # The baseline skips the same latitude band the engine never looks at (nodes light in
        # fiber cannot reach in time); the cost score is normalised by the fleet's dearest node.
        band = math.inf
        if c.near is not None and math.isfinite(request.max_latency_ms):
            radius_km = max(0.0, request.max_latency_ms) * FIBER_KM_PER_MS_RTT
            band = radius_km / KM_PER_DEGREE + 1e-9
        user_lat = c.near.latitude if c.near is not None else 0.0
        top_cost = self.max_cost
        candidates: list[tuple[_Node, float]] = []
        for node in self.nodes:
            if abs(node.lat - user_lat) > band:
                continue
            if not node.row.ready:
                continue
            latency = self.latency_ms(node, request)
            if not self.static_ok(node, request, latency):
                continue
            if not self.fits(node, request):
                continue
            if group:
                if c.spread_scope is SpreadScope.SITE:
                    if node.site in taken_sites:
                        continue
                elif node.groups.get(group, 0) > 0:
                    continue
            candidates.append((node, latency))

        scores: dict[str, float] = {}
        w = self.weights
        for node, latency in candidates:
            total = 0.0
            if w.get("latency", 0.0) > 0:
                total += w["latency"] * (1.0 - min(latency / request.max_latency_ms, 1.0))
            if w.get("resources", 0.0) > 0:
                u = self.utilisation(node, request)
                total += w["resources"] * (u if request.mode is PlacementMode.BINPACK else 1 - u)
            if w.get("cost", 0.0) > 0:
                cost = 1.0 - node.row.cost_per_hour / top_cost if top_cost > 0 else 1.0
                total += w["cost"] * cost
            if w.get("proximity", 0.0) > 0 and c.near is not None and node.row.location:
                loc = node.row.location
                km = haversine_km(c.near.latitude, c.near.longitude, loc.latitude, loc.longitude)
                total += w["proximity"] * (1.0 - min(km / PROXIMITY_SCALE_KM, 1.0))
            scores[node.row.node_id] = total

        best: str | None = None
        if scores:
            top = max(scores.values())
            best = min(node_id for node_id, s in scores.items() if s >= top - TIE)
        return Decision(best, frozenset(scores), scores)

    def place(self, request: PlacementRequest) -> str | None:
        """Decide and book the capacity (None when nothing fits)."""
        node_id = self.evaluate(request).node_id
        if node_id is not None:
            node, need = self.by_id[node_id], request.need
            node.alloc[0] += need.vcpus
            node.alloc[1] += need.memory_mib
            node.alloc[2] += need.storage_gib
            node.vm_count += 1
            group = request.constraints.spread_group
            if group:
                node.groups[group] = node.groups.get(group, 0) + 1
        return node_id
