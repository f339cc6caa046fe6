"""The agent's confirmed contact with the controller: the clock self-fencing runs on."""

from __future__ import annotations

import json
from pathlib import Path

from agent.contact import CONTACT_FILE, ControllerContact


class Clock:
    def __init__(self, mono: float = 100.0, wall: float = 1_700_000_000.0) -> None:
        self.mono, self.wall = mono, wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def contact(tmp_path: Path | None, clock: Clock) -> ControllerContact:
    return ControllerContact(tmp_path, lambda: clock.mono, lambda: clock.wall)


def test_a_pong_confirms_the_heartbeat_sent_before_its_ping_not_the_ping() -> None:
    clock = Clock()
    c = contact(None, clock)
    start = clock.mono
    clock.advance(1.0)
    c.sent_report()  # heartbeat at start + 1
    clock.advance(3.0)
    c.sent_ping(7)  # queued after it, at start + 4
    clock.advance(0.5)
    c.ponged(7)
    assert c.confirmed_at == start + 1.0  # what the controller provably heard
    assert c.alone_s() == 3.5


def test_a_pong_for_a_ping_sent_before_any_report_confirms_nothing_new() -> None:
    clock = Clock()
    c = contact(None, clock)
    before = c.confirmed_at
    c.sent_ping(1)
    clock.advance(1.0)
    c.ponged(1)
    c.ponged(99)  # unknown seq: ignored
    assert c.confirmed_at == before


def test_the_hello_is_confirmed_by_the_welcome_and_a_new_session_starts_clean() -> None:
    clock = Clock()
    c = contact(None, clock)
    clock.advance(10.0)
    c.sent_report()
    hello_at = c.now()
    clock.advance(2.0)
    c.welcomed(hello_at)
    assert c.alone_s() == 2.0
    c.sent_ping(3)
    c.session_ended()
    clock.advance(1.0)
    c.ponged(3)  # an answer from the old session confirms nothing
    assert c.confirmed_at == hello_at


def test_a_restarted_agent_counts_from_the_contact_it_saved(tmp_path: Path) -> None:
    clock = Clock()
    c = contact(tmp_path, clock)
    clock.advance(1.0)
    c.sent_report()
    c.sent_ping(1)
    clock.advance(0.2)
    c.ponged(1)
    saved = json.loads((tmp_path / CONTACT_FILE).read_text())["confirmed_wall"]
    assert abs(saved - (clock.wall - 0.2)) < 1e-6
    clock.advance(30.0)  # the agent was down 30 s; its process clock starts anew
    clock.mono = 5.0
    again = contact(tmp_path, clock)
    assert abs(again.alone_s() - 30.2) < 1e-6


def test_an_unreadable_saved_contact_counts_from_now(tmp_path: Path) -> None:
    (tmp_path / CONTACT_FILE).write_text("{not json")
    clock = Clock()
    assert contact(tmp_path, clock).alone_s() == 0.0


def test_a_heartbeat_the_controller_heard_confirms_its_send_time_and_covers_older_ones() -> None:
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    for seq in (1, 2, 3):
        now[0] += 5.0
        contact.sent_heartbeat(seq)  # queued at 105, 110, 115
    now[0] = 140.0
    contact.heartbeat_heard(2)  # ConfirmContact on a second connection names beat 2
    assert contact.confirmed_at == 110.0 and contact.alone_s() == 30.0
    contact.heartbeat_heard(1)  # covered by 2 already: nothing goes back
    assert contact.confirmed_at == 110.0
    contact.heartbeat_heard(9)  # a beat this session never sent confirms nothing
    assert contact.confirmed_at == 110.0
    contact.heartbeat_heard(3)
    assert contact.confirmed_at == 115.0


def test_a_new_session_forgets_the_old_sessions_heartbeats() -> None:
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    now[0] += 5.0
    contact.sent_heartbeat(7)
    contact.session_ended()
    contact.heartbeat_heard(7)
    assert contact.confirmed_at == 100.0


def test_heartbeats_confirmed_by_pongs_are_not_kept() -> None:
    now = [100.0]
    contact = ControllerContact(None, lambda: now[0])
    for seq in range(1, 1001):
        now[0] += 5.0
        contact.sent_heartbeat(seq)
        contact.sent_ping(seq)
        contact.ponged(seq)
    assert len(contact._beats) == 0  # a long-lived agent's table does not grow


def test_a_counted_query_confirms_its_own_send_time_never_a_later_one() -> None:
    """ConfirmContact answered `counted`: the controller heard the node when the query
    arrived, so the query's send time is confirmed, not the answer's arrival."""
    clock = Clock()
    c = contact(None, clock)
    clock.advance(20.0)
    asked = clock.mono
    clock.advance(4.0)  # a slow answer on a lossy link
    c.query_counted(asked)
    assert c.confirmed_at == asked and c.alone_s() == 4.0
    c.query_counted(asked - 10.0)  # an older try answered late: nothing goes back
    assert c.confirmed_at == asked
