"""A libvirtd of one test alone, to be killed and started again (the session-wide one must
not be), and the helpers that do it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.libvirtd import PrivateLibvirtd
from lab.processes import wait_until
from tests.conftest import qemu_backend_problem, require_backend


@pytest.fixture
def own_libvirtd() -> Iterator[PrivateLibvirtd]:
    """A daemon of this test alone: it is killed (the session-wide one must not be)."""
    problem = qemu_backend_problem()
    require_backend(not problem, problem)
    base = Path(tempfile.mkdtemp(prefix="nc-lvk-", dir="/tmp"))
    daemon = PrivateLibvirtd(base)
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.pid is None or not alive(daemon.pid):
            restart(daemon)  # so that stop() removes the guests it still has
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return False
    return fields[0] != "Z"


def kill(daemon: PrivateLibvirtd) -> None:
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGKILL)
    wait_until(lambda: not alive(daemon.pid or 0), 10, "libvirtd gone")  # init reaps it


def restart(daemon: PrivateLibvirtd) -> None:
    daemon._pid = None  # the old one is dead: read the new one from its pid file
    daemon.pid_file.unlink(missing_ok=True)
    daemon.start()


def qemu_pid(daemon: PrivateLibvirtd, name: str) -> int:
    return int((daemon.dir("run") / "qemu" / f"nc-{name}.pid").read_text().strip())
