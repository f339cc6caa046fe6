"""`novacron migration list/get`, the orphan verbs and the progress of `vm migrate`.

The CLI runs against a real in-process gRPC server (the canned servicer of test_cli, extended);
the progress line is also tested on its own with fixed arrival times.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from cli import migration_watch
from cli.main import main
from cli.migration_progress import CLEAR_LINE, MigrationProgress, eta_text, pair_text, percent
from cli.migration_views import duration, timeline
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb
from tests.unit.test_cli import VM_ID, Servicer, make_vm

MIG_ID = "5d41402a-aaaa-4bbb-8ccc-dddddddddddd"
OLD_ID = "0ld00000-aaaa-4bbb-8ccc-dddddddddddd"
T0 = 1_735_787_045  # 2025-01-02T03:04:05Z
MiB = 2**20
P = api.MigrationPhase

SUMMARY = [
    "web-1 migrated gw-1 -> mec-1 in 2.3 s (guest paused 97 ms, 23.0 MiB of memory sent in 1.8 s)",
    "address 10.251.0.7/32 now routed to mec-1",
    "target chosen by placement: mec-1 score 0.912 = ...",
]


def ts(offset: float) -> Timestamp:
    """T0 + offset seconds, exact to the nanosecond."""
    out = Timestamp()
    out.FromNanoseconds(T0 * 10**9 + round(offset * 1e9))
    return out


def mig(
    phase: int,
    pct: int = 0,
    sent: int = 0,
    remaining: int = 0,
    total: int = 0,
    *,
    mig_id: str = MIG_ID,
    target: str = "mec-1",
    error: str = "",
) -> api.Migration:
    ended = phase in (P.MIGRATION_PHASE_SUCCEEDED, P.MIGRATION_PHASE_FAILED)
    return api.Migration(
        id=mig_id,
        vm_id=VM_ID,
        vm_name="web-1",
        source_node_id="gw-1",
        target_node_id=target,
        mode="live",
        phase=phase,  # type: ignore[arg-type]
        progress_pct=pct,
        bytes_total=total,
        bytes_transferred=sent,
        bytes_remaining=remaining,
        active=not ended,
        error=error,
    )


def finished_migration() -> api.Migration:
    """A succeeded migration with a full timeline, at fixed times."""
    m = mig(P.MIGRATION_PHASE_SUCCEEDED, 100, 23 * MiB, 0, 128 * MiB)
    m.reason, m.priority, m.max_downtime_ms, m.bandwidth_mbit = "requested", 5, 300, 200
    m.from_generation, m.to_generation = 3, 4
    m.downtime_ms, m.elapsed_ms = 97.0, 1840.0
    m.started_at.CopyFrom(ts(0))
    m.updated_at.CopyFrom(ts(2.31))
    m.finished_at.CopyFrom(ts(2.31))
    for phase, at in (
        (P.MIGRATION_PHASE_PRE_CHECKS, 0.0),
        (P.MIGRATION_PHASE_SNAPSHOT, 0.12),
        (P.MIGRATION_PHASE_TRANSFER, 0.3),
        (P.MIGRATION_PHASE_SWITCHOVER, 2.1),
        (P.MIGRATION_PHASE_CLEANUP, 2.2),
        (P.MIGRATION_PHASE_SUCCEEDED, 2.31),
    ):
        m.phases.add(phase=phase, at=ts(at))
    return m


def running_migration() -> api.Migration:
    m = mig(P.MIGRATION_PHASE_TRANSFER, 70, 64 * MiB, 64 * MiB, 128 * MiB, mig_id="9" * 8 + "-x")
    m.vm_name, m.target_node_id, m.mode = "db-1", "cloud-1", "postcopy"
    m.started_at.CopyFrom(ts(0))
    m.phases.add(phase=P.MIGRATION_PHASE_PRE_CHECKS, at=ts(0))
    m.phases.add(phase=P.MIGRATION_PHASE_TRANSFER, at=ts(1))
    return m


def orphan() -> api.Orphan:
    status = pb.VMStatus(
        vm_id=VM_ID, name="web-1", state=pb.VM_STATE_RUNNING, generation=7, image="tiny"
    )
    return api.Orphan(
        node_id="gw-1", vm=status, reason="no record in this controller", seen_at=ts(0)
    )


# A migrate that goes through every phase; the bytes cross 10 %, 20 %, 50 % and 100 %.
PHASES = [
    mig(P.MIGRATION_PHASE_PRE_CHECKS, 10),
    mig(P.MIGRATION_PHASE_SNAPSHOT, 30),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 0, 100 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 5 * MiB, 95 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 12 * MiB, 88 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 25 * MiB, 75 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 29 * MiB, 71 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 55 * MiB, 45 * MiB, 100 * MiB),
    mig(P.MIGRATION_PHASE_TRANSFER, 70, 100 * MiB, 0, 100 * MiB),
    mig(P.MIGRATION_PHASE_SWITCHOVER, 90, 100 * MiB, 0, 100 * MiB),
    mig(P.MIGRATION_PHASE_CLEANUP, 100, 100 * MiB, 0, 100 * MiB),
    mig(P.MIGRATION_PHASE_SUCCEEDED, 100, 100 * MiB, 0, 100 * MiB),
]


@dataclass
class MigrationServicer(Servicer):
    """Adds migrations and orphans. WatchMigration plays `watch_script`, one list per call
    (empty: UNIMPLEMENTED, as an older controller); MigrateVM answers once it has all gone out,
    so the test sees every record before the summary."""

    watch_script: list[list[api.Migration]] = field(default_factory=list)
    break_watch: bool = False
    watch_sent: threading.Event = field(default_factory=threading.Event)
    hang_watch: bool = False  # as the controller does for a VM with no migration yet
    watch_tried: threading.Event = field(default_factory=threading.Event)
    migrate_delay: float = 0.0  # after the watch was tried

    def MigrateVM(self, request: api.MigrateVMRequest, context: Any) -> api.MigrateVMResponse:
        if self.watch_script:
            self.watch_sent.wait(10)
        elif self.migrate_delay or self.hang_watch:  # the watch first (and UNIMPLEMENTED seen)
            self.watch_tried.wait(10)
            time.sleep(self.migrate_delay)
        return super().MigrateVM(request, context)

    def WatchMigration(self, request: api.GetMigrationRequest, context: Any) -> Iterator[Any]:
        self.requests.append(request)
        self.watch_tried.set()
        if self.hang_watch:
            while context.is_active() and not self.release.wait(0.01):
                pass
            return
        if not self.watch_script:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        last = len(self.watch_script) == 1
        records = self.watch_script[0] if last else self.watch_script.pop(0)
        try:
            for i, record in enumerate(records):
                if self.break_watch and i == 2:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "controller restarting")
                yield record
        finally:  # also when the CLI cancels the stream after the last record
            if last:
                self.watch_sent.set()

    def ListMigrations(
        self, request: api.ListMigrationsRequest, context: Any
    ) -> api.ListMigrationsResponse:
        self.requests.append(request)
        found = [running_migration(), finished_migration()]
        if request.vm:
            found = [m for m in found if request.vm in (m.vm_name, m.vm_id)]
        return api.ListMigrationsResponse(migrations=found)

    def GetMigrationStatus(self, request: api.GetMigrationRequest, context: Any) -> Any:
        self.requests.append(request)
        m = finished_migration()
        if (request.migration_id and MIG_ID.startswith(request.migration_id)) or (
            request.vm == "web-1"
        ):
            return m
        what = f"migration {request.migration_id!r}" if request.migration_id else request.vm
        context.abort(grpc.StatusCode.NOT_FOUND, f"{what} not found")

    def ListOrphans(self, request: api.ListOrphansRequest, context: Any) -> api.ListOrphansResponse:
        self.requests.append(request)
        return api.ListOrphansResponse(orphans=[orphan()])

    def AdoptVM(self, request: api.OrphanRef, context: Any) -> pb.VM:
        self.requests.append(request)
        if request.vm != "web-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no orphan {request.vm!r} on node 'gw-1'")
        vm = make_vm()
        vm.generation = 7
        return vm

    def DeleteOrphan(self, request: api.OrphanRef, context: Any) -> api.Orphan:
        self.requests.append(request)
        return orphan()


@dataclass
class Controller:
    address: str
    servicer: MigrationServicer


@pytest.fixture
def controller() -> Iterator[Controller]:
    servicer = MigrationServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    edge_api_pb2_grpc.add_EdgeAPIServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Controller(f"127.0.0.1:{port}", servicer)
    finally:
        servicer.release.set()
        servicer.watch_sent.set()
        server.stop(grace=None)


def run(ctl: Controller, *args: str) -> int:
    return main(["--controller", ctl.address, *args])


def watches(ctl: Controller) -> list[api.GetMigrationRequest]:
    return [r for r in ctl.servicer.requests if isinstance(r, api.GetMigrationRequest)]


# -- migration list / get ----------------------------------------------------------------


def test_migration_list_table(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "migration", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID", "VM", "FROM", "TO", "MODE", "PHASE", "PROGRESS", "BYTES", "STARTED", "DURATION",
        "ERROR",
    ]  # fmt: skip
    running, done = lines[1].split(), lines[2].split()
    assert running[:8] == [
        "99999999", "db-1", "gw-1", "cloud-1", "postcopy", "transfer", "50%", "64.0/128.0",
    ]  # fmt: skip
    assert done[:8] == [
        "5d41402a", "web-1", "gw-1", "mec-1", "live", "succeeded", "100%", "23.0/128.0",
    ]  # fmt: skip
    assert done[-2:] == ["2.3s", "-"]  # finished: start to finish; no error
    assert controller.servicer.requests[-1] == api.ListMigrationsRequest(vm="")
    assert run(controller, "migration", "ls", "--vm", "web-1") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert controller.servicer.requests[-1] == api.ListMigrationsRequest(vm="web-1")
    assert run(controller, "migration", "list", "--vm", "nobody") == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "No migrations found.\n")


def test_migration_list_json_and_yaml(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "migration", "list", "-o", "json") == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [i["id"] for i in items] == ["99999999-x", MIG_ID]
    assert items[1]["phase"] == "succeeded"
    assert items[1]["bytes_total"] == 128 * MiB  # uint64 as a number
    assert items[1]["phases"][0] == {"phase": "pre_checks", "at": "2025-01-02T03:04:05Z"}
    assert items[0]["error"] == ""  # defaults present
    assert run(controller, "-o", "yaml", "migration", "list") == 0
    assert yaml.safe_load(capsys.readouterr().out)["items"][0]["mode"] == "postcopy"


def test_migration_get_describes_every_field_and_the_timeline(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "migration", "get", "5d41") == 0
    out = capsys.readouterr().out
    assert controller.servicer.requests[-1] == api.GetMigrationRequest(migration_id="5d41")
    for key, value in (
        ("ID", MIG_ID),
        ("VM", f"web-1 ({VM_ID})"),
        ("Phase", "succeeded"),
        ("Progress", "100%"),
        ("Active", "no"),
        ("Reason", "requested"),
        ("Priority", "5"),
        ("Max downtime", "300 ms"),
        ("Bandwidth", "200 Mbit/s"),
        ("Generation", "3 -> 4"),
        ("Started", "2025-01-02T03:04:05.000Z ("),
        ("Finished", "2025-01-02T03:04:07.310Z ("),
        ("Duration", "2.3s\n"),
        ("Elapsed", "1840 ms (libvirt job)"),
        ("Downtime", "97 ms (guest paused)"),
        ("Error", "<none>"),
    ):
        expected = f"{key + ':':<14}{value}"
        assert expected in out, expected
    assert "  transferred:  24117248 (23.0 MiB)\n" in out
    assert out.split("Phases:\n")[1].splitlines() == [
        "  pre_checks  2025-01-02T03:04:05.000Z  +0.00s   0.12s",
        "  snapshot    2025-01-02T03:04:05.120Z  +0.12s   0.18s",
        "  transfer    2025-01-02T03:04:05.300Z  +0.30s   1.8s",
        "  switchover  2025-01-02T03:04:07.100Z  +2.1s    0.10s",
        "  cleanup     2025-01-02T03:04:07.200Z  +2.2s    0.11s",
        "  succeeded   2025-01-02T03:04:07.310Z  +2.3s",
    ]
    assert run(controller, "migration", "describe", "--vm", "web-1", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["to_generation"] == 4
    assert controller.servicer.requests[-1] == api.GetMigrationRequest(vm="web-1")


def test_migration_get_errors(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "migration", "get", "ffff") == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: migration 'ffff' not found\n"
    assert run(controller, "migration", "get") == 2
    assert "one of the arguments ID --vm is required" in capsys.readouterr().err
    assert run(controller, "migration", "get", "5d41", "--vm", "web-1") == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_running_migration_timeline_says_so_far() -> None:
    lines = timeline(running_migration(), now=T0 + 4.5)
    assert lines[-1].endswith("+1.0s    3.5s so far")


# -- orphans -------------------------------------------------------------------------------


def test_orphans_adopt_delete(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "vm", "orphans") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NODE", "NAME", "ID", "STATE", "GENERATION", "REASON", "SEEN"]
    assert lines[1].split()[:5] == ["gw-1", "web-1", "3f0c9a52", "running", "7"]
    assert "no record in this controller" in lines[1]
    assert run(controller, "vm", "orphans", "-o", "json") == 0
    item = json.loads(capsys.readouterr().out)["items"][0]
    assert (item["node_id"], item["vm"]["state"], item["vm"]["generation"]) == (
        "gw-1",
        "running",
        7,
    )

    assert run(controller, "vm", "adopt", "gw-1", "web-1") == 0
    assert capsys.readouterr().out == (
        "VM web-1 (3f0c9a52) on node gw-1 adopted: managed from now on, at generation 7\n"
    )
    assert controller.servicer.requests[-1] == api.OrphanRef(node_id="gw-1", vm="web-1")
    assert run(controller, "vm", "adopt", "gw-1", "ghost") == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: no orphan 'ghost' on node 'gw-1'\n"

    assert run(controller, "vm", "delete-orphan", "gw-1", VM_ID) == 0
    assert capsys.readouterr().out == "orphan web-1 (3f0c9a52) destroyed on node gw-1\n"
    assert controller.servicer.requests[-1] == api.OrphanRef(node_id="gw-1", vm=VM_ID)
    assert run(controller, "vm", "delete-orphan", "gw-1", VM_ID, "-o", "yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out)["vm"]["name"] == "web-1"
    assert run(controller, "vm", "adopt", "gw-1") == 2  # NAME|ID is required
    capsys.readouterr()


# -- vm migrate with progress ----------------------------------------------------------------


def test_migrate_prints_plain_lines_off_tty(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    controller.servicer.watch_script = [PHASES]
    assert run(controller, "vm", "migrate", "web-1") == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = captured.out.splitlines()
    assert lines[-3:] == SUMMARY
    # a line per phase and per tenth of the bytes; rate and ETA depend on arrival times
    assert [line.split(", ")[:2] for line in lines[:-3]] == [
        ["web-1 -> mec-1: pre_checks 10%"],
        ["web-1 -> mec-1: snapshot 30%"],
        ["web-1 -> mec-1: transfer 30%", "0.0/100.0 MiB"],
        ["web-1 -> mec-1: transfer 34%", "12.0/100.0 MiB"],
        ["web-1 -> mec-1: transfer 40%", "25.0/100.0 MiB"],
        ["web-1 -> mec-1: transfer 52%", "55.0/100.0 MiB"],
        ["web-1 -> mec-1: transfer 70%", "100.0/100.0 MiB"],
        ["web-1 -> mec-1: switchover 90%", "100.0/100.0 MiB"],
        ["web-1 -> mec-1: cleanup 100%", "100.0/100.0 MiB"],
        ["web-1 -> mec-1: succeeded 100%", "100.0/100.0 MiB"],
    ]
    assert watches(controller) == [api.GetMigrationRequest(vm="web-1")]


def test_migrate_draws_a_bar_on_tty(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    controller.servicer.watch_script = [PHASES]
    assert run(controller, "vm", "migrate", "web-1") == 0
    out = capsys.readouterr().out
    progress, summary = out.rsplit(CLEAR_LINE, 1)
    assert summary.splitlines() == SUMMARY
    frames = progress.split(CLEAR_LINE)[1:]
    assert len(frames) == len(PHASES)
    assert all("\n" not in f and len(f) < 100 for f in frames)
    assert frames[0] == "web-1 -> mec-1  pre_checks  [##----------------------]  10%"
    assert frames[7].startswith("web-1 -> mec-1  transfer    [############------------]  52%")
    assert "55.0/100.0 MiB" in frames[7]
    assert frames[-1].startswith("web-1 -> mec-1  succeeded   [########################] 100%")


def test_migrate_skips_an_earlier_ended_migration(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    """WatchMigration(vm) first answers with the VM's last migration, ended: the CLI opens the
    watch again until the new one is there."""
    old = mig(P.MIGRATION_PHASE_FAILED, 10, mig_id=OLD_ID, target="cloud-9", error="boom")
    controller.servicer.watch_script = [[old], [old], PHASES]
    assert run(controller, "vm", "migrate", "web-1") == 0
    out = capsys.readouterr().out
    assert "cloud-9" not in out and "boom" not in out
    assert out.splitlines()[0] == "web-1 -> mec-1: pre_checks 10%"
    assert len(watches(controller)) == 3


def test_migrate_json_has_no_progress(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run(controller, "vm", "migrate", "web-1", "-o", "json") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["vm"]["node_id"] == "mec-1"
    assert captured.err == ""
    assert watches(controller) == []


def test_migrate_falls_back_when_watch_is_unimplemented(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller.servicer.migrate_delay = 0.3
    assert run(controller, "vm", "migrate", "web-1") == 0  # off a TTY: the summary only
    captured = capsys.readouterr()
    assert captured.out.splitlines() == SUMMARY
    assert captured.err == ""
    assert len(watches(controller)) == 1  # it was tried
    controller.servicer.watch_tried.clear()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run(controller, "vm", "migrate", "web-1") == 0  # on a TTY: today's spinner
    captured = capsys.readouterr()
    assert captured.out.splitlines() == SUMMARY
    assert "migrating web-1 0s" in captured.err


def test_migrate_survives_a_watch_that_breaks(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    controller.servicer.watch_script = [PHASES]
    controller.servicer.break_watch = True
    assert run(controller, "vm", "migrate", "web-1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["web-1 -> mec-1: pre_checks 10%", "web-1 -> mec-1: snapshot 30%", *SUMMARY]


def test_migrate_error_ends_a_watch_that_saw_nothing_at_once(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migration_watch, "GRACE", 60.0)  # waited only for a migration on screen
    controller.servicer.hang_watch = True
    start = time.monotonic()
    assert run(controller, "vm", "migrate", "pinned") == 1
    assert time.monotonic() - start < 30
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: RESOURCE_EXHAUSTED: no other node can take VM 'pinned' (it runs on 'gw-1'): "
        "1/3 nodes fit\n"
    )
    assert watches(controller) == [api.GetMigrationRequest(vm="pinned")]


# -- the progress line on its own (fixed times) ----------------------------------------------


def feed(bar: MigrationProgress, steps: list[tuple[float, api.Migration]]) -> list[str]:
    return [bar.update(m, at) for at, m in steps]


def transfer(sent_mib: int, total_mib: int = 100) -> api.Migration:
    return mig(P.MIGRATION_PHASE_TRANSFER, 70, sent_mib * MiB, (total_mib - sent_mib) * MiB,
               total_mib * MiB)  # fmt: skip


def test_rate_and_eta_from_successive_updates() -> None:
    bar = MigrationProgress(tty=False)
    out = feed(bar, [(0.0, transfer(0)), (1.0, transfer(10)), (2.0, transfer(30))])
    assert out[0] == "web-1 -> mec-1: transfer 30%, 0.0/100.0 MiB\n"
    assert out[1] == "web-1 -> mec-1: transfer 34%, 10.0/100.0 MiB, 10.0 MiB/s, ETA 9s\n"
    # smoothed: 0.5 * 20 + 0.5 * 10 = 15 MiB/s; 70 MiB left -> 4.7 s
    assert bar.rate == 15 * MiB
    assert out[2] == "web-1 -> mec-1: transfer 42%, 30.0/100.0 MiB, 15.0 MiB/s, ETA 5s\n"


def test_plain_lines_only_on_phase_change_or_a_tenth_more() -> None:
    bar = MigrationProgress(tty=False)
    steps = [(float(i), m) for i, m in enumerate(PHASES)]
    printed = [line.split(",")[0] for line in feed(bar, steps) if line]
    assert len(printed) == 10  # 5 MiB and 29 MiB cross no new tenth
    assert all("\r" not in line for line in feed(MigrationProgress(tty=False), steps))
    assert MigrationProgress(tty=False).close() == ""


def test_tty_bar_redraws_in_place_and_fits_the_terminal() -> None:
    bar = MigrationProgress(tty=True, columns=100)
    first, second = feed(bar, [(10.0, transfer(0, 1024)), (12.0, transfer(512, 1024))])
    assert (
        first
        == CLEAR_LINE + "web-1 -> mec-1  transfer    [#######-----------------]  30%  0.0/1.0 GiB"
    )
    assert second == (
        CLEAR_LINE + "web-1 -> mec-1  transfer    [############------------]  50%  0.5/1.0 GiB"
        "  256.0 MiB/s  ETA 2s"
    )
    assert bar.close() == CLEAR_LINE and bar.close() == ""
    narrow = MigrationProgress(tty=True, columns=60)
    line = feed(narrow, [(0.0, transfer(0)), (1.0, transfer(50))])[1].removeprefix(CLEAR_LINE)
    assert line == "transfer     50%  50.0/100.0 MiB  50.0 MiB/s  ETA 1s"  # bar and VM went
    tiny = MigrationProgress(tty=True, columns=30).update(transfer(50), 0.0)
    assert tiny == CLEAR_LINE + "transfer     50%  50.0/100.0 "  # then the end is cut


def test_new_job_or_counter_reset_forgets_the_rate() -> None:
    bar = MigrationProgress(tty=False)
    feed(bar, [(0.0, transfer(0)), (1.0, transfer(40))])
    assert bar.rate == 40 * MiB
    bar.update(transfer(10), 2.0)  # counters went back: a new libvirt job
    assert bar.rate is None
    bar.update(transfer(20), 2.0)  # same instant: no sample
    assert bar.rate is None
    other = transfer(90)
    other.id = "another"
    bar.update(other, 3.0)
    assert bar.rate is None and bar.eta(other) is None


def test_failed_line_carries_the_error() -> None:
    bar = MigrationProgress(tty=False)
    failed = mig(P.MIGRATION_PHASE_FAILED, 70, error="target refused: no image")
    assert bar.update(failed, 0.0) == "web-1 -> mec-1: failed, target refused: no image\n"
    failed.error = "migrating VM 'web-1' from 'gw-1' to 'mec-1': " + "x" * 80
    line = MigrationProgress(tty=True, columns=60).update(failed, 0.0)  # no bar, no percent
    assert line == CLEAR_LINE + "web-1 -> mec-1  failed      migrating VM 'web-1' from 'gw-1"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.4, "0s"), (15, "15s"), (125, "2m05s"), (3720, "1h02m")],
)
def test_eta_text(value: float, text: str) -> None:
    assert eta_text(value) == text


def test_helpers() -> None:
    assert pair_text(512, 1000) == "512/1000 B"
    assert pair_text(3 * MiB, 2 * 2**30) == "0.0/2.0 GiB"
    assert percent(mig(P.MIGRATION_PHASE_SWITCHOVER)) == 90  # no share in the record: the spec's
    assert [duration(s) for s in (0.123, 4.56, 42, 150)] == ["0.12s", "4.6s", "42s", "2m30s"]
