"""Measured latency: a sliding window of probe results per target, summarised as the
p50/p95/p99 RTT, jitter and loss that heartbeats carry and placement uses."""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable

from shared.domain import LatencyStats

LOST = math.nan


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, on an already sorted list."""
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


PROBE_SPREAD = 0.5  # each gap is the interval times a uniform factor in [1 - spread, 1 + spread]


def probe_gap(interval_s: float, rng: random.Random) -> float:
    """Seconds until the next probe round: random around the interval, with its mean.

    Strictly periodic probes phase-lock with other periodic traffic - above all the peer's own
    probes, started by the same lab or fleet roll-out at the same moment - and then share the
    path's queues with it every time, which biases the RTT upward (measured in the lab: +1.1 ms
    on a 13.3 ms path, 2 ms behind the peer's probes). Randomised sampling avoids that
    (RFC 2330, section 11.1)."""
    return interval_s * rng.uniform(1.0 - PROBE_SPREAD, 1.0 + PROBE_SPREAD)


class LatencyWindow:
    """The last `size` probes to one target: RTTs in ms, or LOST."""

    def __init__(self, target: str, size: int = 60) -> None:
        self.target = target
        self._samples: deque[float] = deque(maxlen=size)

    def record(self, rtt_ms: float) -> None:
        self._samples.append(rtt_ms)

    def lost(self) -> None:
        self._samples.append(LOST)

    def stats(self) -> LatencyStats | None:
        """None until at least one probe was answered."""
        answered = [s for s in self._samples if not math.isnan(s)]
        if not answered:
            return None
        ordered = sorted(answered)
        jitter = (
            sum(abs(b - a) for a, b in itertools.pairwise(answered)) / (len(answered) - 1)
            if len(answered) > 1
            else 0.0
        )
        total = len(self._samples)
        return LatencyStats(
            target=self.target,
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            jitter_ms=jitter,
            loss_pct=100.0 * (total - len(answered)) / total,
            samples=total,
        )


class Prober:
    """Sequence numbers and send times of probes in flight to one target; a probe unanswered
    after `timeout_s` counts as lost. Pure: the caller sends and passes the clock's readings."""

    def __init__(self, window: LatencyWindow, timeout_s: float, clock: Callable[[], float]) -> None:
        self.window = window
        self.timeout_s = timeout_s
        self.clock = clock
        self._seq = 0
        self._in_flight: dict[int, float] = {}

    def next_probe(self) -> int:
        """Expire overdue probes, then register a new one; returns its sequence number."""
        now = self.clock()
        for seq, sent in list(self._in_flight.items()):
            if now - sent > self.timeout_s:
                del self._in_flight[seq]
                self.window.lost()
        self._seq += 1
        self._in_flight[self._seq] = now
        return self._seq

    def answered(self, seq: int, at: float | None = None) -> float | None:
        """Record the answer to probe `seq` (received `at`, on the prober's clock; default
        now); its RTT in ms, or None if unknown or expired."""
        sent = self._in_flight.pop(seq, None)
        if sent is None:
            return None
        rtt_ms = ((self.clock() if at is None else at) - sent) * 1000.0
        self.window.record(rtt_ms)
        return rtt_ms

    def cancel(self, seq: int) -> None:
        """The probe never left (no route yet): neither an answer nor a loss."""
        self._in_flight.pop(seq, None)

    def in_flight(self, low16: int) -> int | None:
        """The probe in flight whose sequence number ends in these 16 bits (ICMP's width)."""
        return next((s for s in self._in_flight if s & 0xFFFF == low16), None)

    def reset(self) -> None:
        """A new session: probes of the old one will never be answered, and are not losses."""
        self._in_flight.clear()
