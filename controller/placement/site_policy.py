"""Fleet-wide hard rules from the configuration (edge_computing: min_edge_resources, the
enable_* edge types, allowed_regions, data_residency_rules; policies.data_residency), resolved
once at start-up into what the `site` and `residency` filters compare against.

Regions are named by the codes the spec uses ("EU", "US"), by "EEA", or by an ISO 3166-1
alpha-2 country code; nodes report a country (agent.location.country), never a region, so a
region is the list of its countries. "US:CCPA" therefore means the United States: nodes say
their country, not their state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.domain import Capacity, EdgeType
from shared.errors import ConfigError

_EU = "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK"
EU = frozenset(_EU.split())  # the 27 member states (ISO codes: Greece is GR)
REGIONS: dict[str, frozenset[str]] = {
    "EU": EU,
    "EEA": EU | {"IS", "LI", "NO"},
    "US": frozenset({"US"}),
}
REGULATION_LABEL = "regulation"  # a VM label: `regulation: GDPR` keeps it where GDPR says
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def countries_of(region: str, where: str) -> frozenset[str]:
    """The ISO country codes of `region` (a region code or one country code)."""
    code = region.strip().upper()
    if code in REGIONS:
        return REGIONS[code]
    if _COUNTRY.match(code):
        return frozenset({code})
    raise ConfigError(
        f"{where}: {region!r} is neither a region ({', '.join(sorted(REGIONS))}) nor an "
        "ISO 3166-1 alpha-2 country code"
    )


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """What every node must be, and where each regulation's VMs may run. Hashable: it is
    part of the filters' cache key."""

    min_capacity: Capacity = field(default_factory=Capacity)
    disabled_edge_types: tuple[EdgeType, ...] = ()
    countries: tuple[str, ...] | None = None  # allowed_regions as countries; None = "*"
    # regulation (upper case) -> the countries its VMs may run in, and where that was said
    residency: tuple[tuple[str, tuple[str, ...], str], ...] = ()

    @property
    def restricts_nodes(self) -> bool:
        return (
            self.min_capacity != Capacity()
            or bool(self.disabled_edge_types)
            or self.countries is not None
        )

    def residency_of(self, regulation: str) -> tuple[tuple[str, ...], str] | None:
        for name, countries, source in self.residency:
            if name == regulation.upper():
                return countries, source
        return None

    @property
    def regulations(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.residency)


def residency_rules(
    rules: tuple[tuple[str, frozenset[str], str], ...],
) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """(regulation, countries, source) entries merged per regulation: where two entries name
    one regulation, its VMs may run only where both allow (the strictest)."""
    merged: dict[str, tuple[frozenset[str], list[str]]] = {}
    for regulation, countries, source in rules:
        key = regulation.upper()
        if key in merged:
            have, sources = merged[key]
            merged[key] = (have & countries, [*sources, source])
        else:
            merged[key] = (countries, [source])
    return tuple(
        (name, tuple(sorted(countries)), " and ".join(sources))
        for name, (countries, sources) in sorted(merged.items())
    )
