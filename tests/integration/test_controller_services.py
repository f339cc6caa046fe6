"""The controller serves gRPC health checking and server reflection beside its own services."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images


async def test_health_reports_serving(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "novacron.edge.v1.EdgeAPI", "novacron.edge.v1.AgentSession"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_services(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for reply in call:
            names = {s.name for s in reply.list_services_response.service}
            break
    assert {"novacron.edge.v1.EdgeAPI", "novacron.edge.v1.AgentSession"} <= names


async def test_prometheus_metrics_describe_the_fleet(cluster: Cluster, tmp_path: Path) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images)
    await cluster.api.DeployVM(
        epb.DeployVMRequest(spec=pb.VMSpec(name="m-1", image="tiny", vcpus=1, memory_mib=64))
    )
    assert cluster.server is not None and cluster.server.metrics is not None
    url = f"http://127.0.0.1:{cluster.server.metrics.port}/metrics"

    async def scraped() -> str:
        return await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )

    async def has_rtt() -> bool:
        return (
            'novacron_rtt_seconds{node="edge-a",percentile="50",target="controller"}'
            in await scraped()
        )

    await eventually(has_rtt, 20, "measured RTT in the metrics")
    text = await scraped()
    assert 'novacron_nodes{condition="ready"} 1.0' in text
    assert 'novacron_vms{state="running"} 1.0' in text
