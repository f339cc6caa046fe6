"""Progress for long blocking calls: an elapsed-seconds spinner on a TTY, silence otherwise.

Scripts and logs (non-TTY stderr) get no carriage-return noise; people at a terminal can see the
call is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import grpc

FRAMES = "|/-\\"
CLEAR_LINE = "\r\x1b[K"


def wait(
    future: grpc.Future[Any],
    label: str,
    stream: TextIO,
    interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until `future` is done, drawing `<frame> <label> <N>s` on `stream` if it is a TTY."""
    if not stream.isatty():
        return  # the caller's future.result() does the waiting
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    start = clock()
    frame = 0
    try:
        while True:
            elapsed = int(clock() - start)
            stream.write(f"\r{FRAMES[frame % len(FRAMES)]} {label} {elapsed}s")
            stream.flush()
            if done.wait(interval):
                return
            frame += 1
    finally:
        stream.write(CLEAR_LINE)
        stream.flush()
