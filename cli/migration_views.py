"""Table and describe views of migrations (`novacron migration list/get`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cli.migration_progress import pair_text, percent, phase_name, size_text
from cli.render import age, describe, table
from cli.views import NONE, short_id
from shared.pb.v1 import edge_api_pb2 as api

MIGRATION_HEADERS = (
    "ID", "VM", "FROM", "TO", "MODE", "PHASE", "PROGRESS", "BYTES", "STARTED", "DURATION",
    "ERROR",
)  # fmt: skip
ERROR_WIDTH = 60  # in the table; `migration get` has the whole message


def _seconds(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def duration(seconds: float) -> str:
    """`0.42s`, `1.8s`, `42s`, `2m30s`, `3h`: tenths while short, like the migrate summary."""
    if seconds < 1:
        return f"{max(0.0, seconds):.2f}s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return age(seconds)


def instant(ts: Timestamp) -> str:
    """RFC 3339 in UTC with milliseconds (phases are often a fraction of a second apart)."""
    at = datetime.fromtimestamp(_seconds(ts), UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _when(m: Message, field: str, now: float) -> str:
    if not m.HasField(field):
        return NONE
    ts: Timestamp = getattr(m, field)
    return f"{instant(ts)} ({age(now - _seconds(ts))} ago)"


def run_time(m: api.Migration, now: float) -> float | None:
    """Start to end, or start to now while it runs; None before it started."""
    if not m.HasField("started_at"):
        return None
    end = _seconds(m.finished_at) if m.HasField("finished_at") else now
    return end - _seconds(m.started_at)


def _percent_text(m: api.Migration) -> str:
    shown = percent(m)
    return "-" if shown is None else f"{shown}%"


def migration_row(m: api.Migration, now: float) -> list[str]:
    took = run_time(m, now)
    error = m.error if len(m.error) <= ERROR_WIDTH else m.error[: ERROR_WIDTH - 3] + "..."
    return [
        short_id(m.id),
        m.vm_name or short_id(m.vm_id),
        m.source_node_id or "-",
        m.target_node_id or "-",
        m.mode or "-",
        phase_name(m.phase),
        _percent_text(m),
        pair_text(m.bytes_transferred, m.bytes_total) if m.bytes_total else "-",
        f"{age(now - _seconds(m.started_at))} ago" if m.HasField("started_at") else "-",
        "-" if took is None else duration(took),
        error or "-",
    ]


def migration_table(migrations: Sequence[api.Migration], now: float) -> str:
    return table(MIGRATION_HEADERS, [migration_row(m, now) for m in migrations])


def timeline(m: api.Migration, now: float) -> list[str]:
    """One line per phase entered: when, offset from the start, how long it lasted."""
    if not m.phases:
        return []
    start = _seconds(m.started_at) if m.HasField("started_at") else _seconds(m.phases[0].at)
    names = [phase_name(p.phase) for p in m.phases]
    width = max(len(n) for n in names)
    lines = []
    for i, (name, entered) in enumerate(zip(names, m.phases, strict=True)):
        at = _seconds(entered.at)
        if i + 1 < len(m.phases):
            took = duration(_seconds(m.phases[i + 1].at) - at)
        elif m.active:
            took = f"{duration(now - at)} so far"
        else:
            took = ""  # succeeded / failed: where it ended
        line = f"{name:<{width}}  {instant(entered.at)}  +{duration(at - start):<6}  {took}"
        lines.append(line.rstrip())
    return lines


def _bytes_lines(m: api.Migration) -> list[str]:
    if not (m.bytes_total or m.bytes_transferred or m.bytes_remaining):
        return []
    return [
        f"total:        {m.bytes_total} ({size_text(m.bytes_total)})",
        f"transferred:  {m.bytes_transferred} ({size_text(m.bytes_transferred)})",
        f"remaining:    {m.bytes_remaining} ({size_text(m.bytes_remaining)})",
    ]


def migration_describe(m: api.Migration, now: float) -> str:
    took = run_time(m, now)
    shown = percent(m)
    progress = _percent_text(m) + (
        f" (the phase's share: {m.progress_pct}%)"
        if shown is not None and shown != m.progress_pct
        else ""
    )
    return describe(
        [
            ("ID", m.id or "-"),
            ("VM", f"{m.vm_name or '-'} ({m.vm_id or '-'})"),
            ("Source", m.source_node_id or "-"),
            ("Target", m.target_node_id or "-"),
            ("Mode", m.mode or "-"),
            ("Phase", phase_name(m.phase)),
            ("Progress", progress),
            ("Active", "yes" if m.active else "no"),
            ("Reason", m.reason or NONE),
            ("Priority", str(m.priority)),
            ("Max downtime", f"{m.max_downtime_ms} ms" if m.max_downtime_ms else "libvirt default"),
            ("Bandwidth", f"{m.bandwidth_mbit} Mbit/s" if m.bandwidth_mbit else "no cap"),
            ("Generation", f"{m.from_generation} -> {m.to_generation}"),
            ("Started", _when(m, "started_at", now)),
            ("Updated", _when(m, "updated_at", now)),
            ("Finished", _when(m, "finished_at", now)),
            (
                "Duration",
                "-"
                if took is None
                else duration(took) + ("" if m.HasField("finished_at") else " so far"),
            ),
            ("Elapsed", f"{m.elapsed_ms:.0f} ms (libvirt job)"),
            ("Downtime", f"{m.downtime_ms:.0f} ms (guest paused)"),
            ("Error", m.error or NONE),
            ("Bytes", _bytes_lines(m)),
            ("Phases", timeline(m, now)),
        ]
    )
