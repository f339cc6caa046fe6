"""Runs the alert rules (controller/alerts.py) against the live state, and feeds the results.

Every `alerts.interval`, and soon after any persisted change, it gathers a snapshot from the
view, evaluates the rules, and publishes `alert.firing` / `alert.resolved` for what changed,
plus `node.condition` when a node's condition moved (conditions are judged from time, not
persisted, so this is where a node going suspect becomes an event). It runs on the event
loop's thread, between events, like every other read of the view.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

import structlog

from controller.alerts import (
    AlertsConfig,
    AlertSnapshot,
    Change,
    FiringAlert,
    NodeFacts,
    VMFacts,
    advance,
    evaluate,
)
from controller.cert_watch import CertificateWatch
from controller.core.instructions import Persist
from controller.event_feed import EventFeed, FeedEvent
from controller.feed_events import PersistFeed
from controller.view import ControllerView
from shared.aio import event_within
from shared.domain import Capacity, NodeCondition

log = structlog.get_logger(__name__)

MIN_GAP_S = 1.0  # a burst of changes is evaluated once, at most this often
SHARE = 10  # and never sooner than this many times what the last evaluation took


class AlertRunner:
    def __init__(
        self,
        view: ControllerView,
        feed: EventFeed,
        config: AlertsConfig,
        certificates: CertificateWatch,
        clock: Callable[[], float],
    ) -> None:
        self.view = view
        self.feed = feed
        self.config = config
        self.certificates = certificates
        self.clock = clock
        self.firing: dict[str, FiringAlert] = {}  # replaced, never changed: metrics read it
        self.fired_total: Counter[str] = Counter()  # alertname -> times it began firing
        self.last_snapshot = AlertSnapshot()
        self._conditions: dict[str, NodeCondition] = {}
        self._persisted = PersistFeed(view.nodes)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ inputs

    def persisted(self, persist: Persist) -> None:
        """The runner wrote `persist` (Runner.on_persisted): feed its events, re-evaluate."""
        for event in self._persisted.events(persist, self.clock()):
            self.feed.publish(event)
        self._wake.set()

    def snapshot(self) -> AlertSnapshot:
        """The facts the rules need, read from the view in one synchronous step."""
        view = self.view
        allocated: dict[str, Capacity] = {}
        vms: list[VMFacts] = []
        for vm in view.vms.values():
            if vm.reserves_capacity:
                for node_id in {vm.node_id, vm.migrating_to} - {""}:
                    allocated[node_id] = allocated.get(node_id, Capacity()) + vm.spec.capacity()
            bound = vm.spec.placement
            # as placement judged it: a VM placed near its users has a latency estimated from
            # distance (nothing measures it), one without has its node's measured RTT
            if bound.max_latency_ms > 0 and bound.near is None:
                vms.append(
                    VMFacts(
                        vm.spec.name, vm.node_id, bound.max_latency_ms, bound.latency_percentile
                    )
                )
        nodes = []
        for node in view.nodes.values():
            condition, reason = view.condition(node)
            nodes.append(
                NodeFacts(
                    node.node_id,
                    condition,
                    reason,
                    node.capacity,
                    allocated.get(node.node_id, Capacity()),
                    node.controller_rtt_ms(),
                )
            )
        state = view.core.state
        return AlertSnapshot(
            nodes=tuple(nodes),
            vms=tuple(vms),
            migrations=tuple(state.migrations.values()),
            failovers=tuple(state.failovers.values()),
            certificates=self.certificates.facts(state.credentials),
        )

    def condition_seen(self, node_id: str) -> NodeCondition | None:
        """The node's condition at the last evaluation (None: not seen yet)."""
        return self._conditions.get(node_id)

    # ------------------------------------------------------------ one evaluation

    def evaluate_once(self) -> list[Change]:
        now = self.clock()
        snapshot = self.snapshot()
        self._condition_events(snapshot, now)
        firing, changes = advance(self.firing, evaluate(snapshot, now, self.config), now)
        self.firing, self.last_snapshot = firing, snapshot
        for change in changes:
            alert = change.alert
            if change.state == "firing":
                self.fired_total[alert.name] += 1
                log.warning("alert firing", alert=alert.key, severity=alert.severity.value)
            else:
                log.info("alert resolved", alert=alert.key)
            self.feed.publish(
                FeedEvent(
                    kind=f"alert.{change.state}",
                    subject=alert.subject,
                    message=alert.message,
                    at=change.at,
                    severity=alert.severity.value if change.state == "firing" else "info",
                    key=alert.key,
                    since=change.since,
                    fields=(("alertname", alert.name), ("alert_severity", alert.severity.value)),
                )
            )
        return changes

    def _condition_events(self, snapshot: AlertSnapshot, now: float) -> None:
        seen: dict[str, NodeCondition] = {}
        for node in snapshot.nodes:
            seen[node.node_id] = node.condition
            before = self._conditions.get(node.node_id)
            if before is None or before is node.condition:
                continue
            worse = node.condition in (NodeCondition.SUSPECT, NodeCondition.LOST)
            self.feed.publish(
                FeedEvent(
                    kind="node.condition",
                    subject=f"node {node.node_id}",
                    message=f"node {node.node_id}: {before.value} -> {node.condition.value}"
                    + (f" ({node.reason})" if node.reason else ""),
                    at=now,
                    severity="warning" if worse else "info",
                    fields=(("from", before.value), ("to", node.condition.value)),
                )
            )
        self._conditions = seen

    # ------------------------------------------------------------ the task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self.evaluate_once()
            except Exception:  # a bug in one rule must not end alerting for good
                log.exception("alert evaluation failed")
            took = loop.time() - started
            self._wake.clear()
            await event_within(self._wake, self.config.interval)
            # a rate limit, not synchronisation: at most ~10 % of the loop on a big fleet
            gap = max(min(MIN_GAP_S, self.config.interval), SHARE * took)
            gap -= loop.time() - started
            if gap > 0:
                await asyncio.sleep(gap)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
