"""Offline autonomy: an agent that starts and cannot reach the controller brings the node back
to what the controller last wanted, from its own cache (`agent/desired_cache.py`).

After a reboot while the uplink is down, QEMU is gone: the domains are defined but shut off.
Once `grace_s` has passed without a session, the agent re-applies the cached mesh (tunnels, VM
network) and starts each VM that should run at the generation it holds. Its `stop_after`
applies: a VM alone longer than that stays stopped, since the controller may have replaced
it (the same rule as self-fencing). A VM the cache says is paused is started and paused. On
reconnect the hello reports what is, and the controller reconciles: the newer generation wins.
"""

from __future__ import annotations

import asyncio

import structlog

from agent.contact import ControllerContact
from agent.desired_cache import PAUSED, RUNNING, DesiredStateCache
from agent.hypervisor.base import Hypervisor
from agent.mesh import MeshManager
from shared.aio import event_within
from shared.domain import VMState
from shared.errors import NovaCronError

log = structlog.get_logger(__name__)

DEFAULT_GRACE_S = 10.0


class OfflineRestore:
    def __init__(
        self,
        hypervisor: Hypervisor,
        cache: DesiredStateCache,
        contact: ControllerContact,
        mesh: MeshManager | None = None,
    ) -> None:
        self.hypervisor = hypervisor
        self.cache = cache
        self.contact = contact
        self.mesh = mesh
        self.started: list[str] = []  # VM ids started from the cache
        self.kept_stopped: dict[str, str] = {}  # VM id -> why it stays stopped
        self.restored = asyncio.Event()  # the restore has run (agent/unit.py: READY=1)

    def restore(self) -> None:
        """Blocking (libvirt, `ip`, WireGuard): the whole offline restore, once."""
        config = self.cache.mesh()
        if self.mesh is not None and config is not None:
            try:
                self.mesh.apply(config)
                log.info("mesh restored from the cache", version=config.version)
            except NovaCronError as err:
                log.error("cached mesh not applied", error=str(err))
        alone = self.contact.alone_s()
        for want in self.cache.vms():
            if want.desired not in (RUNNING, PAUSED):
                continue
            held = self.hypervisor.get_vm(want.vm_id)
            if held is None or held.generation != want.generation:
                continue  # not here, or not the copy the controller last placed here
            if held.state not in (VMState.STOPPED, VMState.CRASHED):
                continue  # it runs (or is paused): nothing to bring back
            if want.stop_after_s is not None and alone >= want.stop_after_s:
                why = f"alone {alone:.0f}s, longer than its stop_after {want.stop_after_s:g}s"
                self.kept_stopped[want.vm_id] = why
                log.warning("offline: VM stays stopped", vm_id=want.vm_id, name=want.name, why=why)
                continue
            try:
                self.hypervisor.start(want.vm_id)
                if want.desired == PAUSED:
                    self.hypervisor.suspend(want.vm_id)
            except NovaCronError as err:
                log.error("offline: VM not started", vm_id=want.vm_id, error=str(err))
                continue
            self.started.append(want.vm_id)
            log.warning(
                "offline: VM started from the cache", vm_id=want.vm_id, name=want.name,
                generation=want.generation,
            )  # fmt: skip

    async def after_grace(self, connected: asyncio.Event, grace_s: float) -> None:
        """Restore unless a session is up within `grace_s` (then the controller decides)."""
        if await event_within(connected, grace_s):
            return
        log.warning("no controller: restoring the node from its cached desired state")
        try:
            await asyncio.to_thread(self.restore)
        except NovaCronError as err:  # e.g. libvirt not back yet
            log.error("offline restore failed", error=str(err))
        self.restored.set()
