"""The CLI's version, from the installed distribution when there is one."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("novacron-edge")
except metadata.PackageNotFoundError:  # running from a source checkout
    VERSION = "0.1.0"
