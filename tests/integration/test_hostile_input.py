"""Issue 11, item 9: nobody is trusted with unbounded input. Each bound is refused with the
field named, and afterwards the controller still serves and the listings still work."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


def node(node_id: str = "edge-h", **fields: object) -> pb.NodeInfo:
    info = pb.NodeInfo(node_id=node_id, arch="x86_64", hostname="h")
    info.capacity.vcpus, info.capacity.memory_mib = 4, 4096
    for name, value in fields.items():
        target, attr = (info, name)
        if "." in name:
            first, attr = name.split(".")
            target = getattr(info, first)
        setattr(target, attr, value)
    return info


async def hello_refusal(cluster: Cluster, info: pb.NodeInfo) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        call = agent_pb2_grpc.AgentSessionStub(channel).Connect(
            iter([apb.AgentMessage(hello=apb.Hello(node=info))])
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
    return refused.value.code(), refused.value.details() or ""


async def still_serving(cluster: Cluster) -> None:
    assert (await cluster.api.GetStatus(epb.GetStatusRequest())).controller_id
    nodes = (await cluster.api.ListNodes(epb.ListNodesRequest())).nodes
    assert all(n.info.node_id == "edge-ok" for n in nodes)
    await cluster.api.ListVMs(epb.ListVMsRequest())


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"capacity.vcpus": 2**32 - 1}, "hello.node.capacity.vcpus: must be in [0, 4096]"),
        ({"location.latitude": math.nan}, "hello.node.location.latitude: must be a finite"),
        ({"cost_per_hour": math.inf}, "hello.node.cost_per_hour: must be a finite"),
        ({"node_id": "evil\x1b[2J"}, "hello.node.node_id 'evil\\x1b[2J'"),
        ({"edge_type": 99}, "edge type 99 is not one this controller knows"),
        ({"hostname": "x" * 100_000}, "hello.node.hostname: at most 256 characters"),
    ],
)
async def test_a_hostile_hello_is_refused_naming_the_field(
    cluster: Cluster, fields: dict[str, object], named: str
) -> None:
    code, message = await hello_refusal(cluster, node(**fields))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert named in message and len(message) < 400
    await still_serving(cluster)


async def test_megabyte_labels_are_refused_and_the_listings_keep_working(cluster: Cluster) -> None:
    info = node()
    info.labels["big"] = "x" * 3_000_000
    code, message = await hello_refusal(cluster, info)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.node.labels[big]: at most 256 characters" in message
    assert "(3000000 characters)" in message
    too_many = node()
    for i in range(65):
        too_many.labels[f"k{i}"] = "v"
    code, message = await hello_refusal(cluster, too_many)
    assert "at most 64 labels" in message
    await still_serving(cluster)


async def test_a_heartbeat_with_nan_is_dropped_and_the_node_stays(
    cluster: Cluster, images: Path
) -> None:
    agent = await cluster.start_agent("edge-ok", cluster.test_uri("edge-ok"), images)
    outbox = agent.session._outbox
    assert outbox is not None
    bad = apb.Heartbeat(seq=10_000, utilization=pb.Utilization(cpu_percent=math.nan))
    outbox.put_nowait(apb.AgentMessage(heartbeat=bad))

    async def beat_after_the_bad_one() -> bool:
        n = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-ok"))
        return n.condition == pb.NODE_CONDITION_READY and agent.session.sessions == 1

    await eventually(beat_after_the_bad_one, 10, "the node to stay ready")
    n = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-ok"))
    assert not math.isnan(n.utilization.cpu_percent)
    await still_serving(cluster)


async def test_vm_statuses_out_of_bounds_are_unknown_never_none_and_reasons_are_cut(
    cluster: Cluster,
) -> None:
    info = node("edge-r")
    long_reason = pb.VMStatus(vm_id="v1", name="ok", reason="qemu said:\n" + "x" * 5000)
    done = asyncio.Event()

    async def stream() -> AsyncIterator[apb.AgentMessage]:
        yield apb.AgentMessage(hello=apb.Hello(node=info, vms=[long_reason]))
        bad = pb.VMStatus(vm_id="v2", name="n" * 100)
        yield apb.AgentMessage(heartbeat=apb.Heartbeat(seq=1, vms=[bad]))
        await done.wait()  # the session stays open while we look

    async with grpc.aio.insecure_channel(cluster.address) as channel:
        call = agent_pb2_grpc.AgentSessionStub(channel).Connect(stream())
        welcome = await call.read()  # a long, multi-line reason does not refuse the node
        assert welcome.WhichOneof("body") == "welcome"

        async def flagged() -> bool:
            n = await cluster.api.GetNode(epb.GetNodeRequest(node_id="edge-r"))
            return "VM statuses refused" in n.condition_reason

        try:
            await eventually(flagged, 10, "the heartbeat's VM list to count as unknown")
        finally:
            done.set()
            call.cancel()
    await cluster.api.ListNodes(epb.ListNodesRequest())


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (pb.VMSpec(name="n" * 1_000_000, image="tiny", vcpus=1, memory_mib=64), "(1000000 char"),
        (pb.VMSpec(name="ok", image="tiny\x1b[31m", vcpus=1, memory_mib=64), "image: control"),
        (
            pb.VMSpec(name="ok", image="tiny", vcpus=1, memory_mib=64, labels={"a": "\x07"}),
            "labels[a]",
        ),
    ],
)
async def test_hostile_specs_are_refused_naming_the_field(
    cluster: Cluster, spec: pb.VMSpec, named: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.api.DeployVM(epb.DeployVMRequest(spec=spec))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert named in (refused.value.details() or "")
    assert len(refused.value.details() or "") < 400  # never "metadata exceeds hard limit"
    await still_serving(cluster)


async def test_unknown_enum_values_in_placement_are_refused(cluster: Cluster) -> None:
    spec = pb.VMSpec(name="e", image="tiny", vcpus=1, memory_mib=64)
    spec.placement.edge_types.append(99)  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.api.PlaceVM(epb.PlaceVMRequest(spec=spec))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "edge type 99" in (refused.value.details() or "")


ALLOWED = {  # what a random-bytes request may get; never UNKNOWN or INTERNAL
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}


async def test_random_bytes_to_every_method_get_a_documented_status(cluster: Cluster) -> None:
    """A seeded fuzz, bounded: 12 payloads per method of all three services (random bytes,
    truncations and bit flips of a valid message), streaming ones included; the answers only
    from ALLOWED, and the controller serves on."""
    rng = random.Random(20261201)
    valid = pb.VMSpec(name="fz", image="tiny", vcpus=1, memory_mib=64).SerializeToString()
    seen: dict[str, set[grpc.StatusCode]] = {}
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        for module in (epb, adpb, apb):
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    payloads = [rng.randbytes(rng.randint(1, 64)) for _ in range(8)]
                    payloads += [valid[: rng.randint(1, len(valid) - 1)] for _ in range(2)]
                    payloads += [
                        bytes(b ^ (1 << rng.randint(0, 7)) for b in valid) for _ in range(2)
                    ]
                    for payload in payloads:
                        code = await _fuzz_call(channel, path, method, payload)
                        seen.setdefault(method.name, set()).add(code)
    bad = {m: codes - ALLOWED for m, codes in seen.items() if codes - ALLOWED}
    assert not bad, bad
    assert grpc.StatusCode.INVALID_ARGUMENT in set().union(*seen.values())
    assert {"Connect", "WatchMigration", "Enroll", "CreateJoinToken"} <= set(seen)
    await cluster.api.ListNodes(epb.ListNodesRequest())


async def _fuzz_call(
    channel: grpc.aio.Channel, path: str, method: object, payload: bytes
) -> grpc.StatusCode:
    """One call of raw bytes; a stream is read for one message (what it answers at once)."""
    server_streaming = getattr(method, "server_streaming", False)
    client_streaming = getattr(method, "client_streaming", False)
    try:
        if client_streaming:
            call = channel.stream_stream(path)(iter([payload]), timeout=5)
            await call.read()
            call.cancel()
        elif server_streaming:
            stream = channel.unary_stream(path)(payload, timeout=2)
            await stream.read()
            stream.cancel()
        else:
            await channel.unary_unary(path)(payload, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK
