"""Self-fencing: a VM whose `stop_after` has passed without a confirmed contact with the
controller is paused here, by this agent alone, so that the replacement the controller may
start elsewhere never runs beside it (controller/core/disconnect.py has the other half).

Paused, not destroyed: if the controller did not replace it, the next session's reconcile
resumes it (memory and all); if it did, that reconcile destroys it as the older generation.
So after fencing the agent starts a new session, whose hello makes the controller decide.
This runs whether or not a session is up; it needs the agent process (systemd restarts it),
and an agent restarted late fences at once from the contact it saved (`agent/contact.py`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import structlog

from agent.contact import ControllerContact
from agent.hypervisor.base import Hypervisor
from shared.domain import VMState
from shared.errors import NovaCronError

log = structlog.get_logger(__name__)

CHECK_EVERY_S = 0.5
RELIST_EVERY_S = 5.0


class SelfFence:
    def __init__(
        self,
        hypervisor: Hypervisor,
        contact: ControllerContact,
        on_fenced: Callable[[], None] = lambda: None,
    ) -> None:
        self.hypervisor = hypervisor
        self.contact = contact
        self.on_fenced = on_fenced
        self.fenced: dict[str, float] = {}  # vm id -> how long alone when it was paused
        self._soonest = 0.0  # the smallest stop_after of a running VM, at the last listing
        self._listed_at = -math.inf

    def _due(self, alone: float, now: float) -> bool:
        """List the VMs only when one may be due, or to learn new ones (every few seconds):
        a listing costs libvirt calls, and most checks find a confirmed contact."""
        return alone >= self._soonest or now - self._listed_at >= RELIST_EVERY_S

    def check(self) -> list[str]:
        """Pause what has been alone too long (blocking: libvirt). Returns the VM ids paused."""
        alone = self.contact.alone_s()
        now = self.contact.now()
        if not self._due(alone, now):
            return []
        self._listed_at, self._soonest = now, math.inf
        paused = []
        for vm in self.hypervisor.list_vms():
            stop_after = vm.stop_after_s
            if vm.state is not VMState.RUNNING or stop_after is None or math.isinf(stop_after):
                continue
            if alone < stop_after:
                self._soonest = min(self._soonest, stop_after)
                continue
            alone = self.contact.alone_s()  # again: a welcome may have come during the listing
            if alone < stop_after:
                continue
            try:
                self.hypervisor.suspend(vm.vm_id)
            except NovaCronError as err:
                log.error("self-fencing failed", vm_id=vm.vm_id, name=vm.name, error=str(err))
                continue
            log.warning(
                "self-fenced: paused, no contact with the controller",
                vm_id=vm.vm_id,
                name=vm.name,
                alone_s=round(alone, 1),
                stop_after_s=stop_after,
            )
            self.fenced[vm.vm_id] = alone
            paused.append(vm.vm_id)
        return paused

    async def run_forever(self) -> None:
        while True:
            try:
                paused = await asyncio.to_thread(self.check)
            except NovaCronError as err:  # libvirt unreachable (QEMU may run on): retried
                log.warning("self-fence check failed", error=str(err))
                paused = []
            if paused:
                self.on_fenced()
            await asyncio.sleep(CHECK_EVERY_S)
