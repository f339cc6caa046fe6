"""The agent under systemd (systemd/novacron-agent.service, `Type=notify`).

READY=1 once the node is really served: libvirt connected and the first hello (the full
inventory) answered by the controller's welcome; or, with the controller unreachable, once
the offline restore from the cached desired state has run (agent/offline.py). STATUS= says
which, and how many VMs run. STOPPING=1 on SIGTERM: the agent then ends its session and its
libvirt connection only; the VMs are libvirtd's processes and keep running.

The watchdog is fed while the event loop answers and libvirt does: a round trip to libvirtd
(`host_info`) must return, with an answer or an error, within the check's deadline. A
libvirtd that is down is NOT a liveness failure: the agent reconnects by itself
(agent/hypervisor_watch.py) and its heartbeats tell the controller why the node is not ready,
which a restarted agent, waiting for libvirt before it says hello, could not. A call that
hangs is: the connection is wedged and only a new process gets a new one.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.config import AgentConfig
from agent.hypervisor.base import Hypervisor
from agent.session import AgentSession
from shared.domain import VMState
from shared.errors import NovaCronError
from shared.service_unit import ServiceUnit
from shared.watchdog import BlockingProbe

STATUS_EVERY_S = 5.0


class AgentUnit:
    """Created first thing on the running loop; `watch(session)` once the session exists;
    `stopping()` on SIGTERM; `close()` at the end."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.unit = ServiceUnit.from_environment()
        self.hypervisor: Hypervisor | None = None
        self.running_vms = 0
        self.vms = 0
        self.unit.status(f"starting: connecting to libvirt at {config.libvirt_uri}")
        self.unit.start_watchdog([BlockingProbe("libvirt", self._libvirt_answers)])
        self._count = BlockingProbe("libvirt", self._count_vms)
        self._task: asyncio.Task[None] | None = None

    def _libvirt_answers(self) -> str:
        """Blocking: a round trip to libvirtd; "" whether it answers or refuses (see above)."""
        if self.hypervisor is not None:
            with contextlib.suppress(NovaCronError):
                self.hypervisor.host_info()
        return ""

    def _count_vms(self) -> str:
        if self.hypervisor is not None:
            vms = self.hypervisor.list_vms()
            self.vms = len(vms)
            self.running_vms = sum(1 for v in vms if v.state == VMState.RUNNING)
        return ""

    def watch(self, session: AgentSession) -> None:
        self.hypervisor = session.hypervisor
        if not self.unit.notifier.enabled:
            # not under systemd: nobody reads READY or STATUS, so no loop counts VMs over
            # libvirt every few seconds beside the session's own calls
            return
        self.unit.status(f"starting: saying hello to the controller at {self.config.controller}")
        self._task = asyncio.create_task(self._run(session))

    async def _run(self, session: AgentSession) -> None:
        connected = asyncio.ensure_future(session.connected.wait())
        restored = asyncio.ensure_future(session.offline.restored.wait())
        try:
            await asyncio.wait([connected, restored], return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            restored.cancel()
        await self._count()
        self.unit.ready(self.status_line(session))
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            await self._count()
            self.unit.status(self.status_line(session))

    def status_line(self, session: AgentSession) -> str:
        controller = self.config.controller
        problem = session.hypervisor.problem()
        if problem:
            return f"libvirt unreachable: {problem}"
        if session.connected.is_set():
            return f"connected to controller {controller}, {self.vms} VMs"
        if session.offline.restored.is_set() and session.sessions == 0:
            return (
                f"offline: controller {controller} unreachable, running {self.running_vms} "
                "VMs from cache"
            )
        return f"offline: controller {controller} unreachable, {self.running_vms} VMs running"

    def stopping(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.unit.stopping(f"stopping (VMs keep running): was {self.unit.last_status}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.unit.close)
