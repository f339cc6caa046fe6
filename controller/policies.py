"""The spec's `policies:` section, typed and validated. A kind of policy is kept only where
something enforces it: `security` (controller/security_policy.py) and `data_residency` (the
`residency` placement filter: a VM labelled `regulation: GDPR` lands only in the countries of
the GDPR policy). Latency SLA and cost policies are checked, then refused: nothing enforces
them yet (issue 12 leaves enforcement to a later issue), and a policy kept silently would
promise what no code keeps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.placement.site_policy import countries_of
from controller.security_policy import SecurityPolicy
from shared.config import build, did_you_mean, read_yaml
from shared.errors import ConfigError

LATER = "not enforced yet (issue 12 leaves enforcement to a later issue)"
GOALS = ("balanced", "cost", "performance")


@dataclass(frozen=True, slots=True)
class DataResidencyPolicy:
    name: str = ""
    allowed_countries: tuple[str, ...] = ()
    encryption_required: bool = False
    regulation: str = ""

    def problems(self, where: str) -> list[str]:
        out = []
        if not self.regulation.strip():
            out.append(
                f"{where}.regulation: required: it names the VMs the policy applies to (those "
                "labelled `regulation: <it>`)"
            )
        if not self.allowed_countries:
            out.append(f"{where}.allowed_countries: required (ISO codes, or EU, EEA, US)")
        for i, country in enumerate(self.allowed_countries):
            try:
                countries_of(country, f"{where}.allowed_countries[{i}]")
            except ConfigError as exc:
                out.append(str(exc))
        if self.encryption_required:
            out.append(
                f"{where}.encryption_required: true is refused: VM disks are not encrypted at "
                "rest (traffic between sites is, on the WireGuard mesh), so nothing could keep "
                "it; set it to false until disk encryption exists"
            )
        return out

    def countries(self) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for country in self.allowed_countries:
            found |= countries_of(country, "")
        return found


@dataclass(frozen=True, slots=True)
class LatencySlaPolicy:
    name: str = ""
    target_latency_ms: float = 0.0
    max_latency_ms: float = 0.0
    percentile: float = 99.0

    def problems(self, where: str) -> list[str]:
        out = []
        if not 0 < self.target_latency_ms <= self.max_latency_ms:
            out.append(f"{where}: need 0 < target_latency_ms <= max_latency_ms")
        if not 0 < self.percentile <= 100:
            out.append(f"{where}.percentile: must be in (0, 100]")
        return out


@dataclass(frozen=True, slots=True)
class CostPolicy:
    name: str = ""
    max_cost_per_hour: float = 0.0
    optimization_goal: str = "balanced"
    auto_scale_down: bool = False

    def problems(self, where: str) -> list[str]:
        out = []
        if not self.max_cost_per_hour > 0:
            out.append(f"{where}.max_cost_per_hour: must be > 0")
        if self.optimization_goal not in GOALS:
            out.append(
                f"{where}.optimization_goal: {self.optimization_goal!r} is not one of "
                f"{', '.join(GOALS)}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Policies:
    data_residency: tuple[DataResidencyPolicy, ...] = ()
    security: tuple[SecurityPolicy, ...] = ()

    def residency(self) -> tuple[tuple[str, frozenset[str], str], ...]:
        """(regulation, countries, where) for the placement's residency filter."""
        return tuple(
            (p.regulation.strip(), p.countries(), f"policies.data_residency {p.name!r}")
            for p in self.data_residency
        )


KINDS: dict[str, type[Any]] = {
    "data_residency": DataResidencyPolicy,
    "latency_sla": LatencySlaPolicy,
    "cost": CostPolicy,
    "security": SecurityPolicy,
}
NOT_ENFORCED = {"latency_sla": "latency SLA policies", "cost": "cost policies"}


def load_policies(path: Path | None) -> Policies:
    """Every problem of the section at once, each with its path (`policies.cost[0]`)."""
    body = read_yaml(path, "policies") if path else {}
    problems: list[str] = []
    kept: dict[str, list[Any]] = {"data_residency": [], "security": []}
    for kind, entries in body.items():
        if kind not in KINDS:
            problems.append(
                f"policies.{kind}: unknown kind of policy{did_you_mean(str(kind), KINDS)} "
                f"(known: {', '.join(KINDS)})"
            )
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            problems.append(f"policies.{kind}: expected a list of policies (mappings)")
            continue
        for i, entry in enumerate(entries):
            where = f"policies.{kind}[{i}]"
            try:
                policy = build(KINDS[kind], entry, where)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            found = policy.problems(where) if hasattr(policy, "problems") else []
            if kind in NOT_ENFORCED:
                found.append(f"{where} {policy.name!r}: {NOT_ENFORCED[kind]} are {LATER}")
            problems.extend(found)
            if not found and kind in kept:
                kept[kind].append(policy)
    if problems:
        raise ConfigError("\n".join(problems))
    return Policies(tuple(kept["data_residency"]), tuple(kept["security"]))
