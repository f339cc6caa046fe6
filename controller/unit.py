"""The controller under systemd (systemd/novacron-controller.service, `Type=notify`).

READY=1 once the store is loaded and the gRPC port is bound (after `ControllerServer.start`),
STATUS= with the address and the fleet's size, STOPPING=1 on SIGTERM. The watchdog is fed
while the event loop answers and the store does: the state dir's filesystem is writable
(a disk that failed and was remounted read-only makes every event's write fail) and a read
through the store's connection returns (a wedged SQLite call holds the lock every write
needs). A full disk is not a liveness failure: each request answers RESOURCE_EXHAUSTED
naming the file, and a restart would not free space.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from controller.records import AuditEntry
from controller.server import ControllerServer
from shared.service_unit import ServiceUnit

STATUS_EVERY_S = 5.0


class StoreCheck:
    """The store's liveness: writable filesystem, and a read that returns (one at a time)."""

    def __init__(self, server: ControllerServer) -> None:
        self.server = server
        self._read: asyncio.Future[list[AuditEntry]] | None = None
        self._since = 0.0

    async def __call__(self) -> str:
        runner = self.server.controller
        if runner is None:
            return ""  # still starting: TimeoutStartSec= bounds that, not the watchdog
        state_dir = self.server.config.state_dir
        try:
            if os.statvfs(state_dir).f_flag & os.ST_RDONLY:
                return f"the state dir {state_dir} is on a read-only filesystem"
        except OSError as exc:
            return f"the state dir {state_dir}: {exc}"
        if self._read is not None and not self._read.done():
            waited = time.monotonic() - self._since
            return f"the store has not answered a read for {waited:.1f}s"
        read = self._read = asyncio.ensure_future(runner.store.audit_log(limit=1))
        self._since = time.monotonic()
        try:
            await asyncio.shield(read)
        except Exception as exc:
            return f"the store failed a read: {exc}"
        return ""


def status_line(server: ControllerServer) -> str:
    runner = server.controller
    if runner is None:
        return "starting"
    view = runner.view
    nodes = view.nodes
    ready = sum(1 for n in nodes.values() if view.condition(n)[0].value == "ready")
    return f"serving on {server.address}, {len(nodes)} nodes ({ready} ready), {len(view.vms)} VMs"


class ControllerUnit:
    """Created on the running loop before `server.start()` (the watchdog is fed while the
    store loads); `serving()` after it; `stopping()` on SIGTERM; `close()` at the end."""

    def __init__(self, server: ControllerServer) -> None:
        self.server = server
        self.unit = ServiceUnit.from_environment()
        self.unit.start_watchdog([StoreCheck(server)])
        self._status: asyncio.Task[None] | None = None

    def serving(self) -> None:
        self.unit.ready(status_line(self.server))
        self._status = asyncio.create_task(self._report_status())

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.unit.status(status_line(self.server))

    def stopping(self) -> None:
        if self._status is not None:
            self._status.cancel()
        self.unit.stopping(f"stopping: was {self.unit.last_status}")

    async def close(self) -> None:
        if self._status is not None:
            self._status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status
        await asyncio.to_thread(self.unit.close)
