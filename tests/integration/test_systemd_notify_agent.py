"""The agent as systemd runs it (`Type=notify`, `WatchdogSec=`), with a NOTIFY_SOCKET this
test listens on: READY=1 once its first hello is answered (or, with the controller
unreachable, once it runs from its cache), STATUS= saying which, WATCHDOG=1 pings that stop
while libvirtd does not answer, and SIGTERM: STOPPING=1, exit 0, and its VMs keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.libvirtd import PrivateLibvirtd
from lab.processes import Daemon, free_port, start_agent
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, make_fake_kernel_images
from tests.integration.libvirtd_faults import alive, qemu_pid
from tests.integration.notify_socket import NotifySocket, log_count, status_of
from tests.integration.test_state_faults import deploy

START_S = 60.0


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """The socket; the agents started after `arm(...)` inherit its variables."""
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


def arm(monkeypatch: pytest.MonkeyPatch, notify: NotifySocket, watchdog_s: float) -> None:
    for key, value in notify.env(watchdog_s).items():
        monkeypatch.setenv(key, value)


def stop(daemon: Daemon) -> None:
    if daemon.alive():
        daemon.stop()


async def test_ready_after_the_first_hello_then_pings_then_stopping(
    cluster: Cluster, tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    arm(monkeypatch, notify, 1.0)
    agent = start_agent(
        tmp_path, cluster.address, "edge-n", cluster.test_uri("edge-n"), images,
        "--heartbeat-interval", "0.5s",
    )  # fmt: skip
    try:
        ready = await notify.await_for("READY=1", START_S, [agent])
        assert cluster.server is not None and cluster.server.controller is not None
        # the hello (the node's inventory) reached the controller before READY=1
        assert "edge-n" in cluster.server.controller.view.nodes
        assert status_of(ready) == f"connected to controller {cluster.address}, 0 VMs"
        await notify.await_for("WATCHDOG=1", 10, [agent])
        await notify.await_for("WATCHDOG=1", 10, [agent])
        agent.process.terminate()
        stopping = await notify.await_for("STOPPING=1", 30, [agent])
        assert status_of(stopping) == (
            f"stopping (VMs keep running): was connected to controller {cluster.address}, 0 VMs"
        )
        assert agent.process.wait(30) == 0, agent.log_tail()
    finally:
        stop(agent)


def test_ready_when_running_offline_from_its_cache(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    arm(monkeypatch, notify, 1.0)
    monkeypatch.setenv("NOVACRON_AGENT_OFFLINE_GRACE", "1s")
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    uri = Cluster(tmp_path).test_uri("edge-o")
    agent = start_agent(tmp_path, nobody, "edge-o", uri, images)
    try:
        ready = notify.wait_for("READY=1", START_S, [agent])
        assert status_of(ready) == (
            f"offline: controller {nobody} unreachable, running 0 VMs from cache"
        )
        assert "no controller: restoring the node from its cached desired state" in (
            agent.log_path.read_text()
        )
        notify.wait_for("WATCHDOG=1", 10, [agent])
        agent.process.terminate()
        notify.wait_for("STOPPING=1", 30, [agent])
        assert agent.process.wait(30) == 0, agent.log_tail()
    finally:
        stop(agent)


def wait_log(daemon: Daemon, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log_count(daemon, text) < count:
        assert daemon.alive(), daemon.log_tail(40)
        assert time.monotonic() < deadline, f"no {count}x {text!r}:\n{daemon.log_tail(40)}"
        time.sleep(0.05)


def domstate(uri: str, name: str) -> str:
    done = subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True, text=True)
    return done.stdout.strip()


@pytest.mark.qemu
async def test_a_frozen_libvirtd_stops_the_pings_and_sigterm_leaves_the_vm_running(
    cluster: Cluster,
    own_libvirtd: PrivateLibvirtd,
    tiny_image_dir: Path,
    tmp_path: Path,
    notify: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arm(monkeypatch, notify, 4.0)  # rounds every 2 s, libvirt given 1 s to answer
    agent = start_agent(
        tmp_path, cluster.address, "edge-q", own_libvirtd.uri, tiny_image_dir,
        "--heartbeat-interval", "0.5s", log_level="debug",
    )  # fmt: skip
    try:
        await notify.await_for("READY=1", START_S, [agent])
        vm = await deploy(cluster, "keeper")
        assert vm.state == pb.VM_STATE_RUNNING
        guest = qemu_pid(own_libvirtd, "keeper")
        await notify.await_for("WATCHDOG=1", 20, [agent])

        assert own_libvirtd.pid is not None
        os.kill(own_libvirtd.pid, signal.SIGSTOP)  # libvirtd answers nothing: a wedged call
        try:
            wait_log(agent, "not feeding the watchdog", 1, 30)
            notify.drain()
            failed = log_count(agent, "watchdog not fed")
            wait_log(agent, "watchdog not fed", failed + 2, 30)
            assert not any("WATCHDOG=1" in m for m in notify.drain())
            assert "libvirt has not answered for" in agent.log_path.read_text()
        finally:
            os.kill(own_libvirtd.pid, signal.SIGCONT)
        await notify.await_for("WATCHDOG=1", 30, [agent])  # libvirtd answers: fed again

        agent.process.terminate()
        await notify.await_for("STOPPING=1", 30, [agent])
        assert agent.process.wait(30) == 0, agent.log_tail()
        assert alive(guest), "SIGTERM to the agent must leave its VMs running"
        assert domstate(own_libvirtd.uri, "nc-keeper") == "running"
    finally:
        stop(agent)
