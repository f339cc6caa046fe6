"""Deterministic simulation of the controller core (tests/unit/core_sim.py): seeded random
interleavings of API calls, agent reports, lost and duplicated messages, disconnects,
controller restarts (the core rebuilt from the persisted records), failed writes and clock
jumps, with the invariants checked after every step. A failing seed prints its story;
`NOVACRON_SIM_SEEDS=5000` runs more."""

from __future__ import annotations

import os

import pytest

from tests.unit.core_sim import SimWorld

SEEDS = int(os.environ.get("NOVACRON_SIM_SEEDS", "400"))
STEPS = 250


@pytest.mark.parametrize("block", range(8))
def test_invariants_hold_under_random_interleavings(block: int) -> None:
    for seed in range(block, SEEDS, 8):
        world = SimWorld(seed)
        try:
            for _ in range(STEPS):
                world.step()
                world.check()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{world.story()}") from None


def test_the_simulation_reaches_the_interesting_states() -> None:
    """The generator is not idle: across seeds, VMs are deployed, migrations succeed and fail,
    writes fail, copies are fenced. (A simulation that never gets there proves nothing.)"""
    seen: dict[str, int] = {}
    for seed in range(40):
        world = SimWorld(seed)
        for _ in range(STEPS):
            world.step()
        for asked, reply in world.replies:
            kind = asked.split()[0] + (" ok" if reply.error is None else " error")
            seen[kind] = seen.get(kind, 0) + 1
        for mig in world.core.state.migrations.values():
            seen[f"migration {mig.phase.value}"] = seen.get(f"migration {mig.phase.value}", 0) + 1
        seen["persist failed"] = seen.get("persist failed", 0) + sum(
            "persist failed" in step for step in world.steps
        )
    for kind in (
        "deploy ok",
        "delete ok",
        "migrate ok",
        "migrate error",
        "power ok",
        "migration succeeded",
        "migration failed",
        "persist failed",
    ):
        assert seen.get(kind, 0) > 0, (kind, seen)
