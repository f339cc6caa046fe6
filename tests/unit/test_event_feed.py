"""The event feed (controller/event_feed.py) and the events taken from what was persisted
(controller/feed_events.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from controller.core.instructions import Persist
from controller.event_feed import EventFeed, FeedEvent, matches
from controller.feed_events import PersistFeed
from controller.records import AuditEntry, FailoverRecord, MigrationPhase, Tombstone
from tests.unit.test_alerts import failover, migration
from tests.unit.test_store import a_node


def ev(kind: str, n: int = 0) -> FeedEvent:
    return FeedEvent(kind, f"node n{n}", f"{kind} {n}", at=float(n))


def test_the_ring_keeps_the_newest_and_numbers_every_event() -> None:
    feed = EventFeed(capacity=3)
    for i in range(5):
        feed.publish(ev("node.condition", i))
    kept = feed.recent(10)
    assert [e.seq for e in kept] == [3, 4, 5] and kept[0].message == "node.condition 2"
    assert [e.seq for e in feed.recent(2)] == [4, 5]
    assert feed.recent(0) == []
    with pytest.raises(ValueError, match="at least one"):
        EventFeed(0)


def test_kinds_match_exactly_or_by_dotted_prefix() -> None:
    firing = ev("alert.firing")
    assert matches(firing, ()) and matches(firing, ["alert"]) and matches(firing, ["alert.firing"])
    assert not matches(firing, ["alert.resolved"]) and not matches(firing, ["aler"])
    feed = EventFeed()
    for kind in ("alert.firing", "vm.deploy", "alert.resolved", "node.condition"):
        feed.publish(ev(kind))
    assert [e.kind for e in feed.recent(10, ["alert", "node"])] == [
        "alert.firing",
        "alert.resolved",
        "node.condition",
    ]


async def test_a_subscriber_gets_the_replay_then_new_events_without_gaps_or_doubles() -> None:
    feed = EventFeed()
    for i in range(3):
        feed.publish(ev("alert.firing", i))
    got: list[int] = []
    stream = feed.subscribe(["alert"], replay=2)

    async def read(n: int) -> None:
        async for event in stream:
            got.append(event.seq)
            if len(got) == n:
                return

    await read(2)
    assert got == [2, 3] and feed.subscribers == 1
    feed.publish(ev("vm.deploy"))  # filtered out
    feed.publish(ev("alert.resolved"))
    await asyncio.wait_for(read(3), 5)
    assert got == [2, 3, 5]
    reader = asyncio.create_task(read(4))
    await asyncio.sleep(0)  # the reader waits on the feed
    feed.publish(ev("alert.firing"))
    await asyncio.wait_for(reader, 5)
    assert got == [2, 3, 5, 6]
    await stream.aclose()
    assert feed.subscribers == 0


def test_persisted_changes_become_events_once_per_phase() -> None:
    feed = PersistFeed()
    audit = AuditEntry(10.0, "vm.deploy", "web", "request_id=r1", "client:ops", "ok", "s1")
    refused = dataclasses.replace(audit, action="vm.delete", result="refused: not found")
    out = feed.events(Persist(audit=(audit, refused)), 11.0)
    assert [(e.kind, e.severity) for e in out] == [("vm.deploy", "info"), ("vm.delete", "warning")]
    assert out[0].message == "client:ops: vm.deploy web (request_id=r1)"
    assert out[1].message.endswith(": refused: not found") and out[0].field("actor") == "client:ops"

    transfer = migration(MigrationPhase.TRANSFER, 20.0)
    assert [e.kind for e in feed.events(Persist(migrations=(transfer,)), 21.0)] == [
        "migration.transfer"
    ]
    progress = dataclasses.replace(transfer, bytes_transferred=1 << 20)
    assert feed.events(Persist(migrations=(progress,)), 22.0) == []  # progress: no event
    failed = dataclasses.replace(transfer, phase=MigrationPhase.FAILED, error="target refused")
    [end] = feed.events(Persist(migrations=(failed,)), 23.0)
    assert end.kind == "migration.failed" and end.severity == "warning"
    assert "target refused" in end.message and end.field("phase") == "failed"


def test_failovers_deletions_and_nodes() -> None:
    feed = PersistFeed(known_nodes=["old"])
    started: FailoverRecord = failover("", 5.0)
    assert [e.kind for e in feed.events(Persist(failovers=(started,)), 6.0)] == ["failover.started"]
    assert feed.events(Persist(failovers=(started,)), 7.0) == []
    [failed] = feed.events(
        Persist(failovers=(dataclasses.replace(started, outcome="failed"),)), 8.0
    )
    assert failed.kind == "failover.failed" and failed.severity == "critical"
    node = a_node("new")
    out = feed.events(
        Persist(
            tombstones=(Tombstone("v1", "web", 3, 9.0),),
            nodes=(node, a_node("old")),
            forget_nodes=("gone",),
        ),
        9.0,
    )
    assert [(e.kind, e.subject) for e in out] == [
        ("vm.deleted", "vm web"),
        ("node.registered", "node new"),
        ("node.removed", "node gone"),
    ]
    assert feed.events(Persist(nodes=(node,)), 10.0) == []  # a re-registration: known
