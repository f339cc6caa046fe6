"""The arm64 root's cache key: a content hash of what goes into the root, so a changed package
list is a new root and an unchanged one is never rebuilt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.arm64_root import INCLUDE, root_key
from tests.system import debroot


def test_the_key_follows_the_contents_not_their_order() -> None:
    assert root_key(INCLUDE) == root_key(tuple(reversed(INCLUDE)))
    assert root_key(INCLUDE) != root_key((*INCLUDE, "curl"))
    assert root_key(INCLUDE) != root_key(INCLUDE, suite="trixie")
    assert len(root_key()) == 16 and int(root_key(), 16) >= 0


@pytest.mark.parametrize(
    "include", [INCLUDE, debroot.INCLUDE], ids=["arm64 gateway root", "amd64 package root"]
)
def test_the_roots_hold_what_the_agent_package_depends_on(include: tuple[str, ...]) -> None:
    """Both test roots are offline (no apt lists): `apt-get install ./*.deb` resolves the
    agent's Debian dependencies only from what the root already has."""
    control = Path(__file__).resolve().parents[2] / "packaging/debian/novacron-agent.control"
    depends = re.search(r"^Depends: (.*)$", control.read_text(), re.M)
    assert depends is not None
    debian = {d.split("(")[0].strip() for d in depends.group(1).split(",")}
    ours = {d for d in debian if not d.startswith("novacron-")}
    assert ours <= set(include), ours - set(include)
