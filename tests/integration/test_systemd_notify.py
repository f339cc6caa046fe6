"""The controller as systemd runs it (`Type=notify`, `WatchdogSec=`), with a NOTIFY_SOCKET
this test listens on (PID 1 here is not systemd): READY=1 only once its port answers, STATUS=,
WATCHDOG=1 pings that stop while its store is unusable, STOPPING=1 on SIGTERM and exit 0."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lab.processes import Daemon, free_port, start_controller
from tests.conftest import require_backend
from tests.integration.notify_socket import NotifySocket, log_count, status_of

WATCHDOG_S = 1.0  # pings every 0.5 s
START_S = 60.0


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    for key, value in sock.env(WATCHDOG_S).items():
        monkeypatch.setenv(key, value)  # the daemons started below inherit them
    monkeypatch.setenv("NOVACRON_CONTROLLER_DASHBOARD_LISTEN", "")
    try:
        yield sock
    finally:
        sock.close()


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def stop(daemon: Daemon) -> None:
    if daemon.alive():
        daemon.stop()


def test_ready_once_serving_then_pings_then_stopping_on_sigterm(
    tmp_path: Path, notify: NotifySocket
) -> None:
    port = free_port()
    controller = start_controller(tmp_path, f"127.0.0.1:{port}", "--metrics-listen", "")
    try:
        ready = notify.wait_for("READY=1", START_S, [controller])
        assert serving(port)  # READY=1 came after the port was bound and the store loaded
        assert status_of(ready) == f"serving on 127.0.0.1:{port}, 0 nodes (0 ready), 0 VMs"
        before = len(notify.messages)
        notify.wait_for("WATCHDOG=1", 10, [controller])
        notify.wait_for("WATCHDOG=1", 10, [controller])
        assert all("READY=1" not in m for m in notify.messages[before:])  # READY=1 once
        controller.process.terminate()
        stopping = notify.wait_for("STOPPING=1", 30, [controller])
        assert status_of(stopping).startswith("stopping: was serving on 127.0.0.1:")
        assert controller.process.wait(30) == 0, controller.log_tail()
    finally:
        stop(controller)


def test_a_controller_that_cannot_start_never_says_ready(
    tmp_path: Path, notify: NotifySocket
) -> None:
    (tmp_path / "controller").write_text("a file where the state dir should be")
    controller = start_controller(tmp_path, f"127.0.0.1:{free_port()}", "--metrics-listen", "")
    try:
        assert controller.process.wait(60) != 0
        notify.drain()
        assert all("READY=1" not in m for m in notify.messages), notify.messages
    finally:
        stop(controller)


def test_a_bad_notify_socket_is_refused_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": "relative.sock"}
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", "--insecure", "--state-dir", str(tmp_path),
         "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", ""],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "$NOTIFY_SOCKET='relative.sock': expected an absolute path" in done.stderr


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    require_backend(os.geteuid() == 0, "needs root to mount a tmpfs")
    require_backend(shutil.which("mount") is not None, "mount(8) not installed")
    point = Path(tempfile.mkdtemp(prefix="nc-notify-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        if subprocess.run(["umount", "-R", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-R", "-l", str(point)], check=True)
        point.rmdir()


def wait_log(daemon: Daemon, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log_count(daemon, text) < count:
        assert daemon.alive(), daemon.log_tail(40)
        assert time.monotonic() < deadline, f"no {count}x {text!r}:\n{daemon.log_tail(40)}"
        time.sleep(0.05)


def test_the_pings_stop_while_the_state_dir_is_read_only(tmpfs: Path, notify: NotifySocket) -> None:
    """The disk under the store goes read-only (a read-only tmpfs over the state dir: the
    kernel will not remount one with the database open for writing)."""
    controller = start_controller(
        tmpfs, f"127.0.0.1:{free_port()}", "--metrics-listen", "", log_level="debug"
    )
    state_dir = tmpfs / "controller"
    try:
        notify.wait_for("READY=1", START_S, [controller])
        notify.wait_for("WATCHDOG=1", 10, [controller])
        over = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state_dir)]
        subprocess.run(over, check=True)
        try:
            wait_log(controller, "not feeding the watchdog", 1, 30)
            notify.drain()  # pings of rounds before the failure
            failed = log_count(controller, "watchdog not fed")
            wait_log(controller, "watchdog not fed", failed + 2, 30)  # two more whole rounds
            assert not any("WATCHDOG=1" in m for m in notify.drain())
            assert "is on a read-only filesystem" in controller.log_tail(5)
        finally:
            subprocess.run(["umount", str(state_dir)], check=True)
        notify.wait_for("WATCHDOG=1", 10, [controller])  # fed again once it is writable
        assert log_count(controller, "liveness check passes again") == 1
    finally:
        stop(controller)


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def deny_write_execute() -> None:
    """In the child before exec: the kernel's MemoryDenyWriteExecute (inherited by exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(125)


def test_the_controller_serves_with_memory_deny_write_execute(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: CPython, grpcio and cryptography must not
    need writable+executable memory (the kernel's PR_SET_MDWE is the same rule)."""
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=deny_write_execute)
    require_backend(probe.returncode == 0, "the kernel has no PR_SET_MDWE (Linux >= 6.3)")
    port = free_port()
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--insecure", "--state-dir",
             str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}", "--metrics-listen", ""],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=deny_write_execute,
        )  # fmt: skip
    daemon = Daemon("controller", process, log)
    try:
        notify.wait_for("READY=1", START_S, [daemon])
        assert serving(port)
        notify.wait_for("WATCHDOG=1", 10, [daemon])
        process.terminate()
        assert process.wait(30) == 0, daemon.log_tail()
    finally:
        stop(daemon)
