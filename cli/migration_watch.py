"""Follow a migration through WatchMigration while the MigrateVM call runs.

A background thread reads the stream into a queue; the calling thread renders the records with
`cli.migration_progress` (so the only writer of the terminal is the caller). Showing progress is
a courtesy: any failure of the watch (an older controller answers UNIMPLEMENTED, the stream
breaks) ends it quietly and `follow` returns False, so the caller carries on as before.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from cli.client import MigrationStream
from cli.migration_progress import MigrationProgress
from shared.pb.v1 import edge_api_pb2 as api

# WatchMigration(vm=...) answers with the VM's latest record, which may be an earlier migration
# that has ended (the new one is not recorded yet): the watch is opened again after this pause.
RETRY_INTERVAL = 0.2
# Once MigrateVM has answered, the watch is given this long to deliver what is on its way and end
# (it ends by itself when the migration has): when MigrateVM succeeded, or failed with our
# migration on screen. A failure before any record (no migration started) ends it at once.
GRACE = 2.0


@dataclass(frozen=True)
class _Record:
    migration: api.Migration
    arrived: float


@dataclass(frozen=True)
class _Ended:
    ok: bool


_DONE = object()  # MigrateVM has answered


class _Watcher:
    def __init__(
        self,
        open_watch: Callable[[], MigrationStream],
        clock: Callable[[], float],
        retry_interval: float,
    ) -> None:
        self.open_watch = open_watch
        self.clock = clock
        self.retry_interval = retry_interval
        self.items: queue.Queue[object] = queue.Queue()
        self.finished = threading.Event()  # MigrateVM answered, or the caller stopped
        self.stopped = False
        self.following = False  # an active migration of ours is on screen and has not ended
        self._lock = threading.Lock()
        self._call: MigrationStream | None = None

    def run(self) -> None:
        ok = True
        try:
            self._follow()
        except Exception:  # grpc.RpcError, or anything a broken stream raises
            ok = self.stopped
        finally:
            self.items.put(_Ended(ok))

    def _follow(self) -> None:
        ours: set[str] = set()  # ids seen active: records of earlier migrations are skipped
        while not self.finished.is_set():
            with self._lock:
                if self.stopped:
                    return
                self._call = call = self.open_watch()
            for migration in call:
                if migration.active:
                    ours.add(migration.id)
                elif migration.id not in ours:
                    continue  # an earlier migration of this VM, ended
                self.items.put(_Record(migration, self.clock()))
                self.following = migration.active
                if not migration.active:
                    return  # ours has ended
            self.finished.wait(self.retry_interval)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self.finished.set()
            if self._call is not None:
                self._call.cancel()


def _succeeded(future: grpc.Future[Any]) -> bool:
    try:
        return future.exception() is None
    except Exception:  # cancelled
        return False


def follow(
    open_watch: Callable[[], MigrationStream],
    future: grpc.Future[Any],
    out: TextIO,
    progress: MigrationProgress,
    clock: Callable[[], float] = time.monotonic,
    retry_interval: float = RETRY_INTERVAL,
    grace: float | None = None,
) -> bool:
    """Render the migration's records on `out` until `future` is done (or the migration has
    ended). Returns False when the watch failed: the caller falls back to its spinner."""
    grace = GRACE if grace is None else grace
    watcher = _Watcher(open_watch, clock, retry_interval)
    thread = threading.Thread(target=watcher.run, name="watch-migration", daemon=True)
    thread.start()

    def answered(_future: object) -> None:
        watcher.finished.set()
        watcher.items.put(_DONE)

    future.add_done_callback(answered)
    deadline: float | None = None
    try:
        while True:
            try:
                timeout = None if deadline is None else max(0.0, deadline - clock())
                item = watcher.items.get(timeout=timeout)
            except queue.Empty:
                return True  # the answer is in; stop waiting for stragglers
            if isinstance(item, _Record):
                out.write(progress.update(item.migration, item.arrived))
                out.flush()
            elif isinstance(item, _Ended):
                return item.ok
            elif deadline is None:  # _DONE
                wait = grace if watcher.following or _succeeded(future) else 0.0
                deadline = clock() + wait
    finally:
        watcher.stop()
        out.write(progress.close())
        out.flush()
