"""gRPC health (controller/health.py): NOT_SERVING while the event loop is down, the store's
write probe fails, or a real write was refused within the last few probe intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.health import FAILED_WRITE_COUNTS_FOR, NOT_SERVING, SERVING, HealthMonitor
from shared.errors import NovaCronError, Unavailable


@dataclass
class FakeRunner:
    alive: bool = True
    persist_error: NovaCronError | None = None
    now: float = 1000.0

    def clock(self) -> float:
        return self.now


@dataclass
class Probe:
    error: NovaCronError | None = None
    calls: int = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


@dataclass
class Servicer:
    statuses: dict[str, list[Any]] = field(default_factory=dict)

    async def set(self, name: str, status: Any) -> None:
        self.statuses.setdefault(name, []).append(status)


def monitor(runner: FakeRunner, probe: Probe, servicer: Servicer) -> HealthMonitor:
    return HealthMonitor(
        servicer,  # type: ignore[arg-type]
        ("", "novacron.edge.v1.EdgeAPI"),
        runner,  # type: ignore[arg-type]
        probe,
        interval=5.0,
    )


async def test_a_failing_probe_flips_every_service_and_recovery_flips_it_back() -> None:
    runner, probe, servicer = FakeRunner(), Probe(), Servicer()
    m = monitor(runner, probe, servicer)
    assert await m.check() and m.reason == "serving"
    probe.error = Unavailable("controller.db: cannot write the database: database is locked")
    assert not await m.check()
    assert m.reason.startswith("the store is not writable: controller.db")
    assert not await m.check()  # no repeated set() while nothing changes
    probe.error = None
    assert await m.check()
    assert servicer.statuses == {
        "": [SERVING, NOT_SERVING, SERVING],
        "novacron.edge.v1.EdgeAPI": [SERVING, NOT_SERVING, SERVING],
    }


async def test_a_dead_event_loop_is_not_serving_without_probing() -> None:
    runner, probe, servicer = FakeRunner(alive=False), Probe(), Servicer()
    m = monitor(runner, probe, servicer)
    assert not await m.check()
    assert m.reason == "the controller's event loop is not running" and probe.calls == 0


async def test_a_refused_write_counts_for_a_few_intervals_even_if_the_probe_passes() -> None:
    runner, probe, servicer = FakeRunner(), Probe(), Servicer()
    m = monitor(runner, probe, servicer)
    runner.persist_error = NovaCronError("controller.db: the disk is full")
    assert not await m.check() and "refused a write: controller.db" in m.reason
    runner.now += FAILED_WRITE_COUNTS_FOR * m.interval - 1
    assert not await m.check()
    runner.now += 2
    assert await m.check()  # that error is old and the probe writes: serving
    runner.persist_error = NovaCronError("controller.db: the disk is full")  # a new one
    assert not await m.check()
    runner.persist_error = None  # a later write succeeded
    assert await m.check()


async def test_stopping_reports_not_serving() -> None:
    servicer = Servicer()
    m = monitor(FakeRunner(), Probe(), servicer)
    await m.check()
    await m.stop()
    assert servicer.statuses[""][-1] == NOT_SERVING
