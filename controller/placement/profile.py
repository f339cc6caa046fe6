"""Which filters run and how scores are weighed, validated once at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.placement.filters import FILTERS
from controller.placement.scores import SCORERS
from shared.domain import PlacementMode
from shared.errors import ConfigError

DEFAULT_WEIGHTS = {"latency": 0.5, "resources": 0.3, "cost": 0.2, "proximity": 0.0}


@dataclass(frozen=True, slots=True)
class PlacementProfile:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    filters: tuple[str, ...] = tuple(FILTERS)
    mode: PlacementMode = PlacementMode.SPREAD
    max_edge_latency_ms: float = 100.0
    edge_resource_buffer: float = 0.15
    max_edge_vms_per_node: int = 10

    def __post_init__(self) -> None:
        where = "edge_computing"
        for name in self.filters:
            if name not in FILTERS:
                raise ConfigError(
                    f"{where}.placement_filters: unknown filter {name!r} "
                    f"(known: {', '.join(FILTERS)})"
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
