"""What a daemon tells systemd over its life (units in systemd/, `Type=notify`): READY=1 once,
when it really serves; STATUS= when what it does changes; WATCHDOG=1 from a real liveness
check (shared/watchdog.py); STOPPING=1 on SIGTERM. Outside systemd all of it is a no-op."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, MutableMapping, Sequence

import structlog

from shared.sd_notify import Notifier, watchdog_interval
from shared.watchdog import LivenessCheck, WatchdogFeeder

log = structlog.get_logger(__name__)


class ServiceUnit:
    def __init__(self, notifier: Notifier, watchdog_s: float | None = None) -> None:
        self.notifier = notifier
        self.watchdog_s = watchdog_s
        self.is_ready = False
        self.last_status = ""
        self.feeder: WatchdogFeeder | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> ServiceUnit:
        """From $NOTIFY_SOCKET and $WATCHDOG_USEC, which are then removed from the environment
        (the daemon's children must not inherit them). Bad values raise ConfigError."""
        env = os.environ if environ is None else environ
        watchdog_s = watchdog_interval(env)
        notifier = Notifier.from_environment(env, unset=True)
        if watchdog_s is not None and not notifier.enabled:
            log.warning("$WATCHDOG_USEC without $NOTIFY_SOCKET: no watchdog")
            watchdog_s = None
        return cls(notifier, watchdog_s)

    def start_watchdog(
        self, checks: Sequence[LivenessCheck], on_round: Callable[[str], None] | None = None
    ) -> None:
        """On the running loop: feed the watchdog (if systemd asked for one) while the loop
        and `checks` are healthy."""
        if self.watchdog_s is None or self.feeder is not None:
            return
        loop = asyncio.get_running_loop()
        self.feeder = WatchdogFeeder(self.notifier, self.watchdog_s, loop, checks, on_round)
        self.feeder.start()
        log.info("feeding the systemd watchdog", interval_s=self.watchdog_s)

    def ready(self, status: str) -> None:
        """READY=1, once (a later call only updates the status)."""
        if self.is_ready:
            self.status(status)
            return
        self.is_ready = True
        self.last_status = status
        if self.notifier.ready(status):
            log.info("told systemd: ready", status=status)

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)

    def stopping(self, status: str = "stopping") -> None:
        self.last_status = status
        self.notifier.stopping(status)

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()
            self.feeder = None
