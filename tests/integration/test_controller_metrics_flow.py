"""The controller's /metrics over a real run (gRPC on loopback, libvirt's test driver): a
migration that fails is observed once in the duration histogram, with its outcome; agent
streams, heartbeat lag and placement decisions are what happened."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agent.config import LocationConfig
from shared.pb.v1 import edge_api_pb2 as epb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images
from tests.integration.test_deploy_flow import expect_error
from tests.integration.test_migration_api import _deploy
from tests.metrics_check import promtool_check, scrape, value

BERLIN = LocationConfig(latitude=52.52, longitude=13.40, country="DE")
FAILED = {"mode": "live", "outcome": "failed"}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


async def test_a_failed_migration_and_the_fleet_in_the_controller_metrics(
    cluster: Cluster, images: Path
) -> None:
    await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images, location=BERLIN)
    await cluster.start_agent(
        "edge-b", cluster.test_uri("edge-b"), images, location=BERLIN, migration_host="127.0.0.1"
    )
    assert cluster.server is not None and cluster.server.metrics is not None
    port = cluster.server.metrics.port
    vm = await _deploy(cluster, "web-1")  # on edge-a
    assert vm.node_id == "edge-a"
    before = await asyncio.to_thread(scrape, port)
    assert value(before, "novacron_migration_duration_seconds_count", **FAILED) is None

    msg = await expect_error(
        cluster.api.MigrateVM(epb.MigrateVMRequest(name_or_id="web-1", target_node_id="edge-b")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "p2p migration is not supported by the source host" in msg  # it got that far

    text = ""

    async def observed() -> bool:
        nonlocal text
        text = await asyncio.to_thread(scrape, port)
        return value(text, "novacron_migration_duration_seconds_count", **FAILED) == 1.0

    await eventually(observed, 10, "the failed migration in the histogram")
    promtool_check(text)
    assert value(text, "novacron_migration_downtime_seconds_count", mode="live") is None
    assert value(text, "novacron_migrations_active", phase="transfer") == 0.0
    assert value(text, "novacron_agent_streams") == 2.0
    assert value(text, "novacron_agent_streams_opened_total") == 2.0
    for node in ("edge-a", "edge-b"):
        assert (value(text, "novacron_node_heartbeat_age_seconds", node=node) or -1) >= 0
        assert value(text, "novacron_node_condition", node=node, condition="ready") == 1.0
    assert value(text, "novacron_node_allocated_vcpus", node="edge-a") == 1.0
    assert value(text, "novacron_node_allocated_vcpus", node="edge-b") == 0.0  # given back
    # the deploy; an explicit migration target is checked, not decided
    assert (value(text, "novacron_placement_decision_seconds_count") or 0) >= 1

    await cluster.stop_agent("edge-b")

    async def stream_closed() -> bool:
        later = await asyncio.to_thread(scrape, port)
        return value(later, "novacron_agent_streams") == 1.0

    await eventually(stream_closed, 10, "the closed stream counted")
