"""The event stream the dashboard shows, behind one function so its source can change.

The controller's event feed (controller/event_feed.py: alerts firing and resolving, node
conditions, migration and failover phases, audited requests), newest first. The feed lives
in memory; right after a restart, while it is still empty, the durable audit trail stands
in. Either way each event is the same small dict, so the page does not care which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from controller.event_feed import FeedEvent
from controller.records import AuditEntry

EVENT_LIMIT = 50

Event = dict[str, Any]
EventSource = Callable[[int], Awaitable[list[Event]]]


class AuditLog(Protocol):
    async def audit_log(
        self, limit: int = 100, since: float = 0.0, actor: str = ""
    ) -> list[AuditEntry]: ...


def audit_event(entry: AuditEntry) -> Event:
    """Worded as the feed words an audited request (controller/feed_events.py)."""
    ok = entry.result == "ok"
    detail = f" ({entry.detail})" if entry.detail else ""
    return {
        "at": entry.at,
        "kind": entry.action,
        "severity": "info" if ok else "warning",
        "subject": entry.target,
        "message": f"{entry.actor or 'api'}: {entry.action} {entry.target}{detail}"
        + ("" if ok else f": {entry.result}"),
        "actor": entry.actor,
    }


class Feed(Protocol):
    def recent(self, limit: int = 100, kinds: Collection[str] = ()) -> list[FeedEvent]: ...


def feed_event(event: FeedEvent) -> Event:
    return {
        "at": event.at,
        "kind": event.kind,
        "severity": event.severity,
        "subject": event.subject,
        "message": event.message,  # an audited request's names its actor already
        "actor": "",
    }


def event_source(store: AuditLog, feed: Feed | None = None) -> EventSource:
    """The newest events first, at most `limit` of them."""

    async def recent(limit: int) -> list[Event]:
        if feed is not None and (events := feed.recent(limit)):
            return [feed_event(e) for e in reversed(events)]
        return [audit_event(e) for e in await store.audit_log(limit=limit)]

    return recent
