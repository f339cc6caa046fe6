"""Session fixtures shared by every test tier: a private libvirtd and the tiny guest image.

A test that needs a real backend (root, libvirtd, QEMU, busybox, ...) skips when it is missing,
except in CI (CI=true), where a missing backend is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.images.builder import build_tiny_image
from lab.libvirtd import PrivateLibvirtd
from shared.errors import NovaCronError


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_backend(ok: bool, reason: str) -> None:
    """Skip (outside CI) or fail (in CI) unless `ok`."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"backend missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll `condition` until true or fail after `timeout_s`, saying what we waited for."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def qemu_backend_problem() -> str:
    """Why real QEMU guests cannot run here, or '' if they can."""
    if os.geteuid() != 0:
        return "needs root for a private libvirtd (mount namespace)"
    for tool in ("libvirtd", "unshare", "qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            return (
                f"{tool} not installed (Debian: libvirt-daemon-system, qemu-system-x86, qemu-utils)"
            )
    return ""


@pytest.fixture(scope="session")
def private_libvirtd() -> Iterator[PrivateLibvirtd]:
    problem = qemu_backend_problem()
    require_backend(not problem, problem)
    # a short path: the daemon's unix socket path must fit in 107 bytes
    base = Path(tempfile.mkdtemp(prefix="nc-lvd-", dir="/tmp"))
    daemon = PrivateLibvirtd(base)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An images directory holding the tiny guest, built once per session."""
    images = tmp_path_factory.mktemp("images")
    try:
        build_tiny_image(images, "tiny")
    except NovaCronError as err:
        require_backend(False, f"cannot build the tiny image: {err}")
    return images
