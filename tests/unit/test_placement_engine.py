"""The placement engine: each filter's rule and reason, scores, weights, reservation,
explanations, and properties that must hold for any fleet."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.placement_fleet import EUROPE, make_fleet, make_requests
from controller.placement import (
    NodeRow,
    NodeTable,
    PlacementProfile,
    PlacementRequest,
    ScoredEngine,
)
from shared.domain import (
    Capacity,
    EdgeType,
    Location,
    PlacementConstraints,
    PlacementMode,
    SpreadScope,
    VMSpec,
)
from shared.errors import ConfigError, ResourceExhausted

BERLIN = Location(52.52, 13.40, "DE")
PARIS = Location(48.86, 2.35, "FR")
MUNICH = Location(48.14, 11.58, "DE")
NEW_YORK = Location(40.71, -74.01, "US")
NO_BUFFER = PlacementProfile(edge_resource_buffer=0.0)


def node(node_id: str, location: Location = BERLIN, **kw: object) -> NodeRow:
    defaults: dict[str, object] = {
        "ready": True,
        "capacity": Capacity(8, 8192, 100),
        "location": location,
        "edge_type": EdgeType.MEC,
        "images": frozenset({"tiny"}),
        "cost_per_hour": 0.5,
    }
    defaults.update(kw)
    return NodeRow(node_id=node_id, **defaults)  # type: ignore[arg-type]


def spec(**placement: object) -> VMSpec:
    return VMSpec("vm", "tiny", 2, 2048, placement=PlacementConstraints(**placement))  # type: ignore[arg-type]


def decide(
    rows: list[NodeRow], vm: VMSpec, profile: PlacementProfile = NO_BUFFER
) -> tuple[str | None, dict[str, str], str]:
    engine = ScoredEngine(profile)
    explanation = engine.decide(NodeTable(rows), engine.request(vm), k=len(rows))
    reasons = {r.node_id: f"{r.filter}: {r.reason}" for r in explanation.rejections}
    return explanation.node_id, reasons, explanation.summary


@pytest.mark.parametrize(
    ("row", "vm", "reason"),
    [
        (node("x", ready=False), spec(), "ready: not ready"),
        (node("x", ready=False, not_ready_reason="cordoned"), spec(), "ready: cordoned"),
        (node("x", images=frozenset()), spec(), "image: image 'tiny' not present"),
        (node("x", arch="aarch64"), spec(arch="x86_64"), "arch: arch aarch64 is not x86_64"),
        (
            node("x", edge_type=EdgeType.IOT),
            spec(edge_types=(EdgeType.MEC,)),
            "edge_type: edge type iot not in [mec]",
        ),
        (
            node("x", edge_type=EdgeType.IOT),
            spec(exclude_edge_types=(EdgeType.IOT,)),
            "edge_type: edge type iot is excluded",
        ),
        (
            node("x", location=NEW_YORK),
            spec(countries=("DE", "FR")),
            "country: country US not in [DE, FR]",
        ),
        (
            node("x", labels={"zone": "b"}),
            spec(required_labels=(("zone", "a"),)),
            "labels: missing label zone=a",
        ),
        (
            node("x", cost_per_hour=1.2),
            spec(max_cost_per_hour=1.0),
            "cost: cost 1.20/h > cap 1.00/h",
        ),
        (
            node("x", location=NEW_YORK),
            spec(near=BERLIN, max_latency_ms=20),
            "latency: latency 64.8 ms (est.) > 20 ms",
        ),
        (
            node("x", location=Location(-33.87, 151.21, "AU")),
            spec(near=BERLIN, max_latency_ms=20),
            "latency: latency > 20 ms (too far for light in fiber)",
        ),
        (
            node("x", capacity=Capacity(1, 8192, 100)),
            spec(),
            "resources: insufficient vcpus (need 2, free 1)",
        ),
        (
            node("x", capacity=Capacity(8, 1024, 100)),
            spec(),
            "resources: insufficient memory (need 2048 MiB, free 1024)",
        ),
        (node("x", vm_count=10), spec(), "resources: already runs 10 VMs (max 10)"),
        (
            node("x", groups={"web": 1}),
            spec(spread_group="web"),
            "spread: already runs a VM of group 'web'",
        ),
    ],
)
def test_each_filter_rejects_with_its_reason(row: NodeRow, vm: VMSpec, reason: str) -> None:
    chosen, reasons, _ = decide([row, node("ok", location=MUNICH, labels={"zone": "a"})], vm)
    assert chosen == "ok"
    assert reasons == {"x": reason}


def test_latency_measured_beats_estimate_when_no_user_location() -> None:
    rows = [node("slow", rtt_ms=(30.0, 40.0, 60.0)), node("fast", rtt_ms=(2.0, 3.0, 4.0))]
    chosen, reasons, _ = decide(rows, spec(max_latency_ms=50, latency_percentile=99))
    assert chosen == "fast"
    assert reasons == {"slow": "latency: latency 60.0 ms (measured) > 50 ms"}


def test_measured_rtt_to_the_controller_only_filters_when_the_request_bounds_it() -> None:
    rows = [node("far", rtt_ms=(150.0, 180.0, 200.0))]
    assert decide(rows, spec())[0] == "far"  # scored, not refused
    assert decide(rows, spec(max_latency_ms=100))[0] is None


def test_buffer_and_vm_cap_from_profile() -> None:
    profile = PlacementProfile(edge_resource_buffer=0.5, max_edge_vms_per_node=1)
    rows = [
        node("half", capacity=Capacity(8, 4000, 100)),
        node("ok", capacity=Capacity(8, 8192, 100)),
    ]
    assert decide(rows, spec(), profile)[0] == "ok"
    assert decide([node("one", vm_count=1), node("ok")], spec(), profile)[0] == "ok"


def test_spread_per_site() -> None:
    rows = [
        node("a1", labels={"site": "berlin"}, groups={"web": 1}),
        node("a2", labels={"site": "berlin"}),
        node("b1", location=PARIS, labels={"site": "paris"}),
    ]
    chosen, reasons, _ = decide(rows, spec(spread_group="web", spread_scope=SpreadScope.SITE))
    assert chosen == "b1"
    assert reasons["a2"] == "spread: site berlin already runs a VM of group 'web'"


def test_nearest_wins_on_latency_and_explanation_names_every_term() -> None:
    rows = [node("berlin"), node("paris", location=PARIS), node("ny", location=NEW_YORK)]
    engine = ScoredEngine(NO_BUFFER)
    decision = engine.decide(NodeTable(rows), engine.request(spec(near=Location(48.85, 2.30))), k=3)
    assert [c.node_id for c in decision.candidates] == ["paris", "berlin", "ny"]
    best = decision.candidates[0]
    assert [t.name for t in best.terms] == ["latency", "resources", "cost", "proximity"]
    latency = best.terms[0]
    assert latency.weight == 0.5 and latency.note.startswith("est. ")
    assert best.latency_estimated and best.distance_km is not None and best.distance_km < 10
    assert math.isclose(best.total, sum(t.weighted for t in best.terms), rel_tol=1e-5)
    assert decision.summary == "placed on paris: 3/3 nodes fit"


def test_nothing_fits_summary_groups_reasons_biggest_first() -> None:
    rows = [node(f"m{i}", capacity=Capacity(8, 2048, 100)) for i in range(5)]
    rows += [node(f"far{i}", location=NEW_YORK) for i in range(4)]
    rows += [node(f"us{i}", location=Location(45.0, 5.0, "CH")) for i in range(3)]
    with pytest.raises(ResourceExhausted) as info:
        engine = ScoredEngine(NO_BUFFER)
        vm = VMSpec(
            "vm",
            "tiny",
            2,
            4096,
            placement=PlacementConstraints(
                near=BERLIN, max_latency_ms=50, countries=("DE", "FR", "US")
            ),
        )
        engine.place(NodeTable(rows), engine.request(vm))
    assert str(info.value) == (
        "0/12 nodes fit: 5 insufficient memory (need 4096 MiB, max free 2048), "
        "4 latency > 50 ms, 3 country not in [DE, FR, US]"
    )


def test_binpack_prefers_the_fuller_node_spread_the_emptier() -> None:
    rows = [node("empty"), node("busy", allocated=Capacity(4, 4096, 0))]
    assert decide(rows, spec())[0] == "empty"
    binpack = PlacementProfile(edge_resource_buffer=0.0, mode=PlacementMode.BINPACK)
    assert decide(rows, spec(), binpack)[0] == "busy"
    assert decide(rows, spec(mode=PlacementMode.BINPACK))[0] == "busy"


def test_ties_go_to_the_lowest_node_id() -> None:
    rows = [node("b"), node("c"), node("a")]
    assert decide(rows, spec())[0] == "a"


def test_reservation_never_oversubscribes() -> None:
    table = NodeTable(
        [node("a", capacity=Capacity(4, 4096, 100)), node("b", capacity=Capacity(4, 4096, 100))]
    )
    engine = ScoredEngine(NO_BUFFER)
    request = engine.request(spec())
    placed = [engine.place(table, request) for _ in range(4)]
    assert sorted(placed) == ["a", "a", "b", "b"]
    with pytest.raises(ResourceExhausted, match="0/2 nodes fit: 2 insufficient"):
        engine.place(table, request)
    table.release(table.index["a"], request.need)
    assert engine.place(table, request) == "a"


def test_incremental_placement_matches_a_fresh_evaluation() -> None:
    rows = [
        node(f"n{i}", capacity=Capacity(2 + i, 4096 + 512 * i, 100), cost_per_hour=0.1 * i)
        for i in range(8)
    ]
    hot, cold = NodeTable(rows), NodeTable(rows)
    engine = ScoredEngine(NO_BUFFER)
    request = engine.request(VMSpec("vm", "tiny", 1, 512))
    for _ in range(30):
        expected = ScoredEngine(NO_BUFFER).evaluate(cold, request).node_id
        got = engine.place(hot, request)
        assert got == expected
        cold.reserve(cold.index[got], request.need)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"weights": {"latency": -0.1}}, "placement_weights.latency: weight must be a number >= 0"),
        (
            {"weights": {"latency": float("nan")}},
            "placement_weights.latency: weight must be a number >= 0",
        ),
        ({"weights": {"speed": 1.0}}, "placement_weights.speed: unknown scorer"),
        ({"weights": {"latency": 0.0}}, "at least one weight must be > 0"),
        ({"filters": ("ready", "magic")}, "unknown filter 'magic'"),
        ({"edge_resource_buffer": 1.0}, "edge_resource_buffer: must be in"),
        ({"max_edge_vms_per_node": 0}, "max_edge_vms_per_node: must be >= 1"),
    ],
)
def test_bad_profiles_are_refused(profile: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        PlacementProfile(**profile)  # type: ignore[arg-type]


fleets = st.lists(
    st.builds(
        lambda i, ready, cpu, mem, alloc, lat, lon, cost, et, country: node(
            f"n{i:03d}",
            location=Location(lat, lon, country),
            ready=ready,
            capacity=Capacity(cpu, mem, 100),
            allocated=Capacity(min(alloc, cpu), 0, 0),
            cost_per_hour=cost,
            edge_type=et,
        ),
        st.integers(0, 999),
        st.booleans(),
        st.integers(1, 16),
        st.sampled_from([1024, 2048, 4096, 8192]),
        st.integers(0, 8),
        st.floats(-60, 70),
        st.floats(-179, 179),
        st.floats(0, 3),
        st.sampled_from(list(EdgeType)),
        st.sampled_from(["DE", "FR", "US"]),
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda r: r.node_id,
)


@settings(max_examples=150, deadline=None)
@given(
    rows=fleets,
    lat=st.floats(-60, 70),
    lon=st.floats(-179, 179),
    max_latency=st.sampled_from([0.0, 20.0, 60.0]),
    countries=st.sampled_from([(), ("DE",), ("DE", "FR")]),
)
def test_winner_passes_every_filter_and_has_the_top_score(
    rows: list[NodeRow], lat: float, lon: float, max_latency: float, countries: tuple[str, ...]
) -> None:
    engine = ScoredEngine()
    table = NodeTable(rows)
    vm = spec(near=Location(lat, lon), max_latency_ms=max_latency, countries=countries)
    request = engine.request(vm)
    decision = engine.decide(table, request, k=len(rows))
    rejected = {r.node_id for r in decision.rejections}
    assert len(rejected) + decision.nodes_feasible == len(rows)
    if decision.node_id is None:
        assert decision.nodes_feasible == 0
        return
    assert decision.node_id not in rejected
    totals = [c.total for c in decision.candidates]
    assert decision.candidates[0].node_id == decision.node_id
    assert totals[0] == max(totals)
    assert {c.node_id for c in decision.candidates} == {r.node_id for r in rows} - rejected
    by_id = {r.node_id: r for r in rows}
    winner = by_id[decision.node_id]
    assert winner.ready
    assert not countries or winner.location.country_code in countries  # type: ignore[union-attr]


def test_kept_results_follow_every_change_of_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that keeps results across decisions decides exactly like a fresh engine on
    a fresh copy of the table, while bookings, releases and readiness changes interleave and
    the change log overflows (consumers that fell behind recompute in full)."""
    monkeypatch.setattr("controller.placement.table.CHANGE_LOG", 8)
    rows = make_fleet(60, seed=11, metros=EUROPE)
    requests = make_requests(40, seed=12, metros=EUROPE)
    table, engine = NodeTable(rows), ScoredEngine()
    booked: list[tuple[int, PlacementRequest]] = []
    rng = random.Random(13)
    for step in range(400):
        request = requests[rng.randrange(len(requests))]
        mirror = NodeTable(rows)  # the same bookings, applied to a table nothing was kept for
        for row, done in booked:
            mirror.reserve(mirror.index[table.ids[row]], done.need, done.constraints.spread_group)
        for ready in (True, False):
            mirror.set_ready([i for i in table.ids if table.ready[table.index[i]] == ready], ready)
        expected = ScoredEngine().evaluate(mirror, request).node_id
        try:
            got: str | None = engine.place(table, request)
        except ResourceExhausted:
            got = None
        assert got == expected, f"step {step}"
        if got is not None:
            booked.append((table.index[got], request))
        if booked and rng.random() < 0.3:  # a VM deleted: its capacity comes back
            row, done = booked.pop(rng.randrange(len(booked)))
            table.release(row, done.need, done.constraints.spread_group)
        if rng.random() < 0.1:  # a node goes away or comes back
            node_id = rng.choice(table.ids)
            table.set_ready([node_id], not table.ready[table.index[node_id]])
