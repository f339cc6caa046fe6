"""The controller serves gRPC health checking and server reflection beside its own services."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.harness import Cluster


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
