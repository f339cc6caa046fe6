"""Hard constraints. Each filter returns a pass-mask over the context's rows and can say, for
one node or for a group of rejected nodes, why they did not pass."""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from controller.placement.request import Context, Key, PlacementRequest, Reads
from controller.placement.site_filters import ResidencyFilter, SiteFilter
from controller.placement.table import BOOL, EDGE_TYPES
from shared.domain import SpreadScope

IDX = npt.NDArray[np.intp]


class Filter(Protocol):
    name: str
    reads: Reads

    def key(self, request: PlacementRequest) -> Key:
        """The parts of the request the mask depends on (with `reads`, the cache key)."""
        ...

    def mask(self, ctx: Context) -> BOOL: ...

    def reason(self, ctx: Context, row: int) -> str:
        """Why the node at absolute table row `row` was rejected."""
        ...

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        """(count, phrase) groups for the `rows` (absolute) this filter rejected, e.g.
        [(3, "not ready")]."""
        ...


def _list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(items) + "]"


class ReadyFilter:
    name = "ready"
    reads = Reads.ROW

    def key(self, request: PlacementRequest) -> Key:
        return ()

    def mask(self, ctx: Context) -> BOOL:
        return ctx.table.ready[ctx.rows]

    def reason(self, ctx: Context, row: int) -> str:
        return ctx.table.not_ready_reason[row]

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        reasons = sorted({ctx.table.not_ready_reason[int(r)] for r in rows})
        return [(len(rows), f"{' or '.join(reasons)}")]


class ImageFilter:
    name = "image"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.image,)

    def mask(self, ctx: Context) -> BOOL:
        return ctx.table.image_mask(ctx.request.image)[ctx.rows]

    def reason(self, ctx: Context, row: int) -> str:
        image, t = ctx.request.image, ctx.table
        arch = t.foreign_image_arch(row, image)
        if arch:  # present, but built for another CPU: never placed there
            return f"image {image!r} is {arch}, node is {t.arches.words[t.arch[row]]}"
        return f"image {image!r} not present"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        image, t = ctx.request.image, ctx.table
        foreign: dict[str, int] = {}
        for row in rows:
            arch = t.foreign_image_arch(int(row), image)
            if arch:
                foreign[arch] = foreign.get(arch, 0) + 1
        groups = [
            (n, f"with image {image!r} only for {arch}") for arch, n in sorted(foreign.items())
        ]
        absent = len(rows) - sum(foreign.values())
        return groups + ([(absent, f"without image {image!r}")] if absent else [])


class ArchFilter:
    name = "arch"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.arch,)

    def mask(self, ctx: Context) -> BOOL:
        arch = ctx.request.constraints.arch
        if not arch:
            return np.ones(ctx.size, dtype=bool)
        return cast(BOOL, ctx.table.arch[ctx.rows] == ctx.table.arches.lookup(arch))

    def reason(self, ctx: Context, row: int) -> str:
        have = ctx.table.arches.words[ctx.table.arch[row]]
        return f"arch {have} is not {ctx.request.constraints.arch}"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        return [(len(rows), f"not {ctx.request.constraints.arch}")]


class EdgeTypeFilter:
    name = "edge_type"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.edge_types, request.constraints.exclude_edge_types)

    def mask(self, ctx: Context) -> BOOL:
        c, t, rows = ctx.request.constraints, ctx.table, ctx.rows
        ok = np.ones(ctx.size, dtype=bool)
        if c.edge_types:
            codes = tuple(sorted(EDGE_TYPES.index(e) for e in c.edge_types))
            ok &= t.codes_mask("edge_type", codes)[rows]
        if c.exclude_edge_types:
            codes = tuple(sorted(EDGE_TYPES.index(e) for e in c.exclude_edge_types))
            ok &= ~t.codes_mask("edge_type", codes)[rows]
        return ok

    def reason(self, ctx: Context, row: int) -> str:
        c = ctx.request.constraints
        have = EDGE_TYPES[ctx.table.edge_type[row]]
        if have in c.exclude_edge_types:
            return f"edge type {have} is excluded"
        return f"edge type {have} not in {_list([e.value for e in c.edge_types])}"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        c = ctx.request.constraints
        if c.edge_types:
            return [(len(rows), f"edge type not in {_list([e.value for e in c.edge_types])}")]
        return [(len(rows), "edge type excluded")]


class CountryFilter:
    name = "country"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.countries,)

    def mask(self, ctx: Context) -> BOOL:
        allowed = ctx.request.constraints.countries
        if not allowed:
            return np.ones(ctx.size, dtype=bool)
        codes = tuple(sorted(ctx.table.countries.lookup(c) for c in allowed))
        return ctx.table.codes_mask("country", codes)[ctx.rows]

    def reason(self, ctx: Context, row: int) -> str:
        have = ctx.table.countries.words[ctx.table.country[row]] or "unknown"
        return f"country {have} not in {_list(ctx.request.constraints.countries)}"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        return [(len(rows), f"country not in {_list(ctx.request.constraints.countries)}")]


class LabelFilter:
    name = "labels"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.required_labels,)

    def mask(self, ctx: Context) -> BOOL:
        ok = np.ones(ctx.size, dtype=bool)
        for key, value in ctx.request.constraints.required_labels:
            ok &= ctx.table.label_mask(key, value)[ctx.rows]
        return ok

    def reason(self, ctx: Context, row: int) -> str:
        labels = ctx.table.labels_of(row)
        missing = [
            f"{k}={v}" for k, v in ctx.request.constraints.required_labels if labels.get(k) != v
        ]
        return f"missing label {', '.join(missing)}"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        wanted = [f"{k}={v}" for k, v in ctx.request.constraints.required_labels]
        return [(len(rows), f"without labels {_list(wanted)}")]


class CostFilter:
    name = "cost"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.max_cost_per_hour,)

    def mask(self, ctx: Context) -> BOOL:
        cap = ctx.request.constraints.max_cost_per_hour
        cost = ctx.table.cost[ctx.rows]
        return cost <= cap if cap > 0 else np.ones(len(cost), dtype=bool)

    def reason(self, ctx: Context, row: int) -> str:
        cap = ctx.request.constraints.max_cost_per_hour
        return f"cost {ctx.table.cost[row]:.2f}/h > cap {cap:.2f}/h"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        cap = ctx.request.constraints.max_cost_per_hour
        return [(len(rows), f"cost > {cap:.2f}/h")]


class LatencyFilter:
    name = "latency"
    reads = Reads.SPATIAL

    def key(self, request: PlacementRequest) -> Key:
        return request.spatial_key()

    def mask(self, ctx: Context) -> BOOL:
        c = ctx.request.constraints
        if c.near is None and not c.max_latency_ms:
            # Without a user location the only latency known is the node's RTT to the
            # controller: a score, not a reason to refuse a node the request did not bound.
            return np.ones(ctx.size, dtype=bool)
        return ctx.latency_ms <= ctx.request.max_latency_ms

    def reason(self, ctx: Context, row: int) -> str:
        bound = ctx.request.max_latency_ms
        band = ctx.band
        if not band.start <= row < band.stop:  # pruned by the latitude band
            return f"latency > {bound:g} ms (too far for light in fiber)"
        ms = float(ctx.latency_ms[row - band.start])
        if not np.isfinite(ms):
            return "location unknown"
        kind = "est." if ctx.latency_estimated[row - band.start] else "measured"
        return f"latency {ms:.1f} ms ({kind}) > {bound:g} ms"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        return [(len(rows), f"latency > {ctx.request.max_latency_ms:g} ms")]


_RESOURCE_NAMES = (("vcpus", ""), ("memory", " MiB"), ("storage", " GiB"))


class ResourceFilter:
    name = "resources"
    reads = Reads.ROW

    def key(self, request: PlacementRequest) -> Key:
        return (request.need, request.buffer, request.max_vms_per_node)

    def _free(self, ctx: Context, rows: IDX) -> npt.NDArray[np.float64]:
        return ctx.table.free(ctx.request.buffer)[:, rows].T

    def _need(self, ctx: Context) -> npt.NDArray[np.float64]:
        n = ctx.request.need
        return np.array([n.vcpus, n.memory_mib, n.storage_gib], dtype=np.float64)

    def mask(self, ctx: Context) -> BOOL:
        free, need, rows = ctx.table.free(ctx.request.buffer), ctx.request.need, ctx.rows
        ok: BOOL = free[1][rows] >= need.memory_mib
        ok &= free[0][rows] >= need.vcpus
        if need.storage_gib:
            ok &= free[2][rows] >= need.storage_gib
        ok &= ctx.table.vm_count[rows] < ctx.request.max_vms_per_node
        return ok

    def reason(self, ctx: Context, row: int) -> str:
        free = self._free(ctx, np.array([row]))[0]
        need = self._need(ctx)
        for dim, (what, unit) in enumerate(_RESOURCE_NAMES):
            if free[dim] < need[dim]:
                return (
                    f"insufficient {what} (need {need[dim]:g}{unit}, free {max(free[dim], 0):.0f})"
                )
        return f"already runs {ctx.table.vm_count[row]} VMs (max {ctx.request.max_vms_per_node})"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        free = self._free(ctx, rows)
        need = self._need(ctx)
        short = free < need
        parts: list[tuple[int, str]] = []
        counted = np.zeros(len(rows), dtype=bool)
        for dim, (what, unit) in enumerate(_RESOURCE_NAMES):
            here = short[:, dim] & ~counted
            if here.any():
                most = max(float(free[here, dim].max()), 0.0)
                parts.append(
                    (
                        int(here.sum()),
                        f"insufficient {what} (need {need[dim]:g}{unit}, max free {most:.0f})",
                    )
                )
                counted |= here
        if not counted.all():
            limit = ctx.request.max_vms_per_node
            parts.append((int((~counted).sum()), f"at max_edge_vms_per_node ({limit})"))
        return parts


class SpreadFilter:
    name = "spread"
    reads = Reads.FLEET

    def key(self, request: PlacementRequest) -> Key:
        return (request.constraints.spread_group, request.constraints.spread_scope)

    def mask(self, ctx: Context) -> BOOL:
        c = ctx.request.constraints
        n = ctx.size
        counts = ctx.table.group_counts.get(c.spread_group) if c.spread_group else None
        if counts is None:
            return np.ones(n, dtype=bool)
        if c.spread_scope is SpreadScope.SITE:
            taken_sites = np.unique(ctx.table.site[counts > 0])
            return ~np.isin(ctx.table.site[ctx.rows], taken_sites)
        return counts[ctx.rows] == 0  # type: ignore[no-any-return]

    def reason(self, ctx: Context, row: int) -> str:
        c = ctx.request.constraints
        if c.spread_scope is SpreadScope.SITE:
            site = ctx.table.sites.words[ctx.table.site[row]]
            return f"site {site} already runs a VM of group {c.spread_group!r}"
        return f"already runs a VM of group {c.spread_group!r}"

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        c = ctx.request.constraints
        return [(len(rows), f"already run a VM of group {c.spread_group!r} (per {c.spread_scope})")]


FILTERS: dict[str, Filter] = {
    f.name: f
    for f in (
        ReadyFilter(),
        ImageFilter(),
        ArchFilter(),
        EdgeTypeFilter(),
        CountryFilter(),
        SiteFilter(),
        ResidencyFilter(),
        LabelFilter(),
        CostFilter(),
        LatencyFilter(),
        ResourceFilter(),
        SpreadFilter(),
    )
}
"""Registered filters, in the order they run (static ones first, cheapest first)."""
