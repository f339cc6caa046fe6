"""A VM's disconnect policy: its defaults, when the controller may replace it, and how long a
failover is expected to take.

The controller replaces a VM only once the original is provably stopped. The agent pauses a VM
on its own once it has gone `stop_after` without a confirmed exchange with the controller
(`agent/contact.py`), and such an exchange always follows the last heartbeat the controller
heard, so `stop_after` plus a margin (for clock rate drift, the agent's check period and the
pause itself) after the controller last heard from the node, the original is paused. A VM
without `stop_after` is never provably stopped: it waits for its node, or for an operator to
declare the node dead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.core.detector import DetectorConfig, HeartbeatHistory, phi
from shared.domain import NEVER, DisconnectPolicy


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """`controller.failover`: the policy a VM gets when it says nothing, and the storm limit.
    Defaults at a 5 s heartbeat: a silent node is lost after ~22 s, its VMs' originals pause
    themselves 30 s after it was last heard, and are replaced from 32 s on. The price of a
    finite stop_after: a controller outage that long pauses those VMs too (until their agent
    reconnects); `never` keeps them running, and then only an operator replaces them."""

    replace_after_s: float = 0.0  # after the node is lost
    stop_after_s: float = 30.0  # the agent pauses a VM this long without the controller
    clock_margin_s: float = 2.0  # added to stop_after before the controller replaces
    max_per_interval: int = 10  # automatic failovers started per interval, fleet-wide
    interval_s: float = 60.0


def min_stop_after(heartbeat_interval: float) -> float:
    """The shortest `stop_after` that a healthy node on a slow link never reaches: its agent
    confirms contact once per heartbeat (the pong of the ping sent after it: a round trip
    later, more with a retransmission on a lossy link), so two heartbeats and a second."""
    return 2 * heartbeat_interval + 1.0


def resolve(asked: DisconnectPolicy, defaults: FailoverSettings) -> DisconnectPolicy:
    """The policy that applies, every field filled in. A VM that waits for its node keeps
    running without the controller unless it asks to stop."""
    replace_after = (
        defaults.replace_after_s if asked.replace_after_s is None else asked.replace_after_s
    )
    stop_after = asked.stop_after_s
    if stop_after is None:
        stop_after = defaults.stop_after_s if not math.isinf(replace_after) else NEVER
    return DisconnectPolicy(replace_after_s=replace_after, stop_after_s=stop_after)


def in_force(spec_policy: DisconnectPolicy, defaults: FailoverSettings) -> DisconnectPolicy:
    """The policy a failover may rely on. A `stop_after` counts only if the VM's own spec
    carries it (its agent learnt it from that spec): a VM recorded before policies existed,
    or adopted, does not stop itself, whatever the defaults say now."""
    replace_after = spec_policy.replace_after_s
    if replace_after is None:
        replace_after = defaults.replace_after_s
    return DisconnectPolicy(replace_after_s=replace_after, stop_after_s=spec_policy.stop_after_s)


def due_at(
    policy: DisconnectPolicy,
    last_heard_at: float,
    lost_at: float,
    margin_s: float,
    *,
    node_is_dead: bool = False,
    now_asked: bool = False,
) -> tuple[float | None, str]:
    """When the VM may be replaced (None: not until something changes), and why then.
    An operator's "the node is dead" proves the original stopped; "now" skips replace_after."""
    if node_is_dead:
        return lost_at, "the operator declared the node dead"
    if not policy.replaces and not now_asked:
        return None, "its policy waits for the node (replace_after: never)"
    if not policy.stops:
        return None, (
            "the original is not provably stopped (no stop_after): it waits for the node, "
            "or for `novacron node fail-over NODE --node-is-dead`"
        )
    assert policy.replace_after_s is not None and policy.stop_after_s is not None
    stopped = last_heard_at + policy.stop_after_s + margin_s
    if now_asked:
        return stopped, f"the original pauses itself by {policy.stop_after_s:g}s + {margin_s:g}s"
    replace_from = lost_at + policy.replace_after_s
    if stopped >= replace_from:
        return stopped, (
            f"stop_after {policy.stop_after_s:g}s + margin {margin_s:g}s since last heard"
        )
    return replace_from, f"replace_after {policy.replace_after_s:g}s since lost"


def detection_s(config: DetectorConfig, history: HeartbeatHistory | None, interval: float) -> float:
    """The silence after which the detector declares the node lost, on its learnt link."""
    if history is None:
        history = HeartbeatHistory(interval)
    mean, std = history.stats()
    mean += config.acceptable_pause_heartbeats * interval
    std = max(std, config.min_std_heartbeats * interval)
    low, high = 0.0, mean + 100 * std
    for _ in range(50):  # phi grows with the silence: bisect for lost_phi
        mid = (low + high) / 2
        if phi(mid, mean, std) >= config.lost_phi:
            high = mid
        else:
            low = mid
    return high


def expected_failover(
    policy: DisconnectPolicy, detection: float, disconnect_lost_after: float, margin_s: float
) -> str:
    """`vm show`'s line: how long after its node falls silent (or its stream closes) the VM
    runs elsewhere, guest boot not included."""
    if not policy.replaces:
        return "never: waits for its node (replace_after: never)"
    if not policy.stops:
        return "only when an operator declares its node dead (no stop_after)"
    assert policy.replace_after_s is not None and policy.stop_after_s is not None
    stopped = policy.stop_after_s + margin_s
    closed = min(detection, disconnect_lost_after)  # a closed stream, or its silence

    def after(lost: float) -> float:
        return max(lost + policy.replace_after_s, stopped)  # type: ignore[operator]

    return (
        f"~{after(detection):.0f}s after its node falls silent, "
        f"~{after(closed):.0f}s after its stream closes "
        f"(lost after ~{detection:.0f}s / ~{closed:.0f}s, replace_after "
        f"{policy.replace_after_s:g}s, stop_after {policy.stop_after_s:g}s + margin {margin_s:g}s)"
    )
