"""Node readiness from the stream and heartbeats: a pure function over an injected clock."""

from __future__ import annotations

from shared.domain import NodeCondition

MISSED_HEARTBEATS_BEFORE_NOT_READY = 3


def node_condition(
    connected: bool, last_heartbeat: float, now: float, heartbeat_interval: float
) -> tuple[NodeCondition, str]:
    """READY while the stream is open and heartbeats arrive; NOT_READY with the reason otherwise."""
    if not connected:
        return NodeCondition.NOT_READY, "agent not connected"
    silence = now - last_heartbeat
    limit = heartbeat_interval * MISSED_HEARTBEATS_BEFORE_NOT_READY
    if silence > limit:
        return NodeCondition.NOT_READY, f"no heartbeat for {silence:.1f}s (limit {limit:.1f}s)"
    return NodeCondition.READY, ""
