"""When this agent last provably reached the controller: the clock its self-fencing runs on.

The controller replaces a lost node's VM `stop_after` + a margin after it *last heard* from the
node (controller/core/disconnect.py), so the agent must count from a moment no later than that:
the send time of a message it knows arrived. A pong proves its ping arrived, and the stream is
ordered, so every heartbeat (or the hello) queued before that ping arrived too; the send time
of the latest of those is the confirmed contact. A welcome confirms the hello. So does the
controller's answer to ConfirmContact, on a connection of its own: the latest heartbeat it
received, or the query itself when the controller counted it (agent/contact_check.py).

The moment is kept on disk (wall clock) so that an agent restarted while its VMs kept running
does not start counting afresh: it fences at once what has been alone too long.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CONTACT_FILE = "controller-contact.json"
SAVE_EVERY_S = 5.0  # on flash storage, not every second; an older saved value is safe


class ControllerContact:
    def __init__(
        self,
        state_dir: Path | None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._path = state_dir / CONTACT_FILE if state_dir is not None else None
        self._mono, self._wall = monotonic, wall
        self._latest_sent = 0.0  # the latest heartbeat or hello queued on this session
        self._pings: dict[int, float] = {}  # ping seq -> _latest_sent when it was queued
        self._beats: dict[int, float] = {}  # heartbeat seq -> when it was queued
        self._saved_at = -SAVE_EVERY_S
        self.confirmed_at = self._load()

    def _load(self) -> float:
        """The saved contact, on this process's monotonic clock; else now (a first start:
        nothing runs that the controller could have replaced)."""
        now = self._mono()
        if self._path is None:
            return now
        try:
            saved = float(json.loads(self._path.read_text())["confirmed_wall"])
        except FileNotFoundError:
            return now
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("controller contact unreadable: counting from now", error=str(err))
            return now
        return now - max(0.0, self._wall() - saved)

    def sent_report(self) -> None:
        """A hello or heartbeat was queued on the stream."""
        self._latest_sent = self._mono()

    def sent_heartbeat(self, seq: int) -> None:
        """A heartbeat was queued on the stream (a report, and a ConfirmContact may name it)."""
        self.sent_report()
        self._beats[seq] = self._latest_sent

    def heartbeat_heard(self, seq: int) -> None:
        """The controller says it received heartbeat `seq` of this session."""
        sent = self._beats.get(seq)
        if sent is None:
            return  # not one of this session's: nothing is confirmed
        for older in [s for s in self._beats if s <= seq]:
            del self._beats[older]  # this one covers them
        self._confirm(sent)

    def query_counted(self, sent_at: float) -> None:
        """The controller counted a ConfirmContact sent at `sent_at` as contact."""
        self._confirm(sent_at)

    def sent_ping(self, seq: int) -> None:
        self._pings[seq] = self._latest_sent

    def welcomed(self, hello_sent_at: float) -> None:
        self._confirm(hello_sent_at)

    def ponged(self, seq: int) -> None:
        sent = self._pings.pop(seq, None)
        for older in [s for s in self._pings if s < seq]:
            del self._pings[older]  # lost, or answered out of order: this one covers them
        if sent:
            self._confirm(sent)

    def session_ended(self) -> None:
        self._pings.clear()
        self._beats.clear()
        self._latest_sent = 0.0

    def now(self) -> float:
        return self._mono()

    def alone_s(self) -> float:
        """Seconds since the last confirmed contact."""
        return max(0.0, self._mono() - self.confirmed_at)

    def _confirm(self, at: float) -> None:
        if at <= self.confirmed_at:
            return
        self.confirmed_at = at
        for seq in [s for s, sent in self._beats.items() if sent <= at]:
            del self._beats[seq]  # confirmed already: only newer beats can still say more
        now = self._mono()
        if self._path is not None and now - self._saved_at >= SAVE_EVERY_S:
            self._saved_at = now
            self._save(self._wall() - (now - at))

    def _save(self, confirmed_wall: float) -> None:
        assert self._path is not None
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"confirmed_wall": confirmed_wall}))
            os.replace(tmp, self._path)
        except OSError as err:  # the older saved value stays: it only fences sooner
            log.warning("controller contact not saved", error=str(err))
            with contextlib.suppress(OSError):
                tmp.unlink()
