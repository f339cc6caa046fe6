"""The failure detector: ready → suspect → lost, adapting to each node's own link."""

from __future__ import annotations

import random

import pytest

from controller.core.detector import DetectorConfig, HeartbeatHistory, judge, phi
from shared.domain import NodeCondition

READY, SUSPECT, LOST = NodeCondition.READY, NodeCondition.SUSPECT, NodeCondition.LOST
CONFIG = DetectorConfig()


def punctual(n: int = 30, interval: float = 5.0) -> HeartbeatHistory:
    history = HeartbeatHistory(interval)
    for i in range(n):
        history.heard(i * interval)
    return history


def first_at(history: HeartbeatHistory, condition: NodeCondition) -> float:
    """Seconds of silence after the last heartbeat until the detector says `condition`."""
    silence = 0.0
    while judge(history, True, 0.0, history.last_at + silence, CONFIG)[0] is not condition:
        silence += 0.1
        assert silence < 3600, f"never {condition}"
    return round(silence, 1)


def test_phi_grows_with_silence_and_is_finite() -> None:
    values = [phi(t, 5.0, 1.0) for t in (0.0, 5.0, 7.0, 10.0, 20.0, 1e6)]
    assert values == sorted(values)
    assert values[0] == pytest.approx(0.0, abs=1e-6) and values[-1] == 300.0
    assert phi(5.0, 5.0, 1.0) == pytest.approx(0.30, abs=0.01)  # half the time it is later


def test_a_punctual_node_is_suspect_then_lost_after_its_pause() -> None:
    history = punctual()
    assert judge(history, True, 0.0, history.last_at + 14.0, CONFIG) == (READY, "")
    suspect, lost = first_at(history, SUSPECT), first_at(history, LOST)
    # mean 5 s + a pause of 2 intervals, spread floored at 1.25 s: ~19 s, then ~22 s
    assert 17 < suspect < lost < 25
    condition, why = judge(history, True, 0.0, history.last_at + lost, CONFIG)
    assert condition is LOST
    assert why.startswith(f"no heartbeat for {lost:.1f}s: phi ")
    assert "suspect at 3, lost at 8; intervals 5.0s" in why


def test_a_lossy_link_learns_a_later_limit() -> None:
    """30 % of heartbeats lost: the learnt spread widens the limit, so the loss it has seen
    is no reason to call the node lost (a punctual node is lost in ~22 s)."""
    rng = random.Random(7)
    history, t = HeartbeatHistory(5.0), 0.0
    for _ in range(300):
        t += 5.0
        if rng.random() >= 0.3:
            history.heard(t)
    lossy = first_at(history, LOST)
    assert lossy > first_at(punctual(), LOST) + 10
    # the longest run of losses it actually saw does not make it lost
    longest = max(history.intervals)
    assert judge(history, True, 0.0, history.last_at + longest, CONFIG)[0] is not LOST


def test_a_closed_stream_is_suspect_at_once_and_lost_after_the_grace() -> None:
    history = punctual()
    condition, why = judge(history, False, 100.0, 103.0, CONFIG)
    assert condition is SUSPECT and why == "agent not connected for 3.0s (lost after 10s)"
    assert judge(history, False, 100.0, 110.0, CONFIG)[0] is LOST


def test_closing_a_lost_nodes_session_does_not_make_it_suspect_again() -> None:
    """The tick closes a lost node's silent session; the closed stream must not reset it to
    "suspect, lost in 10 s" (seen in the lab: a power cut then took 10 s longer to fail over)."""
    history = punctual(interval=1.0)
    lost = history.last_at + first_at(history, LOST)
    assert lost - history.last_at < 10
    condition, why = judge(history, False, lost, lost + 0.1, CONFIG)
    assert condition is LOST and why.startswith("agent not connected for 0.1s; no heartbeat")


def test_heartbeats_delivered_in_bursts_do_not_shorten_the_limit() -> None:
    """A busy agent or controller may deliver several heartbeats at once: the learnt mean
    is floored at the announced interval, so the pause after a burst is no alarm."""
    history, t = HeartbeatHistory(1.0), 0.0
    for _ in range(20):  # four at once every 4 s
        t += 4.0
        for k in range(4):
            history.heard(t + k * 0.001)
    assert history.stats()[0] < 1.0
    assert first_at(history, LOST) >= first_at(punctual(interval=1.0), LOST)


def test_a_reconnect_gap_is_not_an_interval() -> None:
    history = punctual()
    history.reconnected(10_000.0)
    history.heard(10_005.0)
    assert max(history.intervals) == 5.0


def test_before_two_heartbeats_the_announced_interval_is_the_estimate() -> None:
    history = HeartbeatHistory(1.0)
    history.heard(50.0)
    assert history.stats() == (1.0, 0.25)
    assert judge(history, True, 0.0, 51.0, CONFIG)[0] is READY
    assert judge(history, True, 0.0, 60.0, CONFIG)[0] is LOST


def test_bad_thresholds_are_refused() -> None:
    from controller.config import FailureDetectorConfig
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="suspect_phi < lost_phi"):
        FailureDetectorConfig(suspect_phi=9, lost_phi=8)


def test_a_confirmed_contact_ends_the_silence_without_teaching_an_interval() -> None:
    """Heartbeats stuck behind a stalled TCP half (a lossy link) while the agent's
    ConfirmContact gets through on a connection of its own: the node is alive, not lost,
    and the confirmation is no heartbeat interval for the statistics to learn."""
    history = punctual()
    stats = history.stats()
    stalled_at = history.last_at
    lost = first_at(history, LOST)
    for t in range(5, int(lost) * 3, 5):  # a confirmation every interval, no heartbeat
        history.confirmed(stalled_at + t)
        assert judge(history, True, 0.0, stalled_at + t + 1.0, CONFIG) == (READY, "")
    assert history.stats() == stats
    assert history.last_at == stalled_at
    # once the confirmations stop too, the silence counts from the last of them
    last = history.heard_at
    condition, why = judge(history, True, 0.0, last + lost, CONFIG)
    assert condition is LOST
    assert why.startswith(f"no heartbeat for {last + lost - stalled_at:.1f}s, no contact for")


def test_a_new_session_forgets_the_old_sessions_confirmation() -> None:
    history = punctual()
    history.confirmed(history.last_at + 10.0)
    history.reconnected(history.last_at + 12.0)
    assert history.heard_at == history.last_at
