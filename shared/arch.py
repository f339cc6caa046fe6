"""CPU architecture names: one spelling per architecture, whoever reported it.

The kernel says `aarch64` (Linux) or `arm64` (macOS, Debian's dpkg), `x86_64` or `amd64`; the
controller compares node and image architectures as strings, so every producer normalises here.
"""

from __future__ import annotations

import platform

from shared.errors import InvalidArgument

ARCHES = ("x86_64", "aarch64")
_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
DEBIAN = {"x86_64": "amd64", "aarch64": "arm64"}  # our name -> dpkg's


def normalise(arch: str) -> str:
    """`aarch64` for aarch64/arm64, `x86_64` for x86_64/amd64; other names pass through
    lower-cased (a node may run on something we cannot place images for: it says so)."""
    name = arch.strip().lower()
    return _ALIASES.get(name, name)


def require(arch: str, what: str = "arch") -> str:
    """The normalised name of a supported architecture, or InvalidArgument naming the choices."""
    name = normalise(arch)
    if name not in ARCHES:
        raise InvalidArgument(
            f"{what} {arch!r} is not supported: use one of x86_64 (amd64), aarch64 (arm64)"
        )
    return name


def runs_on(image_arch: str, node_arch: str) -> bool:
    """Whether a node of `node_arch` may run an image of `image_arch`: only its own
    architecture (an image that names none is taken to be the node's own)."""
    return not image_arch or normalise(image_arch) == normalise(node_arch)


def host_arch() -> str:
    """The architecture this process runs on: what an agent reports as its node's."""
    return normalise(platform.machine())
