"""The batch placer: better plans than one VM at a time, and never a plan that breaks a filter
or oversubscribes a node."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.placement_fleet import EUROPE, make_fleet, make_requests
from controller.placement import BatchPlacer, NodeRow, NodeTable, PlacementProfile, ScoredEngine
from controller.placement.request import PlacementRequest
from shared.domain import Capacity, EdgeType, Location, PlacementConstraints, VMSpec
from shared.errors import ResourceExhausted
from shared.geo import haversine_km

NO_BUFFER = PlacementProfile(edge_resource_buffer=0.0)
PARIS = Location(48.86, 2.35, "FR")
FRANKFURT = Location(50.11, 8.68, "DE")


def node(node_id: str, memory_mib: int, location: Location = PARIS) -> NodeRow:
    return NodeRow(
        node_id=node_id,
        ready=True,
        capacity=Capacity(16, memory_mib, 100),
        location=location,
        edge_type=EdgeType.MEC,
        images=frozenset({"tiny"}),
    )


def vm(engine: ScoredEngine, memory_mib: int, near: Location | None = None) -> PlacementRequest:
    constraints = PlacementConstraints(near=near)
    return engine.request(VMSpec("vm", "tiny", 1, memory_mib, placement=constraints))


def one_at_a_time(engine: ScoredEngine, table: NodeTable, requests: list[PlacementRequest]) -> int:
    placed = 0
    for request in requests:
        try:
            engine.place(table, request)
            placed += 1
        except ResourceExhausted:
            pass
    return placed


def test_repair_moves_a_placed_vm_to_make_room() -> None:
    rows = [node("a", 1024), node("b", 1024)]
    engine = ScoredEngine(NO_BUFFER)
    requests = [vm(engine, 512), vm(engine, 512), vm(engine, 1024)]
    assert one_at_a_time(ScoredEngine(NO_BUFFER), NodeTable(rows), requests) == 2
    table = NodeTable(rows)
    plan = BatchPlacer(engine).place(table, requests)
    assert plan.placed == 3
    assert plan.node_ids[0] == plan.node_ids[1] != plan.node_ids[2]
    assert plan.repaired == 1
    assert (table.free(0.0) >= 0).all()


def test_swaps_lower_the_total_latency() -> None:
    """One slot in Paris, one in Frankfurt. Strasbourg's VM comes first and takes Frankfurt
    (its nearest); Mainz's, 30 km from Frankfurt, is left with Paris. The batch swaps them."""
    rows = [node("paris", 512, PARIS), node("frankfurt", 512, FRANKFURT)]
    profile = PlacementProfile(weights={"latency": 1.0}, edge_resource_buffer=0.0)
    engine = ScoredEngine(profile)
    strasbourg, mainz = Location(48.57, 7.75, "FR"), Location(50.0, 8.27, "DE")
    requests = [vm(engine, 512, strasbourg), vm(engine, 512, mainz)]
    greedy_table = NodeTable(rows)
    greedy = [engine.place(greedy_table, r) for r in requests]
    assert greedy == ["frankfurt", "paris"]
    plan = BatchPlacer(ScoredEngine(profile)).place(NodeTable(rows), requests)
    assert plan.node_ids == ["paris", "frankfurt"]
    assert plan.improved == 1
    assert _total_km(plan.node_ids, requests, rows) < _total_km(list(greedy), requests, rows)


def _total_km(
    node_ids: list[str | None], requests: list[PlacementRequest], rows: list[NodeRow]
) -> float:
    where = {r.node_id: r.location for r in rows}
    total = 0.0
    for node_id, request in zip(node_ids, requests, strict=True):
        user, at = request.constraints.near, where[node_id or ""]
        assert user is not None and at is not None
        total += haversine_km(user.latitude, user.longitude, at.latitude, at.longitude)
    return total


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nodes=st.integers(2, 12),
    vms=st.integers(1, 30),
    budget=st.sampled_from([5, 60, 5_000]),
)
def test_every_plan_is_valid(seed: int, nodes: int, vms: int, budget: int) -> None:
    """Whatever the budget: each placed VM passes every filter on its node with the other VMs
    booked, no node is oversubscribed, and the plan's bookings are exactly the table's."""
    rows = make_fleet(nodes, seed=seed, metros=EUROPE)
    requests = make_requests(vms, seed=seed + 1, metros=EUROPE)
    table, engine = NodeTable(rows), ScoredEngine()
    before = table.free(engine.profile.edge_resource_buffer).copy()
    plan = BatchPlacer(engine, max_evaluations=budget).place(table, requests)
    # the first pass always runs (2 per VM); a swap's final check may finish its pair
    assert plan.evaluations <= max(budget, 2 * vms) + 1
    free = table.free(engine.profile.edge_resource_buffer)
    booked = np.zeros_like(before)
    for node_id, request in zip(plan.node_ids, requests, strict=True):
        if node_id is None:
            continue
        row, need = table.index[node_id], request.need
        booked[:, row] += (need.vcpus, need.memory_mib, need.storage_gib)
        table.release(row, need, request.constraints.spread_group)
        ev = engine.evaluate(table, request)
        band = ev.ctx.band
        assert band.start <= row < band.stop and ev.alive[row - band.start], node_id
        table.reserve(row, need, request.constraints.spread_group)
    assert np.allclose(before - booked, free)
    assert ((free >= -1e-9) | (before < 0)).all()  # nodes already over their buffer stay put
