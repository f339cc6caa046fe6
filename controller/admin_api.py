"""AdminAPI: join tokens, node revocation and the audit trail (docs/security.md). The
interceptor (controller/authz.py) admits only the admin role to any of it."""

from __future__ import annotations

import hmac
import re
import secrets
import string
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controller.api import rpc
from controller.core import events as ev
from controller.enrol_api import secret_hash
from controller.records import AuditEntry, JoinToken, NodeCredential, ServiceToken
from controller.runner import Runner
from controller.store import Store
from controller.view import ControllerView
from shared.errors import InvalidArgument
from shared.identity import Role, ServiceIdentity
from shared.pb.v1 import admin_pb2 as adpb
from shared.pb.v1 import admin_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_TTL_S = 3600
MAX_AUDIT = 10_000


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def token_to_pb(t: JoinToken) -> adpb.JoinToken:
    return adpb.JoinToken(
        id=t.id,
        node_id=t.node_id,
        uses_left=t.uses_left,
        expires_at=_ts(t.expires_at),
        created_at=_ts(t.created_at),
        created_by=t.created_by,
        revoked=t.revoked,
        description=t.description,
    )


def credential_to_pb(c: NodeCredential) -> adpb.NodeCredential:
    return adpb.NodeCredential(
        node_id=c.node_id,
        epoch=c.epoch,
        revoked=c.revoked,
        enrolled_at=_ts(c.enrolled_at),
        token_id=c.token_id,
    )


def audit_to_pb(e: AuditEntry) -> adpb.AuditRecord:
    return adpb.AuditRecord(
        seq=e.seq,
        at=_ts(e.at),
        actor=e.actor,
        action=e.action,
        target=e.target,
        detail=e.detail,
        result=e.result,
        request_id=e.request_id,
    )


SERVICE_TOKEN = re.compile(r"^ncs\.([a-z0-9]{8})\.([a-z0-9]{32})$")
DEFAULT_SERVICE_TTL_S = 30 * 86400


def service_token_to_pb(t: ServiceToken) -> adpb.ServiceToken:
    return adpb.ServiceToken(
        id=t.id,
        name=t.name,
        role=t.role,
        expires_at=_ts(t.expires_at),
        created_at=_ts(t.created_at),
        created_by=t.created_by,
        revoked=t.revoked,
    )


def service_identity(view: ControllerView, token: str) -> ServiceIdentity | None:
    """The service a bearer token stands for (constant-time compare), or None."""
    match = SERVICE_TOKEN.match(token)
    if match is None:
        return None
    record = view.service_token(match.group(1))
    if record is None or not record.usable(time.time()):
        return None
    if not hmac.compare_digest(record.secret_hash, secret_hash(match.group(2))):
        return None
    return ServiceIdentity(record.name, Role.parse(record.role), record.id)


def _random(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


class AdminAPIServicer(admin_pb2_grpc.AdminAPIServicer):
    def __init__(self, runner: Runner, store: Store, ca_pin: str) -> None:
        self.runner = runner
        self.store = store
        self.ca_pin = ca_pin

    @rpc
    async def CreateJoinToken(
        self, request: adpb.CreateJoinTokenRequest, context: Ctx
    ) -> adpb.CreatedJoinToken:
        token_id, secret = _random(6), _random(16)
        token: JoinToken = await self.runner.request(
            ev.TokenCreateRequested,
            token_id=token_id,
            secret_hash=secret_hash(secret),
            node_id=request.node_id,
            uses=request.uses or 1,
            ttl=float(request.ttl_seconds or DEFAULT_TTL_S),
            description=request.description,
        )
        return adpb.CreatedJoinToken(
            token=token_to_pb(token), secret_token=f"{token_id}.{secret}", ca_pin=self.ca_pin
        )

    @rpc
    async def ListJoinTokens(
        self, request: adpb.ListJoinTokensRequest, context: Ctx
    ) -> adpb.ListJoinTokensResponse:
        return adpb.ListJoinTokensResponse(
            tokens=[token_to_pb(t) for t in self.runner.view.tokens()]
        )

    @rpc
    async def RevokeJoinToken(
        self, request: adpb.RevokeJoinTokenRequest, context: Ctx
    ) -> adpb.JoinToken:
        token: JoinToken = await self.runner.request(ev.TokenRevokeRequested, token_id=request.id)
        return token_to_pb(token)

    @rpc
    async def RevokeNode(
        self, request: adpb.RevokeNodeRequest, context: Ctx
    ) -> adpb.NodeCredential:
        credential: NodeCredential = await self.runner.request(
            ev.NodeRevokeRequested, node_id=request.node_id
        )
        return credential_to_pb(credential)

    @rpc
    async def RemoveNode(self, request: adpb.RemoveNodeRequest, context: Ctx) -> adpb.RemovedNode:
        names: tuple[str, ...] = await self.runner.request(
            ev.NodeRemoveRequested, node_id=request.node_id, force=request.force
        )
        return adpb.RemovedNode(node_id=request.node_id, vms_forgotten=list(names))

    @rpc
    async def CreateServiceToken(
        self, request: adpb.CreateServiceTokenRequest, context: Ctx
    ) -> adpb.CreatedServiceToken:
        token_id, secret = _random(8), _random(32)
        token: ServiceToken = await self.runner.request(
            ev.ServiceTokenCreateRequested,
            token_id=token_id,
            secret_hash=secret_hash(secret),
            name=request.name,
            role=request.role,
            ttl=float(request.ttl_seconds or DEFAULT_SERVICE_TTL_S),
        )
        return adpb.CreatedServiceToken(
            token=service_token_to_pb(token), secret_token=f"ncs.{token_id}.{secret}"
        )

    @rpc
    async def ListServiceTokens(
        self, request: adpb.ListServiceTokensRequest, context: Ctx
    ) -> adpb.ListServiceTokensResponse:
        tokens = self.runner.view.service_tokens()
        return adpb.ListServiceTokensResponse(tokens=[service_token_to_pb(t) for t in tokens])

    @rpc
    async def RevokeServiceToken(
        self, request: adpb.RevokeServiceTokenRequest, context: Ctx
    ) -> adpb.ServiceToken:
        token: ServiceToken = await self.runner.request(
            ev.ServiceTokenRevokeRequested, token_id=request.id
        )
        return service_token_to_pb(token)

    @rpc
    async def ListAudit(
        self, request: adpb.ListAuditRequest, context: Ctx
    ) -> adpb.ListAuditResponse:
        if request.since_seconds < 0:
            raise InvalidArgument("since_seconds: must be >= 0")
        since = time.time() - request.since_seconds if request.since_seconds else 0.0
        limit = min(request.limit or 1000, MAX_AUDIT)
        entries = await self.store.audit_log(limit=limit, since=since, actor=request.actor)
        return adpb.ListAuditResponse(records=[audit_to_pb(e) for e in entries])
