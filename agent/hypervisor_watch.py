"""Getting libvirt back by ourselves: libvirtd killed or restarted must not leave the agent
broken until someone restarts it.

Every second the agent asks the driver whether its connection still works. While it does not,
it reconnects with backoff. Meanwhile heartbeats say so and carry no VM list: the controller
shows the node not ready, with the reason, and its VMs unknown. QEMU may well run on without
libvirtd, so nothing is changed on the node. Once reconnected, the session restarts, so the
controller compares a full inventory again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from agent.backoff import Backoff
from agent.hypervisor.base import Hypervisor
from shared.errors import NovaCronError

log = structlog.get_logger(__name__)

CHECK_EVERY_S = 1.0


class HypervisorWatch:
    def __init__(
        self, hypervisor: Hypervisor, on_back: Callable[[], None], cap_s: float = 30.0
    ) -> None:
        self.hypervisor = hypervisor
        self.on_back = on_back
        self.problem = ""
        self._backoff = Backoff(base=1.0, cap=cap_s)

    async def check(self) -> float:
        """One look (and one reconnect attempt if it is broken); the delay until the next."""
        problem = await asyncio.to_thread(self.hypervisor.problem)
        if not problem:
            return CHECK_EVERY_S
        if not self.problem:
            log.warning("hypervisor unavailable", problem=problem)
        self.problem = problem
        try:
            await asyncio.to_thread(self.hypervisor.reconnect)
        except NovaCronError as err:
            delay = self._backoff.next_delay()
            log.info("hypervisor reconnect failed", error=str(err), retry_in_s=round(delay, 1))
            return delay
        log.warning("hypervisor reconnected: starting a new session for a full inventory")
        self.problem = ""
        self._backoff.reset()
        self.on_back()
        return CHECK_EVERY_S

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(await self.check())
