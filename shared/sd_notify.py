"""The systemd notify protocol (sd_notify(3)), in pure Python: the daemons run `Type=notify`
and tell systemd when they really serve (READY=1), what they are doing (STATUS=), that they are
alive (WATCHDOG=1) and that they are going down (STOPPING=1).

A message is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET: a path, or an abstract socket when it starts with '@'. Without $NOTIFY_SOCKET
(not started by systemd) every call is a no-op, so the daemons run the same from a shell.
The watchdog interval is $WATCHDOG_USEC, meant for us only if $WATCHDOG_PID is unset or our pid.
We need no more than this, so not the `systemd` Python package (libsystemd bindings).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import structlog

from shared.errors import ConfigError

log = structlog.get_logger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
MAX_STATUS = 1024  # systemctl status shows one line; a runaway error message is cut here


def socket_address(value: str) -> str:
    """$NOTIFY_SOCKET as the address to send to: '@name' is the abstract socket '\\0name'.
    Anything else but an absolute path is refused (sd_notify refuses it too)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ConfigError(
        f"${NOTIFY_SOCKET}={value!r}: expected an absolute path or an abstract socket "
        "'@name' (other forms, e.g. vsock:, are not supported)"
    )


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval in seconds that systemd asks of this process, or None (off).

    Like sd_watchdog_enabled(3): $WATCHDOG_USEC is a positive integer of microseconds, and a
    $WATCHDOG_PID naming another process means the watchdog is not ours (e.g. inherited)."""
    raw = environ.get(WATCHDOG_USEC)
    if raw is None or raw == "":
        return None
    owner = environ.get(WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            raise ConfigError(f"${WATCHDOG_PID}={owner!r}: expected a process id") from None
    try:
        usec = int(raw)
    except ValueError:
        raise ConfigError(
            f"${WATCHDOG_USEC}={raw!r}: expected microseconds, e.g. 30000000"
        ) from None
    if usec <= 0:
        raise ConfigError(f"${WATCHDOG_USEC}={raw!r}: must be a positive number of microseconds")
    return usec / 1e6


def one_line(text: str) -> str:
    """A STATUS= value: one line (a newline would start a new assignment), bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_STATUS else flat[: MAX_STATUS - 3] + "..."


@dataclass(frozen=True)
class Notifier:
    """Sends notify messages to `address` (None: every call is a no-op and returns False)."""

    address: str | None = None

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """From $NOTIFY_SOCKET; `unset` removes it (and the watchdog variables) from `environ`,
        so the programs the daemon runs (ip, tc, wireguard-go, qemu-img) do not inherit it."""
        env = os.environ if environ is None else environ
        value = env.get(NOTIFY_SOCKET, "")
        if unset:
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                env.pop(name, None)
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of `KEY=VALUE` lines; True if it was delivered. A failure (systemd
        gone or re-executing) is logged, never raised: a daemon must not die of its init."""
        if self.address is None:
            return False
        for item in assignments:
            key, sep, _ = item.partition("=")
            if not sep or not key or "\n" in item:
                raise ValueError(f"not a notify assignment: {item!r}")
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify failed", socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *((f"STATUS={one_line(status)}",) if status else ()))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={one_line(status)}")
