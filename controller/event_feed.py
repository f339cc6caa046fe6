"""The controller's event feed: a bounded ring of recent notable events plus live subscribers.

What `novacron events` (WatchEvents) and the web dashboard show: alerts firing and resolving,
node condition changes, migration and failover phases, and the audited API requests. Held in
memory only (the audit log is the durable record); a subscriber too slow to keep up loses its
oldest undelivered events rather than holding the controller's memory.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass, field, replace

SUBSCRIBER_BACKLOG = 1000  # events one subscriber may have undelivered


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One event. `kind` is dotted (`alert.firing`, `node.condition`, `migration.transfer`,
    `vm.deploy`, ...); alerts carry their stable `key`, `severity` and `since`."""

    kind: str
    subject: str  # what it is about: "node edge-a", "vm web"
    message: str
    at: float
    severity: str = "info"  # info, warning, critical
    key: str = ""  # alerts: stable across firing and resolving
    since: float = 0.0  # alerts: when it began firing
    fields: tuple[tuple[str, str], ...] = ()  # extra detail (alertname, node, phase, ...)
    seq: int = 0  # its place in the feed, set when published (1, 2, ...)

    def field(self, name: str) -> str:
        return dict(self.fields).get(name, "")


@dataclass(eq=False)
class _Subscriber:
    kinds: frozenset[str]
    queue: deque[FeedEvent] = field(default_factory=lambda: deque(maxlen=SUBSCRIBER_BACKLOG))
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: FeedEvent) -> None:
        if matches(event, self.kinds):
            self.queue.append(event)
            self.ready.set()


def matches(event: FeedEvent, kinds: Collection[str]) -> bool:
    """A kind filter: exact kinds (`alert.firing`) or prefixes (`alert`, `node`); empty = all."""
    if not kinds:
        return True
    return any(event.kind == k or event.kind.startswith(k + ".") for k in kinds)


class EventFeed:
    """`publish` and `subscribe` on the event loop's thread; `recent` from any thread (the
    ring is copied in one step, under the GIL)."""

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("the event feed needs room for at least one event")
        self._ring: deque[FeedEvent] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._subscribers: set[_Subscriber] = set()

    @property
    def capacity(self) -> int:
        return self._ring.maxlen or 0

    def publish(self, event: FeedEvent) -> FeedEvent:
        stamped = replace(event, seq=next(self._seq))
        self._ring.append(stamped)
        for subscriber in self._subscribers:
            subscriber.offer(stamped)
        return stamped

    def recent(self, limit: int = 100, kinds: Collection[str] = ()) -> list[FeedEvent]:
        """The newest `limit` events (matching `kinds`), oldest first."""
        if limit <= 0:
            return []
        found = [e for e in list(self._ring) if matches(e, kinds)]  # list(): one C call
        return found[-limit:]

    async def subscribe(
        self, kinds: Collection[str] = (), replay: int = 0
    ) -> AsyncGenerator[FeedEvent, None]:
        """The last `replay` matching events, then every new one as it is published, until
        the caller stops iterating. Subscribed before the replay is read: nothing between
        the two is missed or doubled."""
        subscriber = _Subscriber(frozenset(kinds))
        self._subscribers.add(subscriber)
        try:
            for event in self.recent(replay, kinds):
                yield event
            while True:
                while subscriber.queue:
                    yield subscriber.queue.popleft()
                subscriber.ready.clear()
                await subscriber.ready.wait()
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
