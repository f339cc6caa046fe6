"""Placement through the real controller: location-aware deploys, explanations, nearest
nodes, cordon, and the CLI's `placement explain` / `node nearest`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from agent.config import LocationConfig
from cli.main import main as cli
from shared.domain import EdgeType
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, make_fake_kernel_images

SITES = {
    "mec-berlin": (LocationConfig(52.52, 13.40, "DE"), EdgeType.MEC, 0.8),
    "mec-paris": (LocationConfig(48.86, 2.35, "FR"), EdgeType.MEC, 0.8),
    "cloud-nyc": (LocationConfig(40.71, -74.01, "US"), EdgeType.CLOUD, 0.2),
}


@pytest.fixture
async def fleet(cluster: Cluster, tmp_path: Path) -> Cluster:
    images = make_fake_kernel_images(tmp_path / "images")
    for node_id, (location, edge_type, cost) in SITES.items():
        await cluster.start_agent(
            node_id,
            cluster.test_uri(node_id),
            images,
            location=location,
            edge_type=edge_type,
            cost_per_hour=cost,
        )
    return cluster


def near(lat: float, lon: float, **kw: object) -> pb.PlacementConstraints:
    return pb.PlacementConstraints(near=pb.Location(latitude=lat, longitude=lon), **kw)  # type: ignore[arg-type]


def spec(name: str, placement: pb.PlacementConstraints) -> pb.VMSpec:
    return pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=128, placement=placement)


async def test_vms_land_near_their_users_and_say_why(fleet: Cluster) -> None:
    paris_users = await fleet.api.DeployVM(
        epb.DeployVMRequest(spec=spec("ar-paris", near(48.85, 2.30, max_latency_ms=20)))
    )
    assert paris_users.node_id == "mec-paris"
    assert paris_users.placement_reason.startswith("mec-paris score ")
    assert "latency" in paris_users.placement_reason and "est." in paris_users.placement_reason
    ny_users = await fleet.api.DeployVM(
        epb.DeployVMRequest(spec=spec("shop-nyc", near(40.7, -73.9)))
    )
    assert ny_users.node_id == "cloud-nyc"
    berlin_only = await fleet.api.DeployVM(
        epb.DeployVMRequest(spec=spec("gdpr-db", near(40.7, -73.9, countries=["DE"])))
    )
    assert berlin_only.node_id == "mec-berlin"
    stored = await fleet.api.GetVM(epb.GetVMRequest(name_or_id="gdpr-db"))
    assert list(stored.spec.placement.countries) == ["DE"]


async def test_place_vm_explains_without_deploying(fleet: Cluster) -> None:
    decision = await fleet.api.RecommendPlacement(
        epb.RecommendPlacementRequest(
            spec=spec("", near(48.85, 2.30, max_latency_ms=30, edge_types=[pb.EDGE_TYPE_MEC])),
            k=5,
        )
    )
    assert decision.node_id == "mec-paris"
    assert [c.node_id for c in decision.candidates] == ["mec-paris", "mec-berlin"]
    terms = {t.name: t for t in decision.candidates[0].terms}
    assert set(terms) == {"latency", "resources", "cost", "proximity"}
    assert terms["latency"].weight == 0.5 and 0 < terms["latency"].raw <= 1
    assert decision.candidates[0].latency_estimated
    assert [(r.node_id, r.filter) for r in decision.rejections] == [("cloud-nyc", "edge_type")]
    assert (
        decision.summary == "placed on mec-paris: 2/3 nodes fit; rejected: 1 edge type not in [mec]"
    )
    assert not (await fleet.api.ListVMs(epb.ListVMsRequest())).vms


async def test_nothing_fits_names_every_reason(fleet: Cluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fleet.api.DeployVM(
            epb.DeployVMRequest(
                spec=spec("x", near(48.85, 2.30, max_latency_ms=5, countries=["DE", "US"]))
            )
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "0/3 nodes fit: 2 latency > 5 ms, 1 country not in [DE, US]"


async def test_bad_constraints_are_invalid_argument(fleet: Cluster) -> None:
    for bad in (near(95, 0), near(0, 0, latency_percentile=42), near(0, 0, countries=["Germany"])):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fleet.api.PlaceVM(epb.PlaceVMRequest(spec=spec("", bad)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_nearest_and_cordon(fleet: Cluster) -> None:
    nearest = await fleet.api.FindNearestNodes(
        epb.FindNearestNodesRequest(location=pb.Location(latitude=50.1, longitude=8.7), n=2)
    )
    assert [n.node_id for n in nearest.nodes] == ["mec-berlin", "mec-paris"]  # from Frankfurt
    assert nearest.nodes[0].estimated_rtt_ms > nearest.nodes[0].distance_km / 100
    await fleet.api.CordonNode(epb.CordonNodeRequest(node_id="mec-paris", cordoned=True))
    vm = await fleet.api.DeployVM(epb.DeployVMRequest(spec=spec("after-cordon", near(48.85, 2.30))))
    assert vm.node_id != "mec-paris"
    decision = await fleet.api.PlaceVM(epb.PlaceVMRequest(spec=spec("", near(48.85, 2.30))))
    assert ("mec-paris", "ready", "cordoned") in {
        (r.node_id, r.filter, r.reason) for r in decision.rejections
    }
    node = await fleet.api.CordonNode(epb.CordonNodeRequest(node_id="mec-paris", cordoned=False))
    assert not node.cordoned


async def test_cli_explain_and_nearest(fleet: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--controller", fleet.address, "placement", "explain", "--image", "tiny"]
    args += ["--vcpus", "1", "--memory-mib", "128", "--near", "48.85,2.30", "--country", "DE,FR"]
    assert await asyncio.to_thread(cli, args) == 0
    out = capsys.readouterr().out
    assert out.startswith("placed on mec-paris: 2/3 nodes fit; rejected: 1 country not in [DE, FR]")
    assert "cloud-nyc" in out and "country US not in [DE, FR]" in out
    assert await asyncio.to_thread(cli, [*args, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["node_id"] == "mec-paris"
    assert (
        await asyncio.to_thread(
            cli, ["--controller", fleet.address, "node", "nearest", "40.7,-74", "-n", "1"]
        )
        == 0
    )
    assert "cloud-nyc" in capsys.readouterr().out
