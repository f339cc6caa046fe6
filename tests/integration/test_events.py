"""Alerts and events with a real controller and a real agent (libvirt's test driver):
WatchEvents streams a node going suspect and coming back, `novacron events -o json` prints
it, /metrics exports it, node certificates near expiry fire, and gRPC health follows the
store's writability."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.alerts import AlertsConfig
from controller.config import FailureDetectorConfig
from shared.config import Seconds
from shared.domain import NodeCondition
from shared.identity import Role
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import edge_api_pb2_grpc as epb_grpc
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images
from tests.unit.test_prometheus_rules import metric_names

FAST = AlertsConfig(interval=Seconds(0.2), health_probe_interval=Seconds(0.2))


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, alerts=FAST)
    await c.start_controller()
    try:
        yield c
    finally:
        await c.close()


async def next_event(
    stream: grpc.aio.UnaryStreamCall[epb.WatchEventsRequest, epb.ControllerEvent],
    kind: str,
    key: str,
    seen: list[epb.ControllerEvent],
) -> epb.ControllerEvent:
    """Read `stream` (keeping what it reads in `seen`) until the `kind` event of `key`."""
    while True:
        event = await asyncio.wait_for(stream.read(), 30)
        assert event is not grpc.aio.EOF, f"the stream ended before {kind} {key}"
        assert isinstance(event, epb.ControllerEvent)
        seen.append(event)
        if event.kind == kind and event.key == key:
            return event


async def cli(*argv: str, at: Cluster) -> tuple[int, str, str]:
    """The `novacron` command, run as its own process (its output only, not our logs)."""
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "--controller", at.address, "--insecure", *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode is not None
    return done.returncode, out.decode(), err.decode()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def test_a_lost_agent_streams_an_alert_that_the_cli_prints_and_metrics_export(
    fast: Cluster, tmp_path: Path
) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    await fast.start_agent("edge-a", fast.test_uri("edge-a"), images)
    server = fast.server
    assert server is not None and server.alerts is not None and server.metrics is not None
    alerts = server.alerts

    async def seen_ready() -> bool:
        return alerts.condition_seen("edge-a") is NodeCondition.READY

    await eventually(seen_ready, 10, "an evaluation to see edge-a ready")
    stream = fast.api.WatchEvents(
        epb.WatchEventsRequest(follow=True, replay=0, kinds=["alert", "node.condition"])
    )
    seen: list[epb.ControllerEvent] = []
    key = "NodeSuspect:node edge-a"
    try:
        await fast.stop_agent("edge-a")  # its stream closes: suspect at once, lost later
        firing = await next_event(stream, "alert.firing", key, seen)
        assert firing.severity == "warning" and firing.fields["alertname"] == "NodeSuspect"
        assert firing.subject == "node edge-a" and "suspect" in firing.message
        assert firing.since.ToNanoseconds() == firing.at.ToNanoseconds() > 0
        change = [e for e in seen if e.kind == "node.condition"]
        assert (
            change and change[0].fields["from"] == "ready" and change[0].fields["to"] == "suspect"
        )

        text = await asyncio.to_thread(scrape, server.metrics.port)
        assert 'novacron_alerts_firing{alertname="NodeSuspect",severity="warning"} 1.0' in text
        assert 'novacron_alerts_total{alertname="NodeSuspect"} 1.0' in text
        assert 'novacron_alerts_firing{alertname="FailoverFailed",severity="critical"} 0.0' in text
        exported = set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))
        missing = {
            m for m in metric_names() if {m, re.sub(r"_(total|count)$", "", m)}.isdisjoint(exported)
        }
        assert not missing, f"alerts.yaml reads metrics the controller does not export: {missing}"

        code, out, err = await cli("events", "-o", "json", "--kind", "alert", at=fast)
        assert code == 0, err
        items = json.loads(out)["items"]
        printed = [i for i in items if i["key"] == key and i["kind"] == "alert.firing"]
        assert printed and printed[0]["severity"] == "warning"
        assert printed[0]["since"].endswith("Z") and printed[0]["fields"]["alertname"]
        assert all(i["kind"].startswith("alert.") for i in items)

        await fast.start_agent("edge-a", fast.test_uri("edge-a"), images)  # back: resolved
        resolved = await next_event(stream, "alert.resolved", key, seen)
        assert resolved.since.ToNanoseconds() == firing.since.ToNanoseconds()
        assert resolved.at.ToNanoseconds() > firing.at.ToNanoseconds()
    finally:
        stream.cancel()
    # the in-process API the web dashboard reads holds the same events
    recent = fast.server.feed.recent(1000, ["alert"]) if fast.server else []
    assert [e.kind for e in recent if e.key == key] == ["alert.firing", "alert.resolved"]


async def test_a_node_whose_stream_stays_closed_fires_node_lost(tmp_path: Path) -> None:
    quick = FailureDetectorConfig(disconnect_lost_after=Seconds(1.0))
    c = Cluster(tmp_path, alerts=FAST, failure_detector=quick)
    await c.start_controller()
    images = make_fake_kernel_images(tmp_path / "images")
    stream = c.api.WatchEvents(epb.WatchEventsRequest(follow=True, replay=0, kinds=["alert"]))
    seen: list[epb.ControllerEvent] = []
    try:
        await c.start_agent("edge-a", c.test_uri("edge-a"), images)
        await c.stop_agent("edge-a")
        lost = await next_event(stream, "alert.firing", "NodeLost:node edge-a", seen)
        assert lost.severity == "critical" and "lost" in lost.message, lost
    finally:
        stream.cancel()
        await c.close()


async def test_the_cli_refuses_a_bad_kind_with_the_field_named(fast: Cluster) -> None:
    code, _, err = await cli("events", "--kind", "Alert!", at=fast)
    assert code == 1
    assert "INVALID_ARGUMENT" in err and "kinds[0]: 'Alert!' is not an event kind" in err


async def test_audited_requests_are_events_too(fast: Cluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError):  # refused, and the refusal is audited
        await fast.api.CordonNode(epb.CordonNodeRequest(node_id="nope", cordoned=True))
    # a listing without follow ends by itself
    stream = fast.api.WatchEvents(epb.WatchEventsRequest(kinds=["node"]))
    events: list[epb.ControllerEvent] = []
    while (event := await stream.read()) is not grpc.aio.EOF:
        assert isinstance(event, epb.ControllerEvent)
        events.append(event)
    assert [e.kind for e in events] == ["node.cordon"]
    assert events[0].severity == "warning" and "not found" in events[0].message


async def test_a_node_certificate_near_expiry_fires_and_the_serving_one_does_not(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, alerts=FAST, secure=True, node_certificate_lifetime=3600.0)
    await cluster.start_controller()
    try:
        images = make_fake_kernel_images(tmp_path / "images")
        await cluster.start_agent("edge-c", cluster.test_uri("edge-c"), images)
        server = cluster.server
        assert server is not None

        async def expiring() -> bool:
            return any(
                e.key == "CertificateExpiring:node edge-c certificate"
                for e in server.feed.recent(1000, ["alert.firing"])
            )

        await eventually(expiring, 30, "the node certificate's CertificateExpiring alert")
        keys = {e.key for e in server.feed.recent(1000, ["alert.firing"])}
        assert not any("serving" in k or " CA " in k for k in keys), keys
        [firing] = [e for e in server.feed.recent(1000) if e.key.endswith("edge-c certificate")]
        assert "expires in 0.0 days" in firing.message or "expires in 0.1 days" in firing.message
        assert server.metrics is not None
        text = await asyncio.to_thread(scrape, server.metrics.port)
        assert (
            'novacron_certificate_expiry_timestamp_seconds{certificate="node edge-c certif' in text
        )
        assert 'certificate="controller serving certificate"' in text

        # a viewer may watch the events (authz: WatchEvents is a read)
        viewer = cluster.client_channel(cluster.issue_client("watcher", Role.VIEWER))
        try:
            stream = epb_grpc.EdgeAPIStub(viewer).WatchEvents(
                epb.WatchEventsRequest(kinds=["alert.firing"])
            )
            got = [e async for e in stream]
            assert any(e.key.endswith("edge-c certificate") for e in got)
        finally:
            await viewer.close()
    finally:
        await cluster.close()


async def health(cluster: Cluster, service: str = "") -> int:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        got = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(got.status)


async def test_health_is_not_serving_while_the_store_cannot_be_written(fast: Cluster) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert await health(fast) == serving
    locker = sqlite3.connect(fast.tmp / "controller" / "controller.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the database: no write gets in
    try:

        async def down() -> bool:
            return bool(await health(fast) == not_serving)

        await eventually(down, 30, "health to report NOT_SERVING")
        assert await health(fast, "novacron.edge.v1.EdgeAPI") == not_serving
        assert fast.server is not None and fast.server.health is not None
        assert (
            "locked" in fast.server.health.reason and "controller.db" in fast.server.health.reason
        )
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    async def up() -> bool:
        return bool(await health(fast) == serving)

    await eventually(up, 30, "health to report SERVING again")
    assert await health(fast, "novacron.edge.v1.AdminAPI") == serving
    said = [(e.severity, e.message) for e in fast.server.feed.recent(100, ["controller"])]
    assert [s for s, _ in said] == ["critical", "info"] and "locked" in said[0][1]
