"""Checks on client input, with messages a person can act on."""

from __future__ import annotations

import math
import re

from shared import bounds
from shared.domain import PlacementConstraints, VMSpec
from shared.errors import InvalidArgument

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
ARCHES = ("x86_64", "aarch64")
MAX_VCPUS = 256
MAX_BANDWIDTH_MBPS = 100_000
MAX_MEMORY_MIB = 4 * 1024 * 1024
MIN_MEMORY_MIB = 16


def validate_spec(spec: VMSpec) -> None:
    if not spec.name:
        raise InvalidArgument("name is required")
    if not _NAME.match(spec.name):
        raise InvalidArgument(
            f"name {bounds.shown(spec.name)} is invalid: use 1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    if not spec.image:
        raise InvalidArgument("image is required")
    bounds.text("image", spec.image, 128)
    if spec.vcpus <= 0:
        raise InvalidArgument("vcpus must be > 0")
    if spec.vcpus > MAX_VCPUS:
        raise InvalidArgument(f"vcpus must be <= {MAX_VCPUS}")
    if spec.memory_mib <= 0:
        raise InvalidArgument("memory_mib must be > 0")
    if spec.memory_mib < MIN_MEMORY_MIB:
        raise InvalidArgument(f"memory_mib must be >= {MIN_MEMORY_MIB}")
    if spec.memory_mib > MAX_MEMORY_MIB:
        raise InvalidArgument(f"memory_mib must be <= {MAX_MEMORY_MIB}")
    if not 0 <= spec.bandwidth_mbps <= MAX_BANDWIDTH_MBPS:
        raise InvalidArgument(f"bandwidth_mbps must be in [0, {MAX_BANDWIDTH_MBPS}]")
    for key in spec.labels:
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(f"label key {bounds.shown(key)} is invalid")
    bounds.labels("labels", spec.labels)
    validate_constraints(spec.placement)
    for name in ("replace_after_s", "stop_after_s"):
        value = getattr(spec.disconnect, name)
        if value is not None and not value >= 0:  # NaN fails too
            raise InvalidArgument(f"disconnect.{name} must be >= 0 seconds (or never), got {value}")


def validate_constraints(c: PlacementConstraints) -> None:
    where = "placement"
    if c.near is not None and not (
        -90.0 <= c.near.latitude <= 90.0 and -180.0 <= c.near.longitude <= 180.0
    ):
        raise InvalidArgument(
            f"{where}.near: latitude must be in [-90, 90] and longitude in [-180, 180]"
        )
    if not c.max_latency_ms >= 0 or math.isinf(c.max_latency_ms):
        raise InvalidArgument(f"{where}.max_latency_ms must be >= 0 (0 = the default)")
    if c.latency_percentile not in (50, 95, 99):
        raise InvalidArgument(f"{where}.latency_percentile must be 50, 95 or 99")
    bounds.labels(f"{where}.required_labels", dict(c.required_labels))
    for code in c.countries:
        if not _COUNTRY.match(code):
            raise InvalidArgument(f"{where}.countries: {code!r} is not an ISO 3166-1 alpha-2 code")
    if c.arch and c.arch not in ARCHES:
        raise InvalidArgument(f"{where}.arch must be one of {', '.join(ARCHES)}")
    if not c.max_cost_per_hour >= 0:
        raise InvalidArgument(f"{where}.max_cost_per_hour must be >= 0 (0 = no cap)")
    if c.spread_group and not _LABEL_KEY.match(c.spread_group):
        raise InvalidArgument(f"{where}.spread_group {c.spread_group!r} is invalid")
