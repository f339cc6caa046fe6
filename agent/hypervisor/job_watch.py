"""A migration job's watcher: a thread that runs beside the blocking libvirt call (the
post-copy switch, the pre-copy escalation, the post-copy stall watch)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def beside(work: Callable[[], None], done: threading.Event, name: str) -> Iterator[None]:
    """Run `work` in a thread while the body runs the migration job; then set `done` (which
    `work` waits on) and join it."""
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
