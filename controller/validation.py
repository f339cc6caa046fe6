"""Checks on client input, with messages a person can act on."""

from __future__ import annotations

import re

from shared.domain import VMSpec
from shared.errors import InvalidArgument

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,61}[A-Za-z0-9])?$")
MAX_VCPUS = 256
MAX_MEMORY_MIB = 4 * 1024 * 1024
MIN_MEMORY_MIB = 16


def validate_spec(spec: VMSpec) -> None:
    if not spec.name:
        raise InvalidArgument("name is required")
    if not _NAME.match(spec.name):
        raise InvalidArgument(
            f"name {spec.name!r} is invalid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if not spec.image:
        raise InvalidArgument("image is required")
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
    for key in spec.labels:
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(f"label key {key!r} is invalid")
