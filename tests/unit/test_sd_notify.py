"""The notify protocol client (shared/sd_notify.py) against a real AF_UNIX datagram socket the
test binds, as systemd's would be, and the environment it reads."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.sd_notify import Notifier, one_line, socket_address, watchdog_interval
from shared.service_unit import ServiceUnit


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive_as_one_datagram_of_assignments(
    listener: tuple[str, socket.socket],
) -> None:
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.ready("serving on 127.0.0.1:7700, 0 nodes")
    assert received(sock) == ["READY=1", "STATUS=serving on 127.0.0.1:7700, 0 nodes"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.status("line one\nREADY=1 injected")
    assert received(sock) == ["STATUS=line one READY=1 injected"]  # one line, no injection
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1", "STATUS=stopping"]


def test_an_abstract_socket_is_named_with_an_at_sign() -> None:
    name = f"novacron-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        env = {"NOTIFY_SOCKET": "@" + name}
        notifier = Notifier.from_environment(env)
        assert notifier.address == "\0" + name
        assert notifier.ready()
        assert received(sock) == ["READY=1"]


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()


def test_a_socket_nobody_listens_on_is_logged_not_raised(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "gone.sock")).watchdog()


def test_bad_addresses_and_assignments_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\$NOTIFY_SOCKET='relative.sock': expected an abs"):
        socket_address("relative.sock")
    with pytest.raises(ConfigError, match="vsock"):
        Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    with pytest.raises(ValueError, match="not a notify assignment: 'READY'"):
        Notifier("/nonexistent").send("READY")
    with pytest.raises(ValueError, match="not a notify assignment"):
        Notifier("/nonexistent").send("STATUS=a\nREADY=1")


def test_status_text_is_one_bounded_line() -> None:
    assert one_line("  a\n b\t c ") == "a b c"
    long = one_line("x" * 5000)
    assert len(long) == 1024 and long.endswith("...")


def test_the_watchdog_interval_is_read_like_sd_watchdog_enabled() -> None:
    pid = os.getpid()
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid)}) == 0.5
    # another process's watchdog (inherited environment): not ours
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid + 1)}) is None
    with pytest.raises(ConfigError, match=r"\$WATCHDOG_USEC='30s': expected microseconds"):
        watchdog_interval({"WATCHDOG_USEC": "30s"})
    with pytest.raises(ConfigError, match=r"\$WATCHDOG_USEC='0': must be a positive"):
        watchdog_interval({"WATCHDOG_USEC": "0"})
    with pytest.raises(ConfigError, match=r"\$WATCHDOG_PID='me': expected a process id"):
        watchdog_interval({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"})


def test_the_unit_takes_the_variables_out_of_the_environment(
    listener: tuple[str, socket.socket],
) -> None:
    path, sock = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    unit = ServiceUnit.from_environment(env)
    assert env == {}  # the daemon's children (ip, tc, wireguard-go) do not inherit them
    assert unit.watchdog_s == 2.0
    unit.ready("one")
    assert received(sock) == ["READY=1", "STATUS=one"]
    unit.ready("two")  # READY=1 only once; later calls update the status
    assert received(sock) == ["STATUS=two"]
    unit.status("two")  # unchanged: not sent again
    unit.status("three")
    assert received(sock) == ["STATUS=three"]


def test_a_watchdog_without_a_socket_is_off() -> None:
    assert ServiceUnit.from_environment({"WATCHDOG_USEC": "1000000"}).watchdog_s is None
