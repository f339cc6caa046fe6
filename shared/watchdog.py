"""Feeding systemd's watchdog only while the daemon really works.

A ping sent by a timer says only that the timer runs. Here a thread of its own checks, every
half interval, that the asyncio event loop runs a callback within a quarter interval (a loop
blocked by a stuck call cannot), then that the daemon's own liveness checks pass (run on the
loop: the agent's libvirt connection answers, the controller's store answers and its disk is
writable), and only then sends WATCHDOG=1. When they fail, the pings stop and systemd kills
and restarts the daemon after `WatchdogSec=`. A healthy daemon's pings are at most 3/4 of the
interval apart (a round that passes at its deadline, then one that passes at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from shared.sd_notify import Notifier

log = structlog.get_logger(__name__)

LivenessCheck = Callable[[], Awaitable[str]]  # "" if alive, else what is wrong


class BlockingProbe:
    """A blocking check (a libvirt or SQLite call) on a daemon thread of its own, at most one
    at a time: a call that hangs is reported on every later round instead of piling up
    threads (and it cannot keep the process from exiting)."""

    def __init__(self, name: str, probe: Callable[[], str]) -> None:
        self.name = name
        self._probe = probe
        self._pending: concurrent.futures.Future[str] | None = None
        self._since = 0.0

    async def __call__(self) -> str:
        if self._pending is not None and not self._pending.done():
            waited = time.monotonic() - self._since
            return f"{self.name} has not answered for {waited:.1f}s"
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # running: a cancelled wait leaves it be
        self._pending, self._since = future, time.monotonic()

        def work() -> None:
            try:
                future.set_result(self._probe())
            except BaseException as exc:  # reported as the problem, not raised in a thread
                future.set_exception(exc)

        threading.Thread(target=work, name=f"probe-{self.name}", daemon=True).start()
        try:
            return await asyncio.wrap_future(future)
        except Exception as exc:
            return f"{self.name} failed: {exc}"


class WatchdogFeeder:
    """Pings `notifier` every `interval_s / 2` while `loop` and `checks` are healthy.

    `on_round(problem)` is called after every round ("" = pinged): logs, and tests that count
    rounds instead of sleeping."""

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        loop: asyncio.AbstractEventLoop,
        checks: Sequence[LivenessCheck] = (),
        on_round: Callable[[str], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"watchdog interval must be positive, not {interval_s}")
        self.notifier = notifier
        self.period = interval_s / 2
        self.deadline = interval_s / 4
        self.loop = loop
        self.checks = tuple(checks)
        self.on_round = on_round
        self.pings = 0
        self.problem = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def check(self) -> str:
        """One liveness check from this thread: "" if the loop and every check answered in
        time and passed, else why not."""
        started = time.monotonic()
        answered = threading.Event()
        try:
            self.loop.call_soon_threadsafe(answered.set)
        except RuntimeError:
            return "the event loop is closed"
        if not answered.wait(self.deadline):
            return f"the event loop did not run a callback within {self.deadline:g}s"
        for check in self.checks:
            left = self.deadline - (time.monotonic() - started)
            future = asyncio.run_coroutine_threadsafe(_run_check(check), self.loop)
            try:
                problem = future.result(timeout=max(0.0, left))
            except concurrent.futures.TimeoutError:
                future.cancel()
                return f"a liveness check did not answer within {self.deadline:g}s"
            except concurrent.futures.CancelledError:
                return "a liveness check was cancelled (the event loop is stopping)"
            if problem:
                return problem
        return ""

    def round(self) -> str:
        """Check, and ping if alive. Returns the problem ("" = pinged)."""
        problem = self.check()
        # logged before the ping, so whoever sees the ping finds the line that explains it
        if problem and not self.problem:
            log.error("liveness check failed: not feeding the watchdog", problem=problem)
        elif self.problem and not problem:
            log.warning("liveness check passes again: feeding the watchdog")
        elif problem:
            log.debug("watchdog not fed", problem=problem)
        self.problem = problem
        if not problem and self.notifier.watchdog():
            self.pings += 1
        return problem

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            problem = self.round()
            if self.on_round is not None:
                self.on_round(problem)
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))


async def _run_check(check: LivenessCheck) -> str:
    try:
        return await check()
    except Exception as exc:  # a check that raises has found a problem
        return f"liveness check raised {type(exc).__name__}: {exc}"
