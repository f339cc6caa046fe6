"""The web dashboard's HTTP layer against a real controller on loopback (real TLS, a real
agent on libvirt's test driver): who is let in, what the state document holds, and that
hostile strings travel as data."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from controller.config import ControllerConfig
from controller.pki import init_pki, rotate_serving
from controller.pki_cli import write_client_set
from controller.server import ControllerServer
from shared.errors import InvalidArgument
from shared.identity import ClientIdentity, Role
from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.dashboard_http import Answer, request, tls_context
from tests.integration.harness import Cluster, make_fake_kernel_images

HOSTILE = '<img src=x onerror="document.title=1">&amp;"\'</script>'


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, secure=True)
    await c.start_controller()
    try:
        yield c
    finally:
        await c.close()


def port(cluster: Cluster) -> int:
    assert cluster.server is not None and cluster.server.dashboard is not None
    return cluster.server.dashboard.port


def anonymous(cluster: Cluster) -> ssl.SSLContext:
    return tls_context(cluster.pki.ca_cert)


async def get(cluster: Cluster, path: str, **kw: Any) -> Answer:
    """From a thread: the controller's loop (this one) must stay free to hand out snapshots."""
    kw.setdefault("ctx", anonymous(cluster))
    return await asyncio.to_thread(request, port(cluster), path, **kw)


async def service_token(cluster: Cluster, name: str, role: str = "viewer") -> str:
    created = await cluster.admin.CreateServiceToken(
        adpb.CreateServiceTokenRequest(name=name, role=role, ttl_seconds=3600)
    )
    return str(created.secret_token)


async def test_without_credentials_the_page_and_the_state_are_401(secure: Cluster) -> None:
    page = await get(secure, "/")
    assert page.status == 401
    assert page.headers["www-authenticate"].startswith("Bearer")
    assert "client certificate of this installation" in page.text
    assert '<form method=post action="/login">' in page.text
    state = await get(secure, "/api/state")
    assert state.status == 401
    assert "service token" in state.json()["error"]
    assets = await get(secure, "/dashboard.js")  # the code is public, the data is not
    assert assets.status == 200 and b"textContent" in assets.body
    assert (await get(secure, "/../etc/passwd")).status == 404
    wrong = await get(secure, "/api/state", headers={"Authorization": "Bearer ncs.abc.def"})
    assert wrong.status == 401 and "not valid" in wrong.json()["error"]


async def test_a_viewer_token_reads_the_fleet(secure: Cluster, tmp_path: Path) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    await secure.start_agent("edge-a", secure.test_uri("edge-a"), images)
    vm = await secure.api.DeployVM(
        epb.DeployVMRequest(spec=pb.VMSpec(name="web-1", image="tiny", vcpus=1, memory_mib=64))
    )
    token = await service_token(secure, "wallboard")
    answer = await get(secure, "/api/state", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 200
    assert answer.headers["cache-control"] == "no-store"
    doc = answer.json()
    assert set(doc) >= {"generated_at", "nodes", "vms", "migrations", "failovers", "events"}
    (node,) = doc["nodes"]
    assert node["id"] == "edge-a" and node["condition"] == "ready"
    assert node["edge_type"] == "mec" and node["capacity"]["vcpus"] == 8
    assert node["allocated"] == {"vcpus": 1, "memory_mib": 64, "storage_gib": 0}
    (shown,) = doc["vms"]
    assert (shown["id"], shown["name"], shown["node_id"]) == (vm.id, "web-1", "edge-a")
    assert shown["state"] == "running"
    assert shown["latency_bound_ms"] == pytest.approx(100.0)  # the profile's max_edge_latency
    assert doc["migrations"] == [] and doc["failovers"] == []
    kinds = [e["kind"] for e in doc["events"]]
    assert "vm.deploy" in kinds, kinds  # the audit trail, newest first
    page = await get(secure, "/", headers={"Authorization": f"Bearer {token}"})
    assert page.status == 200 and b'<svg id="map"' in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_a_token_in_the_url_becomes_a_strict_cookie(secure: Cluster) -> None:
    token = await service_token(secure, "browser")
    login = await get(secure, f"/?token={token}")
    assert login.status == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert flag in cookie, cookie
    pair = cookie.split(";")[0]
    assert pair == f"__Host-novacron-token={token}"
    assert (await get(secure, "/api/state", headers={"Cookie": pair})).status == 200
    form = await get(
        secure,
        "/login",
        method="POST",
        body=f"token={token}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 303 and form.headers["set-cookie"].split(";")[0] == pair
    forged = await get(
        secure, "/login", method="POST", body=b"token=x", headers={"Origin": "https://evil.example"}
    )
    assert forged.status == 403
    bad = await get(secure, "/?token=ncs.aaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    assert bad.status == 401 and "set-cookie" not in bad.headers
    token_id = token.split(".")[1]
    await secure.admin.RevokeServiceToken(adpb.RevokeServiceTokenRequest(id=token_id))
    revoked = await get(secure, "/api/state", headers={"Cookie": pair})
    assert revoked.status == 401 and "no longer valid" in revoked.json()["error"]
    assert "Max-Age=0" in revoked.headers["set-cookie"]  # the browser forgets it


async def test_a_client_certificate_of_viewer_role_is_enough(secure: Cluster) -> None:
    viewer = secure.issue_client("eve-viewer", Role.VIEWER)
    answer = await get(secure, "/api/state", ctx=tls_context(secure.pki.ca_cert, viewer))
    assert answer.status == 200 and answer.json()["nodes"] == []


async def test_a_node_certificate_is_refused(secure: Cluster) -> None:
    await secure.enrol("edge-n")
    node_dir = secure.agent_state_dir("edge-n") / "pki"
    ctx = tls_context(secure.pki.ca_cert)
    ctx.load_cert_chain(node_dir / "node.crt", node_dir / "node.key")
    answer = await get(secure, "/api/state", ctx=ctx)
    assert answer.status == 403 and "is a node" in answer.json()["error"]


async def test_a_certificate_of_another_ca_fails_the_handshake(
    secure: Cluster, tmp_path: Path
) -> None:
    other = init_pki(tmp_path / "other", ["127.0.0.1"])
    write_client_set(tmp_path / "mallory", other, ClientIdentity("mallory", Role.ADMIN))
    ctx = tls_context(secure.pki.ca_cert, tmp_path / "mallory")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await get(secure, "/api/state", ctx=ctx)
    assert (await get(secure, "/api/state")).status == 401  # and the server still serves


async def test_hostile_strings_from_an_agent_are_data(secure: Cluster, tmp_path: Path) -> None:
    images = make_fake_kernel_images(tmp_path / "images")
    await secure.start_agent("edge-h", secure.test_uri("edge-h"), images, labels={"owner": HOSTILE})
    token = await service_token(secure, "auditor")
    answer = await get(secure, "/api/state", headers={"Authorization": f"Bearer {token}"})
    assert answer.headers["x-content-type-options"] == "nosniff"
    (node,) = answer.json()["nodes"]
    assert node["labels"]["owner"] == HOSTILE  # the exact string, as JSON data
    refusal = await get(secure, f"/?token={quote(HOSTILE)}")
    assert refusal.status == 401 and "<img" not in refusal.text


async def test_insecure_controller_serves_plain_http_without_authentication(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path, secure=False)
    await c.start_controller()
    try:
        answer = await asyncio.to_thread(request, port(c), "/api/state")
        assert answer.status == 200 and answer.json()["nodes"] == []
        # many pages polling at once: each gets an answer, the loop serves them all
        polls = [asyncio.to_thread(request, port(c), "/api/state") for _ in range(8)]
        assert [a.status for a in await asyncio.gather(*polls)] == [200] * 8
    finally:
        await c.close()


def served_certificate(cluster: Cluster) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port(cluster)), timeout=10) as raw,
        anonymous(cluster).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


async def test_a_rotated_serving_certificate_is_used_at_the_next_handshake(
    secure: Cluster,
) -> None:
    before = await asyncio.to_thread(served_certificate, secure)
    rotate_serving(secure.pki, ["127.0.0.1"])
    after = await asyncio.to_thread(served_certificate, secure)
    pem = secure.pki.server_cert.read_bytes()
    assert before != after == x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def test_a_dashboard_address_in_use_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ControllerConfig(
            listen="127.0.0.1:0",
            state_dir=tmp_path,
            insecure=True,
            metrics_listen="",
            dashboard_listen=f"127.0.0.1:{taken.getsockname()[1]}",
        )
        server = ControllerServer(config)
        try:
            with pytest.raises(InvalidArgument, match=r"\(dashboard_listen\): Address already"):
                await server.start()
        finally:
            await server.stop(grace=0)
