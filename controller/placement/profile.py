"""Which filters run and how scores are weighed, validated once at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.placement.filters import FILTERS
from controller.placement.scores import SCORERS
from controller.placement.site_policy import SitePolicy
from shared.domain import PlacementMode
from shared.errors import ConfigError

_ENFORCES = {
    "site": "min_edge_resources, the enable_* edge types and allowed_regions",
    "residency": "the data residency rules of VMs labelled `regulation`",
}
DEFAULT_WEIGHTS = {"latency": 0.5, "resources": 0.3, "cost": 0.2, "proximity": 0.0}


@dataclass(frozen=True, slots=True)
class PlacementProfile:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    filters: tuple[str, ...] = tuple(FILTERS)
    mode: PlacementMode = PlacementMode.SPREAD
    max_edge_latency_ms: float = 100.0
    edge_resource_buffer: float = 0.15
    max_edge_vms_per_node: int = 10
    site_policy: SitePolicy = field(default_factory=SitePolicy)
    target_placement_ms: float = math.inf  # a decision slower than this is logged

    def __post_init__(self) -> None:
        where = "edge_computing"
        for name in self.filters:
            if name not in FILTERS:
                raise ConfigError(
                    f"{where}.placement_filters: unknown filter {name!r} "
                    f"(known: {', '.join(FILTERS)})"
                )
        needs = {
            "site": self.site_policy.restricts_nodes,
            "residency": bool(self.site_policy.residency),
        }
        for name, needed in needs.items():
            if needed and name not in self.filters:
                raise ConfigError(
                    f"{where}.placement_filters: leaves out {name!r}, which enforces "
                    f"{_ENFORCES[name]}; add it"
                )
        for name, weight in self.weights.items():
            if name not in SCORERS:
                raise ConfigError(
                    f"{where}.placement_weights.{name}: unknown scorer "
                    f"(known: {', '.join(SCORERS)})"
                )
            if not isinstance(weight, int | float) or math.isnan(weight) or weight < 0:
                raise ConfigError(
                    f"{where}.placement_weights.{name}: weight must be a number >= 0, "
                    f"got {weight!r}"
                )
            if math.isinf(weight):
                raise ConfigError(f"{where}.placement_weights.{name}: weight must be finite")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(f"{where}.placement_weights: at least one weight must be > 0")
        if not 0.0 <= self.edge_resource_buffer < 1.0:
            raise ConfigError(f"{where}.edge_resource_buffer: must be in [0, 1)")
        if self.max_edge_vms_per_node < 1:
            raise ConfigError(f"{where}.max_edge_vms_per_node: must be >= 1")
        if not self.max_edge_latency_ms > 0:
            raise ConfigError(f"{where}.max_edge_latency: must be > 0")
