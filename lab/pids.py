"""Stopping processes by pid only, guarded against a recycled pid by the process start time."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return False


def same_process(pid: int, started: int | None) -> bool:
    """Whether `pid` is still the process that had start time `started`."""
    return alive(pid) and (started is None or start_time(pid) == started)


def terminate(procs: Iterable[tuple[int, int | None]], timeout: float = 10.0) -> list[int]:
    """SIGTERM each (pid, start_time) that is still that process, SIGKILL what remains after
    `timeout`; returns the pids that had to be killed."""
    targets = [(pid, st) for pid, st in procs if same_process(pid, st)]
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid, _ in targets):
        _reap(pid for pid, _ in targets)
        time.sleep(0.05)
    killed = []
    for pid, st in targets:
        if same_process(pid, st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in killed):
        _reap(killed)
        time.sleep(0.05)
    _reap(pid for pid, _ in targets)
    return killed


def _reap(pids: Iterable[int]) -> None:
    """Collect those of `pids` that are exited children of ours, so they do not stay zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
