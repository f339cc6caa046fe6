"""What systemd would be for a daemon under test: the AF_UNIX datagram socket named by its
$NOTIFY_SOCKET, and every message it sent, in order."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from lab.processes import Daemon


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[list[str]] = []

    def env(self, watchdog_s: float | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        return env

    def wait_for(
        self, assignment: str, timeout: float, daemons: Sequence[Daemon] = ()
    ) -> list[str]:
        """The next message holding `assignment` (a line, or a prefix ending in '*'); fails
        early, with the log, if a daemon we wait on exits."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            for d in daemons:
                if not d.alive() and not self._pending():
                    raise AssertionError(
                        f"{d.name} exited ({d.process.returncode}) before {assignment}:\n"
                        f"{d.log_tail(40)}\nmessages: {self.messages}"
                    )
            if left <= 0:
                tails = "".join(f"\n--- {d.name}:\n{d.log_tail(40)}" for d in daemons)
                raise AssertionError(
                    f"no {assignment} within {timeout:g}s; messages: {self.messages}{tails}"
                )
            self.sock.settimeout(min(left, 0.5))
            try:
                message = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
            self.messages.append(message)
            if any(_matches(line, assignment) for line in message):
                return message

    async def await_for(
        self, assignment: str, timeout: float, daemons: Sequence[Daemon] = ()
    ) -> list[str]:
        """wait_for off the event loop (an in-process controller keeps serving meanwhile)."""
        return await asyncio.to_thread(self.wait_for, assignment, timeout, daemons)

    def drain(self) -> list[list[str]]:
        """Every message already delivered (a datagram is queued when its sendto returns)."""
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        self.messages.extend(got)
        return got

    def _pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.sock.close()


def _matches(line: str, assignment: str) -> bool:
    if assignment.endswith("*"):
        return line.startswith(assignment[:-1])
    return line == assignment


def status_of(message: list[str]) -> str:
    return next((line[len("STATUS=") :] for line in message if line.startswith("STATUS=")), "")


def log_count(daemon: Daemon, text: str) -> int:
    try:
        return daemon.log_path.read_text(errors="replace").count(text)
    except OSError:
        return 0
