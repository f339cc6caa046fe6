"""`down` leaves nothing behind: after a crash that lost the state file, and when run twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import netns, pids
from lab.lab import Lab
from lab.state import STATE_FILE, LabState
from lab.teardown import teardown
from tests.conftest import require_backend
from tests.system.conftest import lab_backend_problem, lab_state_dir

pytestmark = pytest.mark.lab


def assert_nothing_left(state_dir: Path, recorded: list[tuple[int, int | None]]) -> None:
    assert netns.list_netns() == []
    assert netns.list_links() == []
    assert netns.lab_routes() == []
    assert not any(pids.same_process(pid, start) for pid, start in recorded)
    assert not (state_dir / STATE_FILE).exists()
    assert not (state_dir / "sites").exists()


def recorded_processes(state_dir: Path) -> list[tuple[int, int | None]]:
    state = LabState.load(state_dir)
    assert state is not None
    return [(p.pid, p.start_time) for p in state.processes]


def test_down_removes_everything_even_after_a_crash(tiny_image_dir: Path) -> None:
    problem = lab_backend_problem()
    require_backend(not problem, problem)
    state_dir = lab_state_dir()
    lab = Lab("small", state_dir, images_dir=tiny_image_dir)
    try:
        lab.up(timeout_s=90)
        procs = recorded_processes(state_dir)
        assert len(procs) == 2 + len(lab.topology.sites)  # router, controller, agents
        assert netns.lab_routes() == [lab.topology.subnet]
        # a crash: the router dies hard and the state file is lost
        router_pid = LabState.load(state_dir).processes[0].pid  # type: ignore[union-attr]
        pids.terminate([(router_pid, pids.start_time(router_pid))], timeout=0)
        (state_dir / STATE_FILE).unlink()
        removed = teardown(state_dir, lab.topology.subnet)
        assert any(r.startswith("netns nclab-mec-berlin") for r in removed)
        assert_nothing_left(state_dir, procs)
        assert teardown(state_dir) == []  # idempotent
    finally:
        lab.down()
    assert_nothing_left(state_dir, [])
