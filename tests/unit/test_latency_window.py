from __future__ import annotations

import bisect
import random

import pytest

from agent.latency import PROBE_SPREAD, LatencyWindow, Prober, percentile, probe_gap


def test_percentiles_jitter_and_loss() -> None:
    window = LatencyWindow("controller", size=10)
    for rtt in (10.0, 12.0, 11.0, 13.0):
        window.record(rtt)
    window.lost()
    stats = window.stats()
    assert stats is not None
    assert stats.p50_ms == pytest.approx(11.5)
    assert stats.p99_ms == pytest.approx(12.97)
    assert stats.jitter_ms == pytest.approx((2 + 1 + 2) / 3)
    assert stats.loss_pct == pytest.approx(20.0)
    assert stats.samples == 5


def test_window_slides() -> None:
    window = LatencyWindow("x", size=3)
    for rtt in (100.0, 1.0, 2.0, 3.0):
        window.record(rtt)
    stats = window.stats()
    assert stats is not None and stats.p99_ms < 4 and stats.samples == 3


def test_no_answer_no_stats() -> None:
    window = LatencyWindow("x")
    window.lost()
    assert window.stats() is None


def test_prober_times_answers_and_expires_the_unanswered() -> None:
    now = [100.0]
    prober = Prober(LatencyWindow("c"), timeout_s=5.0, clock=lambda: now[0])
    first = prober.next_probe()
    now[0] += 0.012
    assert prober.answered(first) == pytest.approx(12.0)
    assert prober.answered(first) is None  # a duplicate answer is ignored
    lost = prober.next_probe()
    now[0] += 6.0
    prober.next_probe()  # expires `lost`
    assert prober.answered(lost) is None
    stats = prober.window.stats()
    assert stats is not None and stats.loss_pct == pytest.approx(50.0)


def test_reset_forgets_in_flight_without_counting_loss() -> None:
    now = [0.0]
    prober = Prober(LatencyWindow("c"), timeout_s=1.0, clock=lambda: now[0])
    seq = prober.next_probe()
    prober.reset()
    now[0] += 5
    prober.next_probe()
    assert prober.answered(seq) is None
    assert prober.window.stats() is None


def test_percentile_single() -> None:
    assert percentile([3.0], 99) == 3.0


def test_probe_gaps_keep_the_mean_rate_and_stay_bounded() -> None:
    rng = random.Random(7)
    gaps = [probe_gap(2.0, rng) for _ in range(4000)]
    assert min(gaps) >= 2.0 * (1 - PROBE_SPREAD) and max(gaps) <= 2.0 * (1 + PROBE_SPREAD)
    assert sum(gaps) / len(gaps) == pytest.approx(2.0, rel=0.02)


def _send_times(rng: random.Random, start: float, rounds: int) -> list[float]:
    times, t = [], start
    for _ in range(rounds):
        times.append(t)
        t += probe_gap(1.0, rng)
    return times


def test_two_nodes_started_together_do_not_probe_in_step() -> None:
    """Started 2 ms apart (as a lab starts its agents), periodic probers would collide on the
    path every round; randomised ones only as often as chance has it (a 5 ms window in 1 s)."""
    a = _send_times(random.Random(1), 0.0, 600)
    b = _send_times(random.Random(2), 0.002, 600)

    def near(t: float) -> bool:
        i = bisect.bisect_left(b, t - 0.005)
        return i < len(b) and b[i] <= t + 0.005

    close = sum(near(t) for t in a)
    assert close / len(a) < 0.05
