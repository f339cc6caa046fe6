"""Issue 11 with real TLS on loopback: enrolment with join tokens, node identity from the
certificate, revocation, client roles, renewal and the audit trail. The controller and agents
run in-process (libvirt's test driver); every connection is a real TLS 1.3 handshake."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.credentials import load as load_credentials
from agent.enrolment import fetch_pinned_ca
from controller.pki import init_pki
from shared.errors import PermissionDenied
from shared.identity import Role
from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import admin_pb2_grpc, agent_pb2_grpc, edge_api_pb2_grpc
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import edge_api_pb2 as epb
from shared.pb.v1 import types_pb2 as pb
from tests.integration.harness import Cluster, eventually, make_fake_kernel_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, secure=True)
    await c.start_controller()
    try:
        yield c
    finally:
        await c.close()


async def audit(cluster: Cluster, action: str) -> list[adpb.AuditRecord]:
    response = await cluster.admin.ListAudit(adpb.ListAuditRequest())
    return [r for r in response.records if r.action == action]


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def deploy(name: str) -> epb.DeployVMRequest:
    return epb.DeployVMRequest(spec=pb.VMSpec(name=name, image="tiny", vcpus=1, memory_mib=64))


async def test_an_agent_enrols_and_after_a_restart_reconnects_without_the_token(
    secure: Cluster, images: Path
) -> None:
    token = await secure.join_token("edge-a")
    credentials = await secure.enrol("edge-a", token)
    stored = load_credentials(secure.agent_state_dir("edge-a"))
    assert stored == credentials
    key = secure.agent_state_dir("edge-a") / "pki" / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    await secure.start_agent("edge-a", secure.test_uri("edge-a"), images, credentials=stored)
    await secure.stop_agent("edge-a")
    again = load_credentials(secure.agent_state_dir("edge-a"))  # a restart: what is on disk
    agent = await secure.start_agent("edge-a", secure.test_uri("edge-a"), images, credentials=again)
    assert agent.session.connected.is_set()
    enrolments = await audit(secure, "node.enrol")
    assert [(r.actor, r.target, r.result) for r in enrolments] == [
        (f"token:{token.split('.')[0]}", "edge-a", "ok")
    ]
    with pytest.raises(PermissionDenied, match="is used up"):
        await secure.enrol("edge-a", token)


async def test_enrolment_is_refused_for_bad_tokens_and_a_wrong_ca(secure: Cluster) -> None:
    async def refusal(node_id: str, token: str, pin: str = "") -> str:
        with pytest.raises(PermissionDenied) as info:
            await secure.enrol(node_id, token, pin)
        return str(info.value)

    used = await secure.join_token("edge-u")
    await secure.enrol("edge-u", used)
    assert "is used up" in await refusal("edge-u", used)
    revoked = await secure.join_token("edge-r")
    await secure.admin.RevokeJoinToken(adpb.RevokeJoinTokenRequest(id=revoked.split(".")[0]))
    assert "was revoked" in await refusal("edge-r", revoked)
    wrong_secret = (await secure.join_token("edge-w"))[:7] + "0" * 16
    assert await refusal("edge-w", wrong_secret) == "enrolment refused: the join token is not valid"
    short = await secure.admin.CreateJoinToken(
        adpb.CreateJoinTokenRequest(node_id="edge-e", ttl_seconds=1)
    )
    expiry = short.token.expires_at.ToNanoseconds() / 1e9

    async def past_its_expiry() -> bool:  # the clock, not a synchronisation
        return time.time() > expiry

    await eventually(past_its_expiry, 5, "the short token's expiry")
    assert "has expired" in await refusal("edge-e", short.secret_token)
    bound = await secure.join_token("edge-b")
    assert "is for node edge-b, not edge-x" in await refusal("edge-x", bound)
    unbound = await secure.join_token()
    assert "edge-u is enrolled already" in await refusal("edge-u", unbound)  # no take-over
    other_ca = init_pki(secure.tmp / "other", ["127.0.0.1"]).pin()
    token = await secure.join_token("edge-p")
    assert "presents no CA with pin" in await refusal("edge-p", token, other_ca)
    results = [(r.target, r.result.split(":")[0]) for r in await audit(secure, "node.enrol")]
    assert results.count(("edge-u", "ok")) == 1
    assert ("edge-p", "refused") not in results and ("edge-p", "ok") not in results  # never sent
    assert {("edge-r", "refused"), ("edge-w", "refused"), ("edge-x", "refused")} <= set(results)
    assert ("edge-e", "refused") in results
    # the token for edge-p was not spent: the real CA's pin enrols with it
    await secure.enrol("edge-p", token)


async def test_a_node_speaking_for_another_is_refused_and_a_revoked_node_is_cut(
    secure: Cluster, images: Path
) -> None:
    await secure.start_agent("edge-b", secure.test_uri("edge-b"), images)
    vm = await secure.api.DeployVM(deploy("b-vm"))
    assert vm.node_id == "edge-b"
    a = await secure.enrol("edge-a")
    async with grpc.aio.secure_channel(secure.address, a.channel_credentials()) as channel:
        hello = apb.Hello(node=pb.NodeInfo(node_id="edge-b"))
        call = agent_pb2_grpc.AgentSessionStub(channel).Connect(
            iter([apb.AgentMessage(hello=hello)])
        )
        code, message = await refused(call.read())
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "the certificate is node edge-a's; its hello says 'edge-b'" in message
    [record] = await audit(secure, "node.connect")
    assert (record.actor, record.target, record.result) == ("node:edge-a", "edge-b", "refused")
    still = await secure.api.GetVM(epb.GetVMRequest(name_or_id="b-vm"))
    assert still.node_id == "edge-b" and still.state == pb.VM_STATE_RUNNING

    agent = secure.agents["edge-b"]
    revoked = await secure.admin.RevokeNode(adpb.RevokeNodeRequest(node_id="edge-b"))
    assert revoked.revoked

    async def cut() -> bool:
        return not agent.session.connected.is_set()

    await eventually(cut, 10, "the revoked node's stream to be cut")
    stored = load_credentials(secure.agent_state_dir("edge-b"))
    assert stored is not None
    async with grpc.aio.secure_channel(secure.address, stored.channel_credentials()) as channel:
        hello = apb.Hello(node=pb.NodeInfo(node_id="edge-b"))
        call = agent_pb2_grpc.AgentSessionStub(channel).Connect(
            iter([apb.AgentMessage(hello=hello)])
        )
        code, message = await refused(call.read())
    assert code is grpc.StatusCode.PERMISSION_DENIED and "is revoked" in message
    assert len(agent.hypervisor.list_vms()) == 1  # a revocation touches no VM


async def test_clients_are_refused_without_a_certificate_of_ours_or_the_role(
    secure: Cluster, images: Path
) -> None:
    await secure.start_agent("edge-a", secure.test_uri("edge-a"), images)
    async with grpc.aio.insecure_channel(secure.address) as plain:  # no TLS at all
        code, _ = await refused(
            edge_api_pb2_grpc.EdgeAPIStub(plain).ListVMs(epb.ListVMsRequest(), timeout=5)
        )
    assert code is grpc.StatusCode.UNAVAILABLE
    ca = secure.pki.ca_cert.read_bytes()
    async with grpc.aio.secure_channel(secure.address, grpc.ssl_channel_credentials(ca)) as anon:
        code, _ = await refused(
            edge_api_pb2_grpc.EdgeAPIStub(anon).ListVMs(epb.ListVMsRequest(), timeout=5)
        )
    assert code is grpc.StatusCode.UNAVAILABLE  # the handshake needs a client certificate
    other = Cluster(secure.tmp / "other-installation", secure=True)
    init_pki(other.tmp / "controller", ["127.0.0.1"])
    foreign = other.issue_client("mallory", Role.ADMIN)
    async with secure.client_channel(foreign) as channel:
        code, _ = await refused(
            edge_api_pb2_grpc.EdgeAPIStub(channel).ListVMs(epb.ListVMsRequest(), timeout=5)
        )
    assert code is grpc.StatusCode.UNAVAILABLE  # another CA's certificate: no handshake

    async with secure.client_channel(secure.issue_client("vera", Role.VIEWER)) as channel:
        viewer = edge_api_pb2_grpc.EdgeAPIStub(channel)
        assert not (await viewer.ListVMs(epb.ListVMsRequest())).vms  # viewers read
        code, message = await refused(viewer.DeployVM(deploy("v-1")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert message == "needs the operator role (client:vera is viewer)"
    async with secure.client_channel(secure.issue_client("otto", Role.OPERATOR)) as channel:
        vm = await edge_api_pb2_grpc.EdgeAPIStub(channel).DeployVM(deploy("o-1"))
        assert vm.state == pb.VM_STATE_RUNNING
        code, message = await refused(
            admin_pb2_grpc.AdminAPIStub(channel).CreateJoinToken(adpb.CreateJoinTokenRequest())
        )
    assert code is grpc.StatusCode.PERMISSION_DENIED and "needs the admin role" in message
    [record] = await audit(secure, "vm.deploy")
    assert (record.actor, record.target, record.result) == ("client:otto", vm.id, "ok")
    assert "name=o-1" in record.detail and record.request_id
    refusals = [(r.actor, r.target, r.result) for r in await audit(secure, "api.call")]
    assert refusals == [  # newest first
        ("client:otto", "/novacron.edge.v1.AdminAPI/CreateJoinToken", "refused"),
        ("client:vera", "/novacron.edge.v1.EdgeAPI/DeployVM", "refused"),
    ]


async def test_the_certificate_renews_over_the_stream_and_no_vm_is_touched(
    tmp_path: Path, images: Path
) -> None:
    cluster = Cluster(tmp_path, secure=True, node_certificate_lifetime=6.0)  # renews at 4 s
    await cluster.start_controller()
    try:
        agent = await cluster.start_agent("edge-a", cluster.test_uri("edge-a"), images)
        vm = await cluster.api.DeployVM(deploy("r-1"))
        first = agent.session.credentials
        assert first is not None
        sessions = agent.session.sessions

        async def renewed_and_back() -> bool:
            current = agent.session.credentials
            return (
                current is not None
                and current.cert_pem != first.cert_pem
                and agent.session.sessions > sessions
                and agent.session.connected.is_set()
            )

        await eventually(renewed_and_back, 30, "a renewed certificate and a new session")
        stored = load_credentials(cluster.agent_state_dir("edge-a"))
        assert stored == agent.session.credentials and stored.key_pem != first.key_pem
        after = await cluster.api.GetVM(epb.GetVMRequest(name_or_id="r-1"))
        assert after.state == pb.VM_STATE_RUNNING and after.generation == vm.generation
        assert len(agent.hypervisor.list_vms()) == 1
    finally:
        await cluster.close()


async def test_an_agent_tells_a_fake_controller_nothing(secure: Cluster, tmp_path: Path) -> None:
    """A server on the controller's address with a certificate of another CA: the agent's
    handshake fails, so no hello (the node's inventory) and no command ever crosses."""
    credentials = await secure.enrol("edge-a")
    impostor = init_pki(tmp_path / "impostor", ["127.0.0.1"])
    calls: list[str] = []

    class Listening(agent_pb2_grpc.AgentSessionServicer):
        async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def, override]
            calls.append("Connect")
            async for _ in request_iterator:
                calls.append("message")
            yield apb.ControllerMessage()

    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentSessionServicer_to_server(Listening(), server)
    creds = grpc.ssl_server_credentials(
        [(impostor.server_key.read_bytes(), impostor.server_cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", credentials.channel_credentials()
        ) as channel:
            hello = apb.Hello(node=pb.NodeInfo(node_id="edge-a"))
            call = agent_pb2_grpc.AgentSessionStub(channel).Connect(
                iter([apb.AgentMessage(hello=hello)])
            )
            code, _ = await refused(call.read())
        assert code is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(PermissionDenied):  # and enrolment would not send a token there
            await asyncio.to_thread(fetch_pinned_ca, f"127.0.0.1:{port}", secure.pki.pin())
    finally:
        with contextlib.suppress(Exception):
            await server.stop(0)
    assert calls == []


async def test_the_cli_speaks_mtls_with_its_credentials_and_runs_the_admin_commands(
    secure: Cluster,
    images: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import main as novacron

    admin = secure.pki.directory / "admin"
    monkeypatch.setenv("NOVACRON_CONTROLLER", secure.address)
    monkeypatch.setenv("NOVACRON_CA", str(admin / "ca.crt"))
    monkeypatch.setenv("NOVACRON_CERT", str(admin / "client.crt"))
    monkeypatch.setenv("NOVACRON_KEY", str(admin / "client.key"))

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(novacron, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await run("token", "create", "--node-id", "edge-c", "--ttl", "30m")
    assert code == 0 and "Join with:" in out and secure.pki.pin() in out
    token = next(line.split()[-1] for line in out.splitlines() if line.startswith("Token:"))
    await secure.start_agent(
        "edge-c", secure.test_uri("edge-c"), images, credentials=await secure.enrol("edge-c", token)
    )
    code, out, _ = await run("token", "list")
    assert code == 0 and "used up" in out and "edge-c" in out
    code, out, err = await run("node", "remove", "edge-c")
    assert code == 1 and "is connected, so it is not gone" in err
    code, out, _ = await run("audit", "--since", "1h")
    assert code == 0 and "node.enrol" in out and "token.create" in out and "node.remove" in out
    monkeypatch.delenv("NOVACRON_KEY")
    code, _, err = await run("node", "list")
    assert code == 1 and "incomplete client credentials: --key (or NOVACRON_KEY) missing" in err


async def test_the_serving_certificate_rotates_without_dropping_streams(
    secure: Cluster, images: Path
) -> None:
    import ssl

    from cryptography import x509

    from controller.pki_cli import rotate_serving_cert

    agent = await secure.start_agent("edge-a", secure.test_uri("edge-a"), images)

    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(secure.pki.ca_cert))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", secure.enrol_port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    before = await asyncio.to_thread(served_serial)
    argv = ["--state-dir", str(secure.tmp / "controller"), "--advertise-address", "127.0.0.1"]
    assert rotate_serving_cert(argv) == 0
    on_disk = x509.load_pem_x509_certificate(secure.pki.server_cert.read_bytes()).serial_number
    assert on_disk != before
    assert await asyncio.to_thread(served_serial) == on_disk  # the next handshake: the new one
    async with secure.client_channel(secure.pki.directory / "admin") as fresh:  # a new client
        assert (await edge_api_pb2_grpc.EdgeAPIStub(fresh).ListNodes(epb.ListNodesRequest())).nodes
    assert agent.session.sessions == 1 and agent.session.connected.is_set()  # the stream stayed


async def test_a_service_with_a_bearer_token_calls_the_join_port_with_its_role(
    secure: Cluster, images: Path
) -> None:
    await secure.start_agent("edge-a", secure.test_uri("edge-a"), images)
    created = await secure.admin.CreateServiceToken(
        adpb.CreateServiceTokenRequest(name="ci", role="operator", ttl_seconds=3600)
    )
    viewer = await secure.admin.CreateServiceToken(
        adpb.CreateServiceTokenRequest(name="grafana", role="viewer")
    )
    ca = secure.pki.ca_cert.read_bytes()

    def channel(token: str) -> grpc.aio.Channel:
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(ca), grpc.access_token_call_credentials(token)
        )
        return grpc.aio.secure_channel(f"127.0.0.1:{secure.enrol_port}", credentials)

    async with channel(created.secret_token) as ch:
        vm = await edge_api_pb2_grpc.EdgeAPIStub(ch).DeployVM(deploy("svc-1"))
        assert vm.state == pb.VM_STATE_RUNNING
    [record] = await audit(secure, "vm.deploy")
    assert record.actor == "service:ci"
    async with channel(viewer.secret_token) as ch:
        code, message = await refused(edge_api_pb2_grpc.EdgeAPIStub(ch).DeployVM(deploy("svc-2")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert message == "needs the operator role (service:grafana is viewer)"
    wrong = created.secret_token[:-4] + "zzzz"
    async with channel(wrong) as ch:
        code, _ = await refused(edge_api_pb2_grpc.EdgeAPIStub(ch).ListVMs(epb.ListVMsRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    await secure.admin.RevokeServiceToken(adpb.RevokeServiceTokenRequest(id=created.token.id))
    async with channel(created.secret_token) as ch:
        code, message = await refused(
            edge_api_pb2_grpc.EdgeAPIStub(ch).ListVMs(epb.ListVMsRequest())
        )
    assert code is grpc.StatusCode.UNAUTHENTICATED and message == "the bearer token is not valid"
    stored = secure.server.controller.view.service_token(created.token.id)  # type: ignore[union-attr]
    assert stored is not None and created.secret_token.split(".")[2] not in repr(stored)


async def test_a_node_back_after_its_certificate_expired_enrols_again_with_a_bound_token(
    secure: Cluster,
) -> None:
    import datetime as dt

    from agent.config import AgentConfig
    from agent.credentials import NodeCredentials, new_key_and_request, save
    from agent.main import node_credentials
    from controller.issuer import Issuer
    from shared.identity import NodeIdentity

    await secure.enrol("edge-old")
    key, csr = new_key_and_request("edge-old")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = Issuer(secure.pki).sign_request(
        csr, NodeIdentity("edge-old", 0), dt.timedelta(hours=1), past
    )
    state = secure.agent_state_dir("edge-old")
    save(state, NodeCredentials(secure.pki.ca_cert.read_bytes(), key, expired.certificate_pem))

    def config(token: str) -> AgentConfig:
        return AgentConfig(
            node_id="edge-old",
            controller=secure.address,
            enrol_address=f"127.0.0.1:{secure.enrol_port}",
            state_dir=state,
            join_token=token,
            ca_pin=secure.pki.pin() if token else "",
        )

    kept = await node_credentials(config(""))  # no token: runs on, says what to do
    assert kept is not None and kept.not_after() < dt.datetime.now(dt.UTC)
    fresh = await node_credentials(config(await secure.join_token("edge-old")))
    assert fresh is not None and fresh.not_after() > dt.datetime.now(dt.UTC)
    assert load_credentials(state) == fresh
