"""The progress shown by `novacron vm migrate`: pure, records and arrival times in, text out.

On a terminal, one line redrawn in place:

    web-1 -> mec-1  transfer    [#########-------]  52%  120.0/512.0 MiB  25.3 MiB/s  ETA 15s

Otherwise (logs, pipes) the same facts as plain lines, only when the phase changes or another
tenth of the bytes has been sent, and never a carriage return:

    web-1 -> mec-1: transfer 52%, 120.0/512.0 MiB, 25.3 MiB/s, ETA 15s

The percent is the phase's share (pre_checks 10, snapshot 30, transfer 70, switchover 90,
cleanup 100); during transfer it moves from the snapshot's 30 towards 70 with the bytes. The rate
comes from successive updates (bytes transferred between two records over the time between their
arrival, smoothed), the ETA from bytes_remaining / rate. No clock is read here: the caller passes
the time each record arrived.
"""

from __future__ import annotations

from cli.render import enum_name
from shared.pb.v1 import edge_api_pb2 as api

CLEAR_LINE = "\r\x1b[K"
BAR_WIDTH = 24
MIN_BAR_WIDTH = 8
SMOOTHING = 0.5  # weight of the newest rate sample

_PHASE_SHARE = {
    api.MIGRATION_PHASE_PRE_CHECKS: 10,
    api.MIGRATION_PHASE_SNAPSHOT: 30,
    api.MIGRATION_PHASE_TRANSFER: 70,
    api.MIGRATION_PHASE_SWITCHOVER: 90,
    api.MIGRATION_PHASE_CLEANUP: 100,
    api.MIGRATION_PHASE_SUCCEEDED: 100,
}
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def phase_name(phase: int) -> str:
    return enum_name(api.MigrationPhase.DESCRIPTOR, phase)


def _scale(n: float) -> tuple[float, str]:
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return 1024.0**unit, _UNITS[unit]


def size_text(n: float) -> str:
    """`512 B`, `23.0 MiB`."""
    divisor, unit = _scale(n)
    return f"{n:.0f} B" if unit == "B" else f"{n / divisor:.1f} {unit}"


def pair_text(done: int, total: int) -> str:
    """`120.0/512.0 MiB`: both in the unit of the larger."""
    divisor, unit = _scale(max(done, total))
    if unit == "B":
        return f"{done}/{total} B"
    return f"{done / divisor:.1f}/{total / divisor:.1f} {unit}"


def rate_text(bytes_per_second: float) -> str:
    return f"{size_text(bytes_per_second)}/s"


def eta_text(seconds: float) -> str:
    """`15s`, `2m05s`, `1h02m`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def fraction(m: api.Migration) -> float:
    """How much of the memory is across: transferred / (transferred + remaining), which stays
    honest when pre-copy sends dirtied pages again."""
    known = m.bytes_transferred + m.bytes_remaining
    return min(1.0, m.bytes_transferred / known) if known else 0.0


def percent(m: api.Migration) -> int | None:
    """None for a failed migration: how far it got is in its phases, not a percent."""
    if m.phase == api.MIGRATION_PHASE_FAILED:
        return None
    share = m.progress_pct or _PHASE_SHARE.get(m.phase, 0)
    if m.phase == api.MIGRATION_PHASE_TRANSFER and m.bytes_total:
        low = _PHASE_SHARE[api.MIGRATION_PHASE_SNAPSHOT]
        return low + int((max(share, low) - low) * fraction(m))
    return share


def bar(filled: float, width: int) -> str:
    n = round(max(0.0, min(1.0, filled)) * width)
    return "[" + "#" * n + "-" * (width - n) + "]"


class MigrationProgress:
    """Feed it each record with the time it arrived; write what `update` and `close` return."""

    def __init__(self, tty: bool, columns: int = 80, smoothing: float = SMOOTHING) -> None:
        self.tty = tty
        self.columns = max(20, columns)
        self.smoothing = smoothing
        self.rate: float | None = None  # bytes/s
        self._id = ""
        self._sample: tuple[float, int] | None = None  # (arrived, bytes_transferred)
        self._phase: int | None = None
        self._tenth = 0
        self._drawn = False

    # -- state ----------------------------------------------------------------------------------

    def _observe(self, m: api.Migration, now: float) -> None:
        if m.id != self._id:  # another job: nothing carries over
            self._id, self._sample, self.rate, self._phase, self._tenth = m.id, None, None, None, 0
        if not m.bytes_total:
            return  # no libvirt job reporting yet
        previous, self._sample = self._sample, (now, m.bytes_transferred)
        if previous is None:
            return
        dt, sent = now - previous[0], m.bytes_transferred - previous[1]
        if sent < 0:  # a new job on the source restarted the counters
            self.rate = None
        elif dt > 0:
            sample = sent / dt
            self.rate = (
                sample
                if self.rate is None
                else self.smoothing * sample + (1 - self.smoothing) * self.rate
            )
        else:
            self._sample = previous  # same instant: keep the older sample as the base

    def eta(self, m: api.Migration) -> float | None:
        if not m.active or not m.bytes_remaining or not self.rate:
            return None
        return m.bytes_remaining / self.rate

    # -- text -----------------------------------------------------------------------------------

    def _head(self, m: api.Migration) -> str:
        vm = m.vm_name or m.vm_id[:8] or "VM"
        return f"{vm} -> {m.target_node_id}" if m.target_node_id else vm

    def _extras(self, m: api.Migration) -> list[str]:
        extras = []
        if m.bytes_total:
            extras.append(pair_text(m.bytes_transferred, m.bytes_total))
        eta = self.eta(m)
        if eta is not None and self.rate is not None:
            extras += [rate_text(self.rate), f"ETA {eta_text(eta)}"]
        if m.phase == api.MIGRATION_PHASE_FAILED and m.error:
            extras.append(m.error)
        return extras

    def line(self, m: api.Migration) -> str:
        """The plain (non-TTY) line."""
        pct = percent(m)
        text = f"{self._head(m)}: {phase_name(m.phase)}" + ("" if pct is None else f" {pct}%")
        return ", ".join([text, *self._extras(m)])

    def bar_line(self, m: api.Migration) -> str:
        """The terminal line, fitted to `columns - 1`: the bar shrinks, then goes; then the VM
        and target go if that makes it fit; else the end is cut (keeping the VM while the
        first figure still shows)."""
        pct = percent(m)
        parts = ([] if pct is None else [f"{pct:>3}%"]) + self._extras(m)
        after = "  ".join(parts)
        limit = self.columns - 1
        lines = []
        for head in (f"{self._head(m)}  ", ""):
            before = f"{head}{phase_name(m.phase):<10}  "
            width = min(BAR_WIDTH, limit - len(before) - len(after) - 3)  # brackets, a space
            drawn = (
                bar(pct / 100, width) + " " if pct is not None and width >= MIN_BAR_WIDTH else ""
            )
            first = min(len(parts[0]), 20) if parts else 0  # a percent, or some of the error
            lines.append((before + drawn + after, len(before) + first))
        for text, _ in lines:
            if len(text) <= limit:
                return text
        for text, needed in lines:
            if needed <= limit:
                return text[:limit]
        return lines[-1][0][:limit]

    def update(self, m: api.Migration, now: float) -> str:
        self._observe(m, now)
        if self.tty:
            self._drawn = True
            return CLEAR_LINE + self.bar_line(m)
        tenth = int(fraction(m) * 10) if m.bytes_total else 0
        if m.phase != self._phase or tenth > self._tenth:
            self._phase, self._tenth = m.phase, tenth
            return self.line(m) + "\n"
        return ""

    def close(self) -> str:
        """Clear the terminal line (the summary follows on a clean line)."""
        if not self._drawn:
            return ""
        self._drawn = False
        return CLEAR_LINE
