"""Soft preferences: each scorer gives every candidate a value in [0, 1]; the profile weighs
them (spec "Placement Algorithm": latency 0.5, resources 0.3, cost 0.2, proximity 0.0)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controller.placement.geo import PROXIMITY_SCALE_KM
from controller.placement.request import Context, Key, PlacementRequest, Reads
from shared.domain import PlacementMode

F64 = npt.NDArray[np.floating[Any]]
IDX = npt.NDArray[np.intp]


class Scorer(Protocol):
    name: str
    reads: Reads

    def key(self, request: PlacementRequest) -> Key:
        """The parts of the request the score depends on (with `reads`, the cache key)."""
        ...

    def score(self, ctx: Context) -> F64:
        """Raw scores in [0, 1] for every row of the context (candidates or not)."""
        ...

    def note(self, ctx: Context, rel: int) -> str:
        """What the raw value came from, for explanations."""
        ...


class LatencyScore:
    """1 - min(latency / max_latency, 1): the spec's formula, on measured RTT where agents
    report it, else on the physical-bound estimate from distance (marked "est.")."""

    name = "latency"
    reads = Reads.SPATIAL

    def key(self, request: PlacementRequest) -> Key:
        return request.spatial_key()

    def score(self, ctx: Context) -> F64:
        # in place: at 100k rows every temporary array costs as much as the arithmetic
        score: F64 = ctx.latency_ms * (1.0 / ctx.request.max_latency_ms)
        np.minimum(score, 1.0, out=score)  # unknown location: inf -> 1 -> score 0
        np.subtract(1.0, score, out=score)
        return score

    def note(self, ctx: Context, rel: int) -> str:
        ms = float(ctx.latency_ms[rel])
        if not ctx.latency_estimated[rel]:
            return f"measured p{ctx.request.constraints.latency_percentile} {ms:.1f} ms"
        if ctx.distance_km is not None:
            return f"est. {ms:.1f} ms RTT over {float(ctx.distance_km[rel]):.0f} km"
        return f"est. {ms:.1f} ms (access latency of the edge type; no measurement)"


class ResourceScore:
    """Utilisation after placing the VM (mean of vCPU and memory, buffer excluded). Spread mode
    is the spec's 1 - utilisation; bin-pack mode prefers the fullest node that fits."""

    name = "resources"
    reads = Reads.ROW

    def key(self, request: PlacementRequest) -> Key:
        return (request.need.vcpus, request.need.memory_mib, request.buffer, request.mode)

    def utilisation(self, ctx: Context) -> F64:
        free, inv, rows = (
            ctx.table.free(ctx.request.buffer),
            ctx.table.inv_usable(ctx.request.buffer),
            ctx.rows,
        )
        need = ctx.request.need
        headroom: F64 = free[0][rows] - need.vcpus
        headroom *= inv[0][rows]
        memory = free[1][rows] - need.memory_mib
        memory *= inv[1][rows]
        headroom += memory
        headroom *= -0.5
        headroom += 1.0
        np.maximum(headroom, 0.0, out=headroom)  # ufuncs: np.clip's wrapper costs more
        np.minimum(headroom, 1.0, out=headroom)  # than the arithmetic for a few rows
        return headroom

    def score(self, ctx: Context) -> F64:
        u = self.utilisation(ctx)
        return u if ctx.request.mode is PlacementMode.BINPACK else 1.0 - u

    def note(self, ctx: Context, rel: int) -> str:
        u = float(self.utilisation(ctx)[rel])
        return f"{u:.0%} utilised after placing ({ctx.request.mode})"


class CostScore:
    """1 - cost / the fleet's dearest node (all free: 1); fleet-wide, so a node's score does
    not depend on which others a request happened to consider."""

    name = "cost"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return ()

    def score(self, ctx: Context) -> F64:
        cost, top = ctx.table.cost[ctx.rows], ctx.table.max_cost
        return 1.0 - cost / top if top > 0 else np.ones(len(cost))

    def note(self, ctx: Context, rel: int) -> str:
        return f"{float(ctx.table.cost[ctx.absolute(rel)]):.3f}/h"


class ProximityScore:
    """1 - min(distance / 5000 km, 1) from the request's user location (0 without one)."""

    name = "proximity"
    reads = Reads.SPATIAL

    def key(self, request: PlacementRequest) -> Key:
        return request.spatial_key()

    def score(self, ctx: Context) -> F64:
        if ctx.distance_km is None:
            return np.zeros(ctx.size)
        score: F64 = 1.0 - np.minimum(ctx.distance_km / PROXIMITY_SCALE_KM, 1.0)
        return score

    def note(self, ctx: Context, rel: int) -> str:
        if ctx.distance_km is None:
            return "no user location"
        return f"{float(ctx.distance_km[rel]):.0f} km"


SCORERS: dict[str, Scorer] = {
    s.name: s for s in (LatencyScore(), ResourceScore(), CostScore(), ProximityScore())
}
