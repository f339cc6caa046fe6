"""Failure detection that adapts to each node's own link: ready → suspect → lost.

A phi-accrual detector (Hayashibara et al. 2004, as in Akka and Cassandra) over the node's
observed heartbeat inter-arrival times: phi is how unlikely the current silence is given the
mean and spread of the past intervals, -log10(P(a heartbeat is still this late)). A node on a
jittery, lossy link learns a wider spread, so a late heartbeat there is a weak signal; a node
that was punctual is suspected soon after it falls silent. A floor on the spread keeps a
perfectly regular node from being declared lost by one delayed packet. A stream that closes is
a strong signal: suspect at once, lost after `disconnect_lost_after`.

Pure: the history is fed arrival times, the verdict is asked at `now`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from shared.domain import NodeCondition


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds; the pause and the spread floor are in heartbeat intervals, so they scale
    with `heartbeat_interval`. Defaults at a 5 s interval: a punctual node is suspect after
    ~19 s of silence and lost after ~22 s; a jittery or lossy link learns a later limit."""

    suspect_phi: float = 3.0  # ~1 in 1,000 that a heartbeat is still this late
    lost_phi: float = 8.0  # ~1 in 100 million
    min_std_heartbeats: float = 0.25  # floor on the learnt spread of intervals
    acceptable_pause_heartbeats: float = 2.0  # added to the learnt mean: a stall is no signal
    disconnect_lost_after_s: float = 10.0  # a closed stream: suspect at once, lost after this
    window: int = 100  # intervals remembered


@dataclass(slots=True)
class HeartbeatHistory:
    """Arrival times of one node's heartbeats (intervals between them, and the last one)."""

    expected_interval_s: float
    window: int = 100
    intervals: deque[float] = field(default_factory=deque)
    last_at: float = 0.0
    confirmed_at: float = 0.0  # the latest ConfirmContact of the current session
    # running sums of the intervals and their squares: every tick judges every node, so the
    # statistics must not cost a pass over the window (30 us each, 0.3 s a tick at 10k nodes)
    _sum: float = 0.0
    _squares: float = 0.0

    def heard(self, at: float) -> None:
        if self.last_at and at > self.last_at:
            interval = at - self.last_at
            self.intervals.append(interval)
            self._sum += interval
            self._squares += interval * interval
            while len(self.intervals) > self.window:
                old = self.intervals.popleft()
                self._sum -= old
                self._squares -= old * old
        self.last_at = max(self.last_at, at)

    def reconnected(self, at: float) -> None:
        """A new session: the gap since the last heartbeat is not an interval of the link."""
        self.last_at = at
        self.confirmed_at = 0.0

    def confirmed(self, at: float) -> None:
        """Proof of life on another connection (ConfirmContact): it ends the silence, but it
        is not an interval of the heartbeats, so the learnt statistics do not change."""
        self.confirmed_at = max(self.confirmed_at, at)

    @property
    def heard_at(self) -> float:
        return max(self.last_at, self.confirmed_at)

    def stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the intervals; before two heartbeats, the
        announced interval with a quarter of it as spread (Akka's first-heartbeat estimate)."""
        n = len(self.intervals)
        if n == 0:
            return self.expected_interval_s, self.expected_interval_s / 4
        mean = self._sum / n
        if n == 1:
            return mean, self.expected_interval_s / 4
        var = max(0.0, (self._squares - self._sum * mean) / (n - 1))
        return mean, math.sqrt(var)


def phi(elapsed: float, mean: float, std: float) -> float:
    """-log10 of the probability that the next heartbeat comes later than `elapsed`, under a
    normal distribution (the logistic approximation Akka uses; finite for any input)."""
    y = (elapsed - mean) / std
    exponent = -y * (1.5976 + 0.070566 * y * y)
    e = math.exp(exponent) if exponent < 700 else math.inf
    if elapsed > mean:
        if e == 0.0:
            return 300.0
        return -math.log10(e / (1.0 + e))
    if math.isinf(e):
        return 0.0
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def judge(
    history: HeartbeatHistory | None,
    connected: bool,
    disconnected_at: float,
    now: float,
    config: DetectorConfig,
) -> tuple[NodeCondition, str]:
    """The node's condition at `now`, with the reason when it is not READY. A closed stream
    never makes a node less lost than its silence already does: closing a silent session
    (the tick does, for a lost node) must not set it back to suspect."""
    silence = _by_silence(history, now, config)
    if connected:
        return silence
    since = max(0.0, now - disconnected_at)
    if since >= config.disconnect_lost_after_s:
        return NodeCondition.LOST, f"agent not connected for {since:.1f}s"
    if silence[0] is NodeCondition.LOST:
        return NodeCondition.LOST, f"agent not connected for {since:.1f}s; {silence[1]}"
    return NodeCondition.SUSPECT, (
        f"agent not connected for {since:.1f}s (lost after {config.disconnect_lost_after_s:g}s)"
    )


def _by_silence(
    history: HeartbeatHistory | None, now: float, config: DetectorConfig
) -> tuple[NodeCondition, str]:
    if history is None or not history.heard_at:
        return NodeCondition.READY, ""
    learnt, std = history.stats()
    beat = history.expected_interval_s
    # The agent beats every `beat` seconds; a shorter learnt mean is only queueing (a busy
    # agent or controller delivers several at once), and would make the next pause look long.
    learnt = max(learnt, beat)
    pause = config.acceptable_pause_heartbeats * beat
    std = max(std, config.min_std_heartbeats * beat)
    silence = max(0.0, now - history.heard_at)
    value = phi(silence, learnt + pause, std)
    if value < config.suspect_phi:
        return NodeCondition.READY, ""  # the common case: no reason to format
    confirmed = history.confirmed_at > history.last_at
    why = (
        f"no heartbeat for {now - history.last_at:.1f}s, no contact for {silence:.1f}s"
        if confirmed
        else f"no heartbeat for {silence:.1f}s"
    ) + (
        f": phi {value:.1f} (suspect at {config.suspect_phi:g}, "
        f"lost at {config.lost_phi:g}; intervals {learnt:.1f}s ± {std:.1f}s, "
        f"pause allowed {pause:.1f}s)"
    )
    return (NodeCondition.LOST if value >= config.lost_phi else NodeCondition.SUSPECT), why
