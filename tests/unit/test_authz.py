"""Who may call what: every served method has a rule, and the rules mean what the roles say."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from controller.authz import ANYONE, NODE, POLICY, refusal
from controller.config import load_config
from controller.security_policy import TlsPolicy, version_refusal
from shared.errors import ConfigError
from shared.identity import ClientIdentity, NodeIdentity, Role, parse_uri
from shared.pb.v1 import admin_pb2, agent_pb2, edge_api_pb2


def methods() -> list[str]:
    found = []
    for module in (admin_pb2, agent_pb2, edge_api_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return found


def test_every_method_of_our_services_has_a_rule() -> None:
    missing = [m for m in methods() if m not in POLICY]
    assert not missing, f"no authorisation rule for {missing}: add one to controller/authz.py"


def test_reads_need_a_viewer_changes_an_operator_trust_an_admin() -> None:
    edge = "/novacron.edge.v1.EdgeAPI/"
    assert POLICY[edge + "ListVMs"] is Role.VIEWER
    assert POLICY[edge + "DeployVM"] is Role.OPERATOR
    assert POLICY[edge + "GetVMConsole"] is Role.OPERATOR
    assert POLICY["/novacron.edge.v1.AdminAPI/RevokeNode"] is Role.ADMIN
    assert POLICY["/novacron.edge.v1.AgentSession/Connect"] == NODE
    assert POLICY["/novacron.edge.v1.AgentSession/Enroll"] == ANYONE


def test_refusals_name_the_role_needed() -> None:
    viewer, admin = ClientIdentity("vera", Role.VIEWER), ClientIdentity("ada", Role.ADMIN)
    node = NodeIdentity("gw-1", 0)
    assert refusal(Role.OPERATOR, viewer) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "needs the operator role (client:vera is viewer)",
    )
    assert refusal(Role.OPERATOR, admin) is None
    assert refusal(Role.VIEWER, node) is not None  # a node is no client
    assert refusal(NODE, admin) is not None and refusal(NODE, node) is None
    code, _ = refusal(Role.VIEWER, None) or (None, "")
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert refusal(None, admin) is not None  # a method without a rule is closed


def test_identities_parse_only_from_our_uris() -> None:
    assert parse_uri("urn:novacron:node:gw-1:3") == NodeIdentity("gw-1", 3)
    assert parse_uri("urn:novacron:client:ada:admin") == ClientIdentity("ada", Role.ADMIN)
    for bad in (
        "urn:novacron:client:ada:root",
        "urn:novacron:node:gw-1:x",
        "urn:novacron:node:GW_1:0",
        "urn:novacron:node:gw-1:0:extra",
        "https://example.com",
    ):
        assert parse_uri(bad) is None, bad


def test_tls_13_is_enforced_per_call_when_a_policy_asks_for_it() -> None:
    strict = TlsPolicy(min_tls_version="1.3")
    assert version_refusal(b"TLSv1.3", strict) is None
    assert version_refusal(b"TLSv1.2", strict) == (
        "this controller requires TLS 1.3; the connection uses TLSv1.2"
    )
    assert version_refusal(b"TLSv1.2", TlsPolicy()) is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "controller.yaml"
    path.write_text(text)
    return path


def test_security_policies_take_effect_or_are_refused(tmp_path: Path) -> None:
    policy = """
policies:
  security:
    - name: "Standard Security"
      require_tls: true
      min_tls_version: "1.3"
      network_isolation: false
      audit_logging: true
"""
    config = load_config(write(tmp_path, policy), {})
    assert config.tls == TlsPolicy(require_tls=True, min_tls_version="1.3")
    with pytest.raises(ConfigError, match="--insecure is refused"):
        load_config(write(tmp_path, policy), {"insecure": True})
    with pytest.raises(ConfigError, match="--insecure is refused"):
        load_config(write(tmp_path, "edge_computing:\n  require_tls: true\n"), {"insecure": True})
    for key, value, message in (
        ("min_tls_version", '"1.1"', "is not 1.2 or 1.3"),
        ("network_isolation", "true", "network_isolation: not built"),
        ("audit_logging", "false", "cannot be turned off"),
    ):
        text = f"policies:\n  security:\n    - name: p\n      {key}: {value}\n"
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, text), {})


def test_a_service_token_stands_for_its_service_until_it_expires_or_is_revoked() -> None:
    import time
    from dataclasses import replace

    from controller.admin_api import service_identity
    from controller.enrol_api import secret_hash
    from controller.records import ServiceToken
    from shared.identity import ServiceIdentity

    secret = "s" * 32
    token = ServiceToken(
        "abcd1234", secret_hash(secret), "ci", "operator", time.time() + 60, 0.0, "x"
    )

    class View:
        def __init__(self, record: ServiceToken) -> None:
            self.record = record

        def service_token(self, token_id: str) -> ServiceToken | None:
            return self.record if token_id == self.record.id else None

    good = f"ncs.abcd1234.{secret}"
    assert service_identity(View(token), good) == ServiceIdentity("ci", Role.OPERATOR, "abcd1234")  # type: ignore[arg-type]
    for view, presented in (
        (View(token), f"ncs.abcd1234.{'t' * 32}"),  # wrong secret
        (View(token), "ncs.abcd1234.short"),  # malformed
        (View(replace(token, expires_at=time.time() - 1)), good),  # expired
        (View(replace(token, revoked=True)), good),
    ):
        assert service_identity(view, presented) is None  # type: ignore[arg-type]
