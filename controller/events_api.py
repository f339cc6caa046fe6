"""`EdgeAPI.WatchEvents`: the event feed (controller/event_feed.py) over gRPC.

The servicer is EdgeAPI's with this one method added, so controller/api.py stays about VMs
and nodes. A request is checked before anything is sent: kinds are short dotted names.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controller.api import EdgeAPIServicer
from controller.event_feed import EventFeed, FeedEvent
from controller.runner import Runner
from shared.errors import InvalidArgument, NovaCronError
from shared.grpc_status import status_code
from shared.pb.v1 import edge_api_pb2 as epb

DEFAULT_REPLAY = 100
MAX_KINDS = 32
KIND = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")


def check_request(request: epb.WatchEventsRequest, kept: int) -> tuple[tuple[str, ...], int]:
    """The kind filter and how many to replay (at most what is kept), or InvalidArgument."""
    kinds = tuple(request.kinds)
    if len(kinds) > MAX_KINDS:
        raise InvalidArgument(f"kinds: at most {MAX_KINDS} (got {len(kinds)})")
    for i, kind in enumerate(kinds):
        if len(kind) > 64 or not KIND.match(kind):
            raise InvalidArgument(
                f"kinds[{i}]: {kind[:64]!r} is not an event kind (like alert, alert.firing,"
                " node.condition, migration)"
            )
    replay = request.replay if request.HasField("replay") else DEFAULT_REPLAY
    return kinds, min(replay, kept)


def timestamp(at: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(at * 1e9))
    return ts


def event_to_pb(event: FeedEvent) -> epb.ControllerEvent:
    out = epb.ControllerEvent(
        seq=event.seq,
        at=timestamp(event.at),
        kind=event.kind,
        severity=event.severity,
        subject=event.subject,
        message=event.message,
        key=event.key,
        fields=dict(event.fields),
    )
    if event.since:
        out.since.CopyFrom(timestamp(event.since))
    return out


class EdgeAPIWithEvents(EdgeAPIServicer):
    def __init__(self, runner: Runner, feed: EventFeed) -> None:
        super().__init__(runner)
        self.feed = feed

    async def WatchEvents(
        self, request: epb.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[epb.ControllerEvent]:
        try:
            kinds, replay = check_request(request, self.feed.capacity)
        except NovaCronError as exc:
            await context.abort(status_code(exc), str(exc))
        if not request.follow:
            for event in self.feed.recent(replay, kinds):
                yield event_to_pb(event)
            return
        async for event in self.feed.subscribe(kinds, replay):
            yield event_to_pb(event)
