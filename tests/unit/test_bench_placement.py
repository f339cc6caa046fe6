"""The placement benchmarks' own footing: the baseline they divide by must implement the same
algorithm as the engine (else the ratios compare different work), and the synthetic fleets and
request streams must be reproducible (else runs are not comparable)."""

from __future__ import annotations

import pytest

from bench.placement_baseline import Baseline
from bench.placement_fleet import EUROPE, make_fleet, make_requests
from controller.placement import NodeTable, PlacementProfile, PlacementRequest, ScoredEngine
from shared.domain import PlacementMode
from shared.errors import ResourceExhausted

# The engine estimates distance with a float32 arccos approximation (<= 0.43 km), the baseline
# with float64 haversine: scores may differ by ~1e-5 and flip an exact near-tie, never more.
SCORE_SLACK = 1e-4


def engine_feasible(table: NodeTable, engine: ScoredEngine, request: PlacementRequest) -> set[str]:
    ev = engine.evaluate(table, request)
    return {table.ids[ev.ctx.absolute(int(i))] for i in ev.candidates}


def assert_same_choice(chosen: str | None, expected: str | None, scores: dict[str, float]) -> None:
    if chosen == expected:
        return
    assert chosen is not None and expected is not None, (chosen, expected)
    assert scores[expected] - scores[chosen] <= SCORE_SLACK, (chosen, expected)


@pytest.mark.parametrize(
    ("seed", "size", "weights", "mode"),
    [
        (1, 40, None, PlacementMode.SPREAD),
        (2, 120, None, PlacementMode.SPREAD),
        (3, 60, {"resources": 1.0}, PlacementMode.BINPACK),
        (4, 60, {"latency": 1.0}, PlacementMode.SPREAD),
        (5, 80, {"latency": 0.4, "cost": 0.3, "proximity": 0.3}, PlacementMode.SPREAD),
    ],
)
def test_baseline_agrees_with_engine(
    seed: int, size: int, weights: dict[str, float] | None, mode: PlacementMode
) -> None:
    rows = make_fleet(size, seed=seed)
    profile = (
        PlacementProfile(mode=mode) if weights is None else PlacementProfile(weights, mode=mode)
    )
    table, engine, baseline = NodeTable(rows), ScoredEngine(profile), Baseline(rows, weights)
    for request in make_requests(80, seed=seed + 10, mode=mode):
        decision = baseline.evaluate(request)
        assert engine_feasible(table, engine, request) == decision.feasible
        assert_same_choice(
            engine.evaluate(table, request).node_id, decision.node_id, decision.scores
        )


def test_baseline_agrees_with_engine_while_reserving() -> None:
    """A stream of placements with bookings, spread groups included, on a crowded fleet."""
    rows = make_fleet(30, seed=7, metros=EUROPE)
    table, engine, baseline = NodeTable(rows), ScoredEngine(), Baseline(rows)
    placed = 0
    for request in make_requests(150, seed=8, metros=EUROPE):
        decision = baseline.evaluate(request)
        assert engine_feasible(table, engine, request) == decision.feasible
        try:
            chosen: str | None = engine.place(table, request)
        except ResourceExhausted:
            chosen = None
        assert_same_choice(chosen, decision.node_id, decision.scores)
        if chosen is not None:  # book the engine's choice in the baseline too
            placed += 1
            node, need = baseline.by_id[chosen], request.need
            node.alloc = [node.alloc[0] + need.vcpus, node.alloc[1] + need.memory_mib,
                          node.alloc[2] + need.storage_gib]  # fmt: skip
            node.vm_count += 1
            group = request.constraints.spread_group
            if group:
                node.groups[group] = node.groups.get(group, 0) + 1
    assert placed > 30  # the fleet filled up: later decisions ran against real bookings


def test_fleet_and_requests_are_deterministic() -> None:
    assert make_fleet(200, seed=3) == make_fleet(200, seed=3)
    assert make_fleet(200, seed=3) != make_fleet(200, seed=4)
    assert make_requests(100, seed=5) == make_requests(100, seed=5)
    assert make_requests(100, seed=5) != make_requests(100, seed=6)


def test_fleet_has_the_advertised_spreads() -> None:
    rows = make_fleet(2000, seed=1)
    assert len({r.node_id for r in rows}) == 2000
    not_ready = sum(not r.ready for r in rows) / len(rows)
    assert 0.005 < not_ready < 0.04
    assert {r.edge_type for r in rows} >= {"mec", "cdn", "iot", "onprem", "telco", "cloud"}
    assert any(r.arch == "aarch64" for r in rows) and any(r.arch == "x86_64" for r in rows)
    assert len({r.location.country_code for r in rows if r.location}) >= 15
    assert 0.2 < sum(r.rtt_ms is not None for r in rows) / len(rows) < 0.4
    for r in rows:
        assert r.allocated.vcpus <= 0.7 * r.capacity.vcpus
    requests = make_requests(500, seed=2)
    nears = [r.constraints.near for r in requests if r.constraints.near]
    assert len(set(nears)) == len(nears)  # every user location distinct: cache misses
    assert any(r.constraints.countries for r in requests)
    assert any(10 <= r.max_latency_ms <= 50 for r in requests)
