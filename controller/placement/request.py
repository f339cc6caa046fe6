"""A placement request with the profile's defaults resolved, and the evaluation context."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.placement.geo import FIBER_KM_PER_MS_RTT, distances_km, radius_for_rtt_km
from controller.placement.table import BOOL, NodeTable
from shared.domain import Capacity, PlacementConstraints, PlacementMode, VMSpec

FLOATS = npt.NDArray[np.floating[Any]]

PERCENTILE_COLUMN = {50: 0, 95: 1, 99: 2}


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    need: Capacity
    image: str
    constraints: PlacementConstraints
    max_latency_ms: float
    mode: PlacementMode
    buffer: float  # head-room kept free on every node (edge_resource_buffer)
    max_vms_per_node: int

    @staticmethod
    def from_spec(
        spec: VMSpec,
        *,
        max_latency_ms: float,
        mode: PlacementMode,
        buffer: float,
        max_vms_per_node: int,
    ) -> PlacementRequest:
        c = spec.placement
        return PlacementRequest(
            need=spec.capacity(),
            image=spec.image,
            constraints=c,
            max_latency_ms=c.max_latency_ms or max_latency_ms,
            mode=c.mode or mode,
            buffer=buffer,
            max_vms_per_node=max_vms_per_node,
        )

    def static_key(self) -> tuple[object, ...]:
        """Everything static filters and scores depend on (cache key)."""
        return (self.image, self.constraints, self.max_latency_ms)


class Context:
    """What plugins see: the request, the table, the rows under consideration (a slice of the
    latitude-sorted table) and each row's latency, worked out once per distinct request."""

    __slots__ = ("distance_km", "latency_estimated", "latency_ms", "request", "rows", "table")

    def __init__(
        self,
        table: NodeTable,
        request: PlacementRequest,
        rows: slice,
        latency_ms: FLOATS,
        latency_estimated: BOOL,
        distance_km: FLOATS | None,
    ) -> None:
        self.table = table
        self.request = request
        self.rows = rows
        self.latency_ms = latency_ms
        self.latency_estimated = latency_estimated
        self.distance_km = distance_km

    @staticmethod
    def build(table: NodeTable, request: PlacementRequest) -> Context:
        rows = Context.rows_for(table, request)
        c = request.constraints
        access = table.access_ms[rows]
        distance: FLOATS | None = None
        if c.near is not None:
            distance = distances_km(table.xyz[:, rows], c.near.latitude, c.near.longitude)
            latency = distance / np.float32(FIBER_KM_PER_MS_RTT)
            latency += access
            latency[~table.has_location[rows]] = math.inf
            estimated: BOOL = np.ones(len(access), dtype=bool)
        else:
            measured = table.rtt[rows, PERCENTILE_COLUMN.get(c.latency_percentile, 1)]
            estimated = np.isnan(measured)
            latency = np.where(estimated, access, measured)
        return Context(table, request, rows, latency, estimated, distance)

    def for_request(self, request: PlacementRequest) -> Context:
        """The same static view for another request with the same static key."""
        return Context(
            self.table, request, self.rows, self.latency_ms, self.latency_estimated,
            self.distance_km,
        )  # fmt: skip

    def narrowed(self, rel: int) -> Context:
        """This context restricted to one row (slice-relative), for incremental updates."""
        row = self.rows.start + rel
        return Context(
            self.table,
            self.request,
            slice(row, row + 1),
            self.latency_ms[rel : rel + 1],
            self.latency_estimated[rel : rel + 1],
            None if self.distance_km is None else self.distance_km[rel : rel + 1],
        )

    @staticmethod
    def rows_for(table: NodeTable, request: PlacementRequest) -> slice:
        """With a user location and a latency bound, nodes outside the latitude band that
        light in fiber could cover in time are never looked at."""
        near = request.constraints.near
        if near is None or not math.isfinite(request.max_latency_ms):
            return slice(0, len(table))
        return table.latitude_band(near.latitude, radius_for_rtt_km(request.max_latency_ms))
