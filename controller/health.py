"""gRPC health that means something: NOT_SERVING while the store cannot be written or the
controller's event loop is not running, SERVING again once both are fine.

Checked every `alerts.health_probe_interval` by a real write (controller/store: a one-row
transaction), and by the runner's own writes: a write the store refused counts for a few
probe intervals even if the small probe gets through (a nearly full disk).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog
from grpc_health.v1 import health, health_pb2

from controller.event_feed import EventFeed, FeedEvent
from controller.runner import Runner
from shared.errors import NovaCronError

log = structlog.get_logger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAILED_WRITE_COUNTS_FOR = 3  # probe intervals


class HealthMonitor:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        runner: Runner,
        probe: Callable[[], Awaitable[None]],
        interval: float,
        feed: EventFeed | None = None,
    ) -> None:
        self._servicer = servicer
        self._services = tuple(services)
        self._runner = runner
        self._probe = probe
        self.interval = interval
        self._feed = feed  # told of each change (a `controller.health` event)
        self.serving: bool | None = None  # None: not checked yet
        self.reason = "not checked yet"
        self._failed_write: tuple[NovaCronError, float] | None = None  # (error, first seen)
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """One check; sets every service's status and returns whether it serves."""
        reason = await self._problem()
        serving = not reason
        if serving != self.serving:
            status = SERVING if serving else NOT_SERVING
            for name in self._services:
                await self._servicer.set(name, status)
            if serving:
                log.info("health: serving")
            else:
                log.error("health: not serving", reason=reason)
            if self._feed is not None and self.serving is not None:
                self._feed.publish(
                    FeedEvent(
                        kind="controller.health",
                        subject="controller",
                        message="serving again" if serving else f"not serving: {reason}",
                        at=self._runner.clock(),
                        severity="info" if serving else "critical",
                    )
                )
        self.serving, self.reason = serving, reason or "serving"
        return serving

    async def _problem(self) -> str:
        if not self._runner.alive:
            return "the controller's event loop is not running"
        try:
            await self._probe()
        except NovaCronError as exc:
            return f"the store is not writable: {exc}"
        error = self._runner.persist_error
        if error is None:
            self._failed_write = None
            return ""
        now = self._runner.clock()
        if self._failed_write is None or self._failed_write[0] is not error:
            self._failed_write = (error, now)
        if now - self._failed_write[1] < FAILED_WRITE_COUNTS_FOR * self.interval:
            return f"the store refused a write: {error}"
        return ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health")

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the monitor must outlive any one failed check
                log.exception("health check failed")
            await asyncio.sleep(self.interval)  # the probe's period, not synchronisation

    async def stop(self) -> None:
        """Stops probing and reports NOT_SERVING (the controller is going away)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for name in self._services:
            await self._servicer.set(name, NOT_SERVING)
