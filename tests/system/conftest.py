"""A real novacron-lab (small topology) for the system tests, up once per module, always down."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.lab import Lab
from tests.conftest import require_backend

TOOLS = ("ip", "nsenter", "unshare", "libvirtd", "qemu-system-x86_64", "ping")


def lab_backend_problem() -> str:
    """Why a lab cannot run here, or '' if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, private libvirtds)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return ""


def clear_stale_lab_in_ci() -> None:
    """On a CI machine nobody else runs a lab, so lab namespaces found there are stale (a run
    cut off mid-test leaves them): remove them, loudly, rather than fail every lab test. Off
    CI, a lab found up may be someone's, and `Lab.up` refuses to touch it."""
    if not os.environ.get("CI"):
        return
    from lab import netns
    from lab.teardown import teardown

    if netns.list_netns() + netns.list_links() + netns.lab_routes():
        removed = teardown(Path(tempfile.mkdtemp(prefix="nclab-stale-", dir="/tmp")))
        print(f"CI: removed a stale lab before this one: {', '.join(removed)}")


def lab_state_dir() -> Path:
    # short: the sites' libvirtd sockets live under it and must fit in 107 bytes
    return Path(tempfile.mkdtemp(prefix="nclab-", dir="/tmp"))


@pytest.fixture(scope="module")
def lab(tiny_image_dir: Path) -> Iterator[Lab]:
    problem = lab_backend_problem()
    require_backend(not problem, problem)
    clear_stale_lab_in_ci()
    the_lab = Lab("small", lab_state_dir(), images_dir=tiny_image_dir)
    try:
        the_lab.up(timeout_s=90)
        yield the_lab
    finally:
        keep = os.environ.get("NOVACRON_KEEP_LAB_LOGS")
        if keep:  # the daemons' logs, for a failure to be read after the lab is gone
            shutil.copytree(the_lab.state_dir / "logs", Path(keep), dirs_exist_ok=True)
        the_lab.down()
