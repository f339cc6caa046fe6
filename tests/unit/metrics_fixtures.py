"""Expositions of both daemons' collectors without daemons: the controller's over a
hand-driven core, the agent's over a stand-in libvirt that answers what libvirt's qemu driver
answers (the real thing: tests/integration/test_metrics_scrape.py)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from agent.hypervisor.domain_xml import VMMetadata
from agent.metrics import AgentCollector
from controller.core import events as ev
from controller.core.instructions import Persist
from controller.metrics import ControllerCollector, _Histograms
from controller.metrics_records import Observations, TimedEngine
from controller.records import FailoverRecord, MigrationPhase, MigrationRecord
from controller.view import ControllerView
from shared.domain import LatencyStats, Utilization
from shared.mesh import MeshPeerStatus, MeshStatus
from tests.unit.core_driver import Driver

VM_ID = "0f8a3c52-5a4e-4a7e-9d0b-4c61f3a2b9e1"

# what libvirt's qemu driver answers for a running guest with one NIC (units: ns, KiB)
QEMU_RECORD: dict[str, Any] = {
    "state.state": 1,
    "state.reason": 1,
    "cpu.time": 2_500_000_000,
    "cpu.user": 1_000_000_000,
    "cpu.system": 900_000_000,
    "balloon.current": 131072,
    "balloon.maximum": 131072,
    "balloon.rss": 65536,
    "balloon.usable": 100000,
    "net.count": 1,
    "net.0.name": "vnet3",
    **{f"net.0.{d}.{k}": 10 for d in ("rx", "tx") for k in ("bytes", "pkts", "errs", "drop")},
}


@dataclass
class FakeRunner:
    """What the metrics read of the runner, around a hand-driven core."""

    driver: Driver
    on_persisted: list[Any] = field(default_factory=list)
    sessions_opened: int = 0
    open_sessions: int = 0

    @property
    def view(self) -> ControllerView:
        return ControllerView(self.driver.core, lambda: self.driver.now)


def exposition(*collectors: Any) -> str:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


class _Only:
    def __init__(self, observations: Observations) -> None:
        self.observations = observations

    def collect(self) -> Any:
        return self.observations.collect()


def observations_text(obs: Observations) -> str:
    return exposition(_Only(obs))


def controller_text() -> str:
    """A fleet of two nodes with a VM, a finished migration and a finished failover."""
    d = Driver()
    d.core.engine = TimedEngine()
    runner = FakeRunner(d, sessions_opened=2, open_sessions=2)
    d.hello("edge-a")
    d.hello("edge-b")
    d.feed(
        ev.AgentHeartbeat,
        node_id="edge-a",
        session_id=d.sessions["edge-a"],
        utilization=Utilization(),
        latencies=(LatencyStats("controller", 10.0, 12.0, 15.0, 1.0, 0.0, 60),),
        vms=(),
    )
    d.deploy("web-1", "edge-a", pin=True)
    obs = Observations()
    mig = MigrationRecord(
        "m1",
        "v1",
        "web-1",
        "edge-a",
        "edge-b",
        MigrationPhase.SUCCEEDED,
        1,
        2,
        started_at=1.0,
        finished_at=3.0,
        downtime_ms=100.0,
    )
    fo = FailoverRecord(
        "f1",
        "v1",
        "web-1",
        "edge-a",
        "edge-b",
        "node lost",
        1,
        2,
        1.0,
        2.0,
        3.0,
        running_at=9.0,
        outcome="running",
    )
    obs.persisted(Persist(migrations=(mig,), failovers=(fo,)))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(ControllerCollector(runner))  # type: ignore[arg-type]
    registry.register(_Histograms(runner, obs))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


class QemuLike:
    """Stands in for the agent's libvirt connection with the qemu driver's answers."""

    def problem(self) -> str:
        return ""

    def domain_stats(self, stats: int) -> list[tuple[VMMetadata, dict[str, Any]]]:
        return [(VMMetadata(VM_ID, "web-1", 1, "tiny"), dict(QEMU_RECORD))]


class MeshLike:
    def peek(self) -> MeshStatus:
        peer = MeshPeerStatus("edge-b", "key", "10.0.0.2:51820", 3.0, 100, 200)
        return MeshStatus(4, "mykey", "10.77.0.1/16", (peer,))


def agent_text() -> str:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        collector = AgentCollector("edge-a")
        collector.hypervisor = QemuLike()
        collector.mesh = MeshLike()  # type: ignore[assignment]
        collector.loop = loop
        collector.latencies = lambda: [
            LatencyStats("controller", 10.0, 12.0, 15.0, 1.0, 0.0, 60),
            LatencyStats("edge-b", 20.0, 22.0, 25.0, 1.0, 0.0, 60),
        ]
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(collector)
        return generate_latest(registry).decode()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
