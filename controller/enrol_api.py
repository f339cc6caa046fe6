"""The two AgentSession methods that hand out node certificates: `Enroll` (join token ->
first certificate) and `RenewCertificate` (current certificate -> a new one).

The core decides (token valid? node enrolled already? which epoch?); this adapter checks the
CSR before the token is spent, then signs with the CA (controller/issuer.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controller.authz import peer_identity
from controller.core import events as ev
from controller.issuer import Issued, Issuer, verify_request
from controller.records import NodeCredential
from controller.runner import Runner
from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from shared.identity import NodeIdentity, check_name
from shared.pb.v1 import agent_pb2 as apb

TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def secret_hash(secret: str) -> str:
    """What the core keeps of a token's secret (16 random base-36 characters, ~82 bits:
    a fast hash is enough; no one can try 2^82 guesses against a controller)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str]:
    match = TOKEN.match(token)
    if match is None:
        raise InvalidArgument("token: expected <6 characters>.<16 characters> (a-z, 0-9)")
    return match.group(1), match.group(2)


def response(issued: Issued, ca_pem: bytes) -> apb.EnrolResponse:
    not_after = Timestamp()
    not_after.FromDatetime(issued.not_after)
    return apb.EnrolResponse(
        certificate_pem=issued.certificate_pem, ca_pem=ca_pem, not_after=not_after
    )


class Enrolment:
    def __init__(self, runner: Runner, issuer: Issuer | None, lifetime: dt.timedelta) -> None:
        self._runner = runner
        self._issuer = issuer
        self._lifetime = lifetime

    def _require_issuer(self) -> Issuer:
        if self._issuer is None:
            raise FailedPrecondition("this controller runs --insecure: there is nothing to enrol")
        return self._issuer

    async def enroll(
        self, request: apb.EnrolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.EnrolResponse:
        issuer = self._require_issuer()
        token_id, secret = split_token(request.token)
        node_id = check_name("node_id", request.node_id)
        public = verify_request(request.csr_pem)  # before the token is spent
        credential: NodeCredential = await self._runner.request(
            ev.EnrolRequested,
            token_id=token_id,
            secret_hash=secret_hash(secret),
            node_id=node_id,
            actor=f"token:{token_id}",
        )
        identity = NodeIdentity(node_id, credential.epoch)
        issued = issuer.sign_key(public, identity, self._lifetime, dt.datetime.now(dt.UTC))
        await self._issued(identity, issued, renewal=False, actor=f"token:{token_id}")
        return response(issued, issuer.ca_pem)

    async def renew(
        self, request: apb.RenewRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.EnrolResponse:
        issuer = self._require_issuer()
        identity = peer_identity(context)
        if not isinstance(identity, NodeIdentity):
            raise PermissionDenied("only an enrolled node renews its certificate")
        credential = self._runner.view.credential(identity.node_id)
        if credential is None or not credential.accepts(identity.epoch):
            raise PermissionDenied(f"node {identity.node_id}'s certificate is revoked")
        public = verify_request(request.csr_pem)
        issued = issuer.sign_key(public, identity, self._lifetime, dt.datetime.now(dt.UTC))
        await self._issued(identity, issued, renewal=True)
        return response(issued, issuer.ca_pem)

    async def _issued(
        self, identity: NodeIdentity, issued: Issued, *, renewal: bool, actor: str = ""
    ) -> None:
        """Kept and audited before the certificate leaves (a failed write fails the call;
        a node revoked meanwhile gets none)."""
        fields: dict[str, Any] = {"actor": actor} if actor else {}
        await self._runner.request(
            ev.CertificateIssued,
            node_id=identity.node_id,
            epoch=identity.epoch,
            not_after=issued.not_after.timestamp(),
            renewal=renewal,
            **fields,
        )
