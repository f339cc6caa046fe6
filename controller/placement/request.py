"""A placement request with the profile's defaults resolved, and the evaluation context."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.placement.geo import FIBER_KM_PER_MS_RTT, distances_km, radius_for_rtt_km
from controller.placement.site_policy import REGULATION_LABEL, SitePolicy
from controller.placement.table import BOOL, NodeTable
from shared.domain import Capacity, PlacementConstraints, PlacementMode, VMSpec

FLOATS = npt.NDArray[np.floating[Any]]
IDX = npt.NDArray[np.intp]

PERCENTILE_COLUMN = {50: 0, 95: 1, 99: 2}


class Reads(Enum):
    """What a plugin's result depends on, which decides how long the engine may keep it."""

    STATIC = "static"  # the request and columns that never change: cached per key
    SPATIAL = "spatial"  # the user's location / latency: cached per key for the band
    ROW = "row"  # a row's mutable columns only: cached, only changed rows recomputed
    FLEET = "fleet"  # mutable columns of other rows too (site spread): never cached


Key = tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    need: Capacity
    image: str
    constraints: PlacementConstraints
    max_latency_ms: float
    mode: PlacementMode
    buffer: float  # head-room kept free on every node (edge_resource_buffer)
    max_vms_per_node: int
    policy: SitePolicy = field(default_factory=SitePolicy)  # fleet-wide rules (site_policy.py)
    regulation: str = ""  # the VM's `regulation` label: its data residency rule

    @staticmethod
    def from_spec(
        spec: VMSpec,
        *,
        max_latency_ms: float,
        mode: PlacementMode,
        buffer: float,
        max_vms_per_node: int,
        policy: SitePolicy | None = None,
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
            policy=policy or SitePolicy(),
            regulation=spec.labels.get(REGULATION_LABEL, "").upper(),
        )

    def spatial_key(self) -> Key:
        """Everything the latency band and latency figures depend on."""
        c = self.constraints
        return (c.near, c.max_latency_ms, c.latency_percentile, self.max_latency_ms)


class Context:
    """What plugins see: the request, the table, the rows under consideration and each row's
    latency. `rows` is the latitude band of a decision (a slice of the latitude-sorted table),
    the whole table (for plugins whose result is cached across requests), or the few rows a
    reservation changed (an index array). Latency is worked out on first use: plugins that
    never read it never pay for the distance kernel."""

    __slots__ = ("_distance", "_estimated", "_latency", "request", "rows", "size", "table")

    def __init__(self, table: NodeTable, request: PlacementRequest, rows: slice | IDX) -> None:
        self.table = table
        self.request = request
        self.rows = rows
        self.size = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        self._latency: FLOATS | None = None
        self._estimated: BOOL | None = None
        self._distance: FLOATS | None = None

    @staticmethod
    def for_decision(table: NodeTable, request: PlacementRequest) -> Context:
        return Context(table, request, Context.rows_for(table, request))

    @property
    def band(self) -> slice:
        """The rows as a slice: decisions and explanations always look at one."""
        assert isinstance(self.rows, slice), "explanations need a contiguous band"
        return self.rows

    def absolute(self, rel: int) -> int:
        """The table row of the context's `rel`-th row."""
        if isinstance(self.rows, slice):
            return int(self.rows.start) + rel
        return int(self.rows[rel])

    def absolute_rows(self, rel: IDX) -> IDX:
        """The table rows of the context's rows `rel`."""
        if isinstance(self.rows, slice):
            return rel + int(self.rows.start)
        return self.rows[rel]

    @property
    def latency_ms(self) -> FLOATS:
        if self._latency is None:
            self._measure()
        assert self._latency is not None
        return self._latency

    @property
    def latency_estimated(self) -> BOOL:
        if self._estimated is None:
            self._measure()
        assert self._estimated is not None
        return self._estimated

    @property
    def distance_km(self) -> FLOATS | None:
        """Distance from the user, or None when the request has no user location."""
        if self._latency is None:
            self._measure()
        return self._distance

    def _measure(self) -> None:
        table, rows, c = self.table, self.rows, self.request.constraints
        access = table.access_ms[rows]
        if c.near is not None:
            distance = distances_km(table.xyz[:, rows], c.near.latitude, c.near.longitude)
            latency = distance / np.float32(FIBER_KM_PER_MS_RTT)
            latency += access
            latency[~table.has_location[rows]] = math.inf
            self._distance = distance
            self._estimated = np.ones(len(access), dtype=bool)
        else:
            measured = table.rtt[rows, PERCENTILE_COLUMN.get(c.latency_percentile, 1)]
            self._estimated = np.isnan(measured)
            latency = np.where(self._estimated, access, measured)
        self._latency = latency

    @staticmethod
    def rows_for(table: NodeTable, request: PlacementRequest) -> slice:
        """With a user location and a latency bound, nodes outside the latitude band that
        light in fiber could cover in time are never looked at."""
        near = request.constraints.near
        if near is None or not math.isfinite(request.max_latency_ms):
            return slice(0, len(table))
        return table.latitude_band(near.latitude, radius_for_rtt_km(request.max_latency_ms))
