"""The configuration's hard rules as placement filters (see site_policy.py): a node below
min_edge_resources, of a disabled edge type or outside allowed_regions is never chosen; a VM
labelled `regulation: X` lands only in the countries X's residency rule allows. Each rejected
node says which rule and which key."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from controller.placement.request import Context, Key, PlacementRequest, Reads
from controller.placement.site_policy import SitePolicy
from controller.placement.table import BOOL, EDGE_TYPES

IDX = npt.NDArray[np.intp]
_MINIMUMS = (
    (0, "vCPUs", "min_cpu_cores", ""),
    (1, "memory", "min_memory_mb", " MiB"),
    (2, "storage", "min_storage_gb", " GiB"),
)
_KEY = "edge_computing.min_edge_resources"


def _country_mask(ctx: Context, countries: tuple[str, ...]) -> BOOL:
    codes = tuple(sorted(c for c in (ctx.table.countries.lookup(x) for x in countries) if c >= 0))
    return ctx.table.codes_mask("country", codes)[ctx.rows]


def _country(ctx: Context, row: int) -> str:
    return ctx.table.countries.words[ctx.table.country[row]] or "unknown"


class SiteFilter:
    """Nodes the fleet's configuration excludes, whatever the VM."""

    name = "site"
    reads = Reads.STATIC  # capacity, edge type and country never change within a table

    def key(self, request: PlacementRequest) -> Key:
        return (request.policy,)

    def mask(self, ctx: Context) -> BOOL:
        policy, table, rows = ctx.request.policy, ctx.table, ctx.rows
        ok = np.ones(ctx.size, dtype=bool)
        if not policy.restricts_nodes:
            return ok
        m = policy.min_capacity
        minimum = np.array([m.vcpus, m.memory_mib, m.storage_gib], dtype=np.float64)
        ok &= (table.cap[rows] >= minimum).all(axis=1)
        if policy.disabled_edge_types:
            codes = tuple(sorted(EDGE_TYPES.index(e) for e in policy.disabled_edge_types))
            ok &= ~table.codes_mask("edge_type", codes)[rows]
        if policy.countries is not None:
            ok &= _country_mask(ctx, policy.countries)
        return ok

    def reason(self, ctx: Context, row: int) -> str:
        return self._why(ctx.request.policy, ctx, row)[1]

    def _why(self, policy: SitePolicy, ctx: Context, row: int) -> tuple[str, str]:
        """(group phrase, this node's reason)."""
        table = ctx.table
        m = policy.min_capacity
        for dim, what, key, unit in _MINIMUMS:
            need = (m.vcpus, m.memory_mib, m.storage_gib)[dim]
            have = float(table.cap[row, dim])
            if have < need:
                return (
                    f"{what} below {_KEY}.{key} ({need}{unit})",
                    f"{have:.0f}{unit} {what} is below {_KEY}.{key} ({need}{unit})",
                )
        edge = EDGE_TYPES[table.edge_type[row]]
        if edge in policy.disabled_edge_types:
            key = _ENABLE_KEY[edge]
            return (f"edge type {edge} disabled", f"edge type {edge} is disabled ({key}: false)")
        allowed = ", ".join(policy.countries or ())
        return (
            "outside edge_computing.allowed_regions",
            f"country {_country(ctx, row)} is outside edge_computing.allowed_regions ([{allowed}])",
        )

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        counts: dict[str, int] = {}
        for row in rows:
            phrase = self._why(ctx.request.policy, ctx, int(row))[0]
            counts[phrase] = counts.get(phrase, 0) + 1
        return [(n, phrase) for phrase, n in sorted(counts.items())]


class ResidencyFilter:
    """A VM labelled `regulation: X` may only run in the countries X's rule allows."""

    name = "residency"
    reads = Reads.STATIC

    def key(self, request: PlacementRequest) -> Key:
        return (request.policy.residency, request.regulation)

    def mask(self, ctx: Context) -> BOOL:
        regulation = ctx.request.regulation
        if not regulation:
            return np.ones(ctx.size, dtype=bool)
        rule = ctx.request.policy.residency_of(regulation)
        if rule is None:
            return np.zeros(ctx.size, dtype=bool)
        return _country_mask(ctx, rule[0])

    def reason(self, ctx: Context, row: int) -> str:
        regulation = ctx.request.regulation
        rule = ctx.request.policy.residency_of(regulation)
        if rule is None:
            return self._no_rule(ctx)
        countries, source = rule
        return (
            f"country {_country(ctx, row)} is not where {regulation} allows "
            f"([{', '.join(countries)}], {source})"
        )

    def _no_rule(self, ctx: Context) -> str:
        known = ", ".join(ctx.request.policy.regulations) or "none"
        return (
            f"no residency rule for regulation {ctx.request.regulation!r} (the VM's label "
            f"'regulation'; rules: {known}; edge_computing.data_residency_rules or "
            "policies.data_residency)"
        )

    def summary(self, ctx: Context, rows: IDX) -> list[tuple[int, str]]:
        rule = ctx.request.policy.residency_of(ctx.request.regulation)
        if rule is None:
            return [(len(rows), self._no_rule(ctx))]
        return [(len(rows), f"outside {ctx.request.regulation}'s countries")]


_ENABLE_KEY = {
    "mec": "edge_computing.enable_mec",
    "iot": "edge_computing.enable_iot_gateway",
    "cdn": "edge_computing.enable_cdn_edge",
    "telco": "edge_computing.enable_telco_edge",
}
