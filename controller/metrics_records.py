"""Histograms the controller's metrics need observations for, taken outside the core: the
runner reports each Persist once written (Runner.on_persisted), and the placement engine each
decision.

A migration or failover is observed once, when a persisted record of it first reaches its
end (the records say when it started, switched and finished); records that ended before the
metrics started are not (a restart does not count them again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric

from controller.core.instructions import Persist
from controller.placement import (
    Explanation,
    NodeTable,
    PlacementProfile,
    PlacementRequest,
    ScoredEngine,
)
from controller.records import FailoverRecord, MigrationPhase, MigrationRecord

REMEMBERED = 10_000  # ids of finished jobs kept to observe each once

PLACEMENT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DecisionTimes:
    """Placement decisions, timed by the engine itself (Explanation.decision_ms)."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "novacron_placement_decision_seconds",
            "Time the placement engine took to choose a node (deploy, migration, failover, "
            "explain)",
            buckets=PLACEMENT_BUCKETS,
            registry=None,
        )

        self.batch = Histogram(
            "novacron_batch_placement_seconds",
            "Time the batch placer took to plan a DeployVMs batch (all its VMs together)",
            buckets=BATCH_BUCKETS,
            registry=None,
        )

    def observe(self, seconds: float) -> None:
        self.histogram.observe(seconds)


class TimedEngine(ScoredEngine):
    """The placement engine, reporting how long each decision took. The core stays pure:
    the figure is the one the engine measures for every Explanation anyway."""

    def __init__(self, profile: PlacementProfile | None = None) -> None:
        super().__init__(profile)
        self.times = DecisionTimes()

    def decide(self, table: NodeTable, request: PlacementRequest, k: int = 3) -> Explanation:
        explanation = super().decide(table, request, k)
        self.times.observe(explanation.decision_ms / 1000)
        return explanation

    def batch_planned(self, decision_ms: float, vms: int) -> None:
        self.times.batch.observe(decision_ms / 1000)


class Observations:
    """What the runner reports, as histograms (registered through `collect`)."""

    def __init__(self) -> None:
        self.migration_duration = Histogram(
            "novacron_migration_duration_seconds",
            "A migration from its start to its end, by mode and outcome",
            ["mode", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.migration_downtime = Histogram(
            "novacron_migration_downtime_seconds",
            "The guest's pause during the switchover of a successful migration (libvirt's "
            "figure; a cold or snapshot move's whole stop)",
            ["mode"],
            buckets=DOWNTIME_BUCKETS,
            registry=None,
        )
        self.failover_duration = Histogram(
            "novacron_failover_duration_seconds",
            "From a node declared lost to its VM running elsewhere",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.failover_downtime = Histogram(
            "novacron_failover_downtime_seconds",
            "From the lost node last heard from to its VM running elsewhere",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.failovers = Counter(
            "novacron_failovers_finished",
            "Failovers that ended, by outcome (running, failed)",
            ["outcome"],
            registry=None,
        )
        self._seen: OrderedDict[str, None] = OrderedDict()

    def already_finished(
        self, migrations: Iterable[MigrationRecord], failovers: Iterable[FailoverRecord]
    ) -> None:
        """Jobs that ended before observing began: never observed."""
        for mig in migrations:
            if mig.phase.terminal:
                self._remember(mig.id)
        for fo in failovers:
            if not fo.active:
                self._remember(fo.id)

    def persisted(self, persist: Persist) -> None:
        """The runner, after an event's Persist was written (on the event loop)."""
        for mig in persist.migrations:
            if mig.phase.terminal and self._remember(mig.id):
                self._migration(mig)
        for fo in persist.failovers:
            if not fo.active and self._remember(fo.id):
                self._failover(fo)

    def _migration(self, mig: MigrationRecord) -> None:
        if mig.finished_at > 0 and mig.started_at > 0:
            duration = max(0.0, mig.finished_at - mig.started_at)
            self.migration_duration.labels(mig.mode, mig.phase.value).observe(duration)
        if mig.phase is MigrationPhase.SUCCEEDED and mig.downtime_ms > 0:
            self.migration_downtime.labels(mig.mode).observe(mig.downtime_ms / 1000)

    def _failover(self, fo: FailoverRecord) -> None:
        self.failovers.labels(fo.outcome).inc()
        if fo.outcome == "running" and fo.running_at > 0:
            self.failover_duration.observe(max(0.0, fo.running_at - fo.lost_at))
            self.failover_downtime.observe(max(0.0, fo.running_at - fo.last_heard_at))

    def _remember(self, job_id: str) -> bool:
        """True the first time `job_id` is seen."""
        if job_id in self._seen:
            return False
        self._seen[job_id] = None
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return True

    def collect(self) -> Iterator[Metric]:
        for metric in (
            self.migration_duration,
            self.migration_downtime,
            self.failover_duration,
            self.failover_downtime,
            self.failovers,
        ):
            yield from metric.collect()
