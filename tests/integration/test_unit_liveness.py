"""The daemons' own liveness checks, which decide whether systemd's watchdog is fed: the
controller's store (controller/unit.py) on a real controller, including a filesystem remounted
read-only under it, and the agent's libvirt round trip (agent/unit.py) against libvirt's test
driver: down is not dead, a call that hangs is."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.unit import AgentUnit
from controller.config import ControllerConfig
from controller.server import ControllerServer
from controller.store import SQLiteStore
from controller.unit import StoreCheck, status_line
from shared.watchdog import BlockingProbe
from tests.conftest import require_backend

WAIT_S = 10.0


async def until_ok(check: Callable[[], Awaitable[str]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while (problem := await check()) != "":
        assert time.monotonic() < deadline, f"{what}: {problem}"
        await asyncio.sleep(0.02)


async def started(state_dir: Path) -> ControllerServer:
    server = ControllerServer(
        ControllerConfig(
            listen="127.0.0.1:0",
            state_dir=state_dir,
            insecure=True,
            metrics_listen="",
            dashboard_listen="",
        )
    )
    await server.start()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControllerServer]:
    s = await started(tmp_path / "controller")
    try:
        yield s
    finally:
        await s.stop(grace=0.1)


def store_of(server: ControllerServer) -> SQLiteStore:
    assert server.controller is not None
    store = server.controller.store
    assert isinstance(store, SQLiteStore)
    return store


async def test_a_serving_controller_is_alive_and_says_where(server: ControllerServer) -> None:
    assert await StoreCheck(server)() == ""
    assert status_line(server) == f"serving on 127.0.0.1:{server.port}, 0 nodes (0 ready), 0 VMs"


async def test_a_store_read_that_hangs_is_a_failure_until_it_returns(
    server: ControllerServer,
) -> None:
    check = StoreCheck(server)
    lock = store_of(server)._lock  # what a wedged write would hold
    lock.acquire()
    try:
        first = asyncio.create_task(check())
        await asyncio.sleep(0)  # let it start its read (a yield, not a wait)
        first.cancel()  # the watchdog's deadline passed
        assert (await check()).startswith("the store has not answered a read for ")
    finally:
        lock.release()
    await until_ok(check, "the store answers again")


async def test_a_store_that_fails_reads_is_a_failure(server: ControllerServer) -> None:
    await store_of(server).close()
    problem = await StoreCheck(server)()
    assert problem.startswith("the store failed a read: ")
    assert "controller.db" in problem  # the store's errors name the file


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    require_backend(os.geteuid() == 0, "needs root to mount (and remount read-only) a tmpfs")
    require_backend(shutil.which("mount") is not None, "mount(8) not installed")
    point = Path(tempfile.mkdtemp(prefix="nc-unit-ro-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)
        point.rmdir()


async def test_a_state_dir_on_a_read_only_filesystem_is_a_failure(tmpfs: Path) -> None:
    """A disk that failed is remounted read-only under the running controller. The kernel
    refuses to remount a filesystem with files open for writing (the database), so a
    read-only tmpfs is mounted over the state dir instead: the path is then read-only."""
    state_dir = tmpfs / "controller"
    server = await started(state_dir)
    try:
        assert await StoreCheck(server)() == ""
        over = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state_dir)]
        subprocess.run(over, check=True)
        try:
            assert await StoreCheck(server)() == (
                f"the state dir {state_dir} is on a read-only filesystem"
            )
        finally:
            subprocess.run(["umount", str(state_dir)], check=True)
        assert await StoreCheck(server)() == ""
    finally:
        await server.stop(grace=0.1)


async def test_libvirt_down_is_not_dead_but_a_hanging_call_is(tmp_path: Path) -> None:
    unit = AgentUnit(AgentConfig(node_id="n1", libvirt_uri="test:///default"))
    probe = BlockingProbe("libvirt", unit._libvirt_answers)
    assert await probe() == ""  # no hypervisor yet: starting, bounded by TimeoutStartSec
    hypervisor = await asyncio.to_thread(LibvirtHypervisor, "test:///default")
    unit.hypervisor = hypervisor
    assert await probe() == ""
    await asyncio.to_thread(hypervisor.close)  # libvirt gone: an error, answered at once
    assert await probe() == ""

    class Wedged:
        def __init__(self) -> None:
            self.entered, self.release = threading.Event(), threading.Event()

        def host_info(self) -> None:
            self.entered.set()
            self.release.wait(60)

    wedged = Wedged()
    unit.hypervisor = wedged  # type: ignore[assignment]
    first = asyncio.create_task(probe())
    assert await asyncio.to_thread(wedged.entered.wait, WAIT_S)
    first.cancel()
    assert (await probe()).startswith("libvirt has not answered for ")
    wedged.release.set()
    await until_ok(probe, "libvirt answers again")
