"""Who may call what (issue 11, items 3 and 4), enforced in one server interceptor.

The caller's identity comes only from its verified client certificate (the URI SAN our CA
wrote, shared/identity.py). Every method has one rule; a method without one is refused, so a
new RPC is closed until someone decides who may call it. The identity of the call in flight
is kept in a context variable: the runner stamps it on the core's events as the audit's actor.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from controller.security_policy import TlsPolicy, version_refusal
from shared.identity import (
    ClientIdentity,
    Identity,
    NodeIdentity,
    Role,
    ServiceIdentity,
    parse_uri,
)

ANYONE, NODE = "anyone", "node"
Rule = Role | str

_EDGE, _AGENT, _ADMIN = (
    "/novacron.edge.v1.EdgeAPI/",
    "/novacron.edge.v1.AgentSession/",
    "/novacron.edge.v1.AdminAPI/",
)
EDGE_READS = (
    "GetVM", "ListVMs", "ListNodes", "GetNode", "GetStatus", "PlaceVM", "RecommendPlacement",
    "FindNearestNodes", "GetMigrationStatus", "ListMigrations", "WatchMigration", "ListOrphans",
    "WatchEvents",
)  # fmt: skip
EDGE_CHANGES = (
    "DeployVM", "DeployVMs", "MigrateVM", "DeleteVM", "SuspendVM", "ResumeVM", "CordonNode",
    "RotateMeshKey", "HandleEdgeFailure", "DrainNode", "AdoptVM", "DeleteOrphan",
    "GetVMConsole",  # a guest's console can show what only operators may see
)  # fmt: skip
ADMIN = (
    "CreateJoinToken", "ListJoinTokens", "RevokeJoinToken", "RevokeNode", "RemoveNode",
    "ListAudit", "CreateServiceToken", "ListServiceTokens", "RevokeServiceToken",
)  # fmt: skip

POLICY: dict[str, Rule] = {
    **{_EDGE + m: Role.VIEWER for m in EDGE_READS},
    **{_EDGE + m: Role.OPERATOR for m in EDGE_CHANGES},
    **{_ADMIN + m: Role.ADMIN for m in ADMIN},
    _AGENT + "Enroll": ANYONE,  # the join token is its credential
    _AGENT + "Connect": NODE,
    _AGENT + "ConfirmContact": NODE,
    _AGENT + "RenewCertificate": NODE,
    "/grpc.health.v1.Health/Check": ANYONE,
    "/grpc.health.v1.Health/Watch": ANYONE,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Role.VIEWER,
}

# (actor, method, why): records a refused call of a known caller in the audit trail
OnRefused = Callable[[str, str, str], Awaitable[None]]
# a bearer token -> the service it stands for, or None (unknown, wrong, expired, revoked)
Bearer = Callable[[str], ServiceIdentity | None]

CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("caller", default=None)


def caller_actor() -> str:
    """The audit's actor for the call in flight ("" outside one, or with --insecure)."""
    identity = CALLER.get()
    return identity.actor if identity is not None else ""


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """The identity in the peer's verified certificate; None without one of ours."""
    found = [
        i for uri in context.auth_context().get("peer_uri", []) if (i := parse_uri(uri.decode()))
    ]
    return found[0] if len(found) == 1 else None


def refusal(rule: Rule | None, identity: Identity | None) -> tuple[grpc.StatusCode, str] | None:
    """Why `identity` may not call a method with `rule`, or None if it may."""
    if rule is None:
        return grpc.StatusCode.PERMISSION_DENIED, "no rule allows this method"
    if rule == ANYONE:
        return None
    if identity is None:
        return grpc.StatusCode.UNAUTHENTICATED, (
            "a client certificate of this installation is needed "
            "(novacron-controller issue-client NAME --role ROLE)"
        )
    if rule == NODE:
        if isinstance(identity, NodeIdentity):
            return None
        return grpc.StatusCode.PERMISSION_DENIED, "only an enrolled node may call this"
    assert isinstance(rule, Role)
    if isinstance(identity, ClientIdentity | ServiceIdentity) and identity.role >= rule:
        return None
    has = identity.role.label if isinstance(identity, ClientIdentity | ServiceIdentity) else "node"
    return (
        grpc.StatusCode.PERMISSION_DENIED,
        f"needs the {rule.label} role ({identity.actor} is {has})",
    )


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call against POLICY (and the TLS version policy) before its handler runs."""

    def __init__(
        self,
        tls: TlsPolicy | None = None,
        *,
        enforce: bool = True,
        on_refused: OnRefused | None = None,
        bearer: Bearer | None = None,
    ) -> None:
        self._tls = tls or TlsPolicy()
        self._bearer = bearer
        self._enforce = enforce  # False (--insecure): only undecodable requests are refused
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rule = POLICY.get(method) if self._enforce else ANYONE
        guarded: grpc.RpcMethodHandler[Any, Any] = _guarded(
            handler, rule, method, self._tls, self._on_refused, self._bearer
        )
        return guarded


class _Undecodable:
    """What a request that is not its message decodes to: refused as INVALID_ARGUMENT by
    the handler's wrapper (gRPC itself would answer INTERNAL)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or worse from hostile bytes
            return _Undecodable(type(exc).__name__)

    return decode


def bearer_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The `authorization: Bearer <token>` of the call ("" without one)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


def _guarded(
    handler: Any,
    rule: Rule | None,
    method: str,
    tls: TlsPolicy,
    on_refused: OnRefused | None,
    bearer: Bearer | None,
) -> Any:
    """The handler, behind the rule: the identity is checked, then set as the caller."""

    async def admit(context: Any) -> None:
        versions = context.auth_context().get("ssl_tls_version", [])
        old = version_refusal(versions[0] if versions else None, tls)
        if old is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, old)
        identity = peer_identity(context)
        token = bearer_of(context) if identity is None and bearer is not None else ""
        if token and bearer is not None:
            identity = bearer(token)
            if identity is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"
                )
        denied = refusal(rule, identity)
        if denied is not None:
            # a certificate holder's refusal is audited (before the reply); an anonymous
            # caller's is not: the join port is open to anyone, the log must not be floodable
            if identity is not None and on_refused is not None:
                await on_refused(identity.actor, method, denied[1])
            await context.abort(*denied)
        CALLER.set(identity)

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await admit(context)
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {method.rsplit('/', 1)[-1]} message "
                    f"({request.error})",
                )
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _lenient(handler.request_deserializer), handler.response_serializer
        )
    streaming = handler.unary_stream or handler.stream_stream
    if streaming is None:  # client streaming: we serve none

        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: not served")

        return grpc.unary_unary_rpc_method_handler(refuse)

    async def stream(request: Any, context: Any) -> Any:
        await admit(context)
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not valid")
        async for item in streaming(request, context):
            yield item

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    deserializer = (
        _lenient(handler.request_deserializer)
        if handler.unary_stream is not None
        else handler.request_deserializer  # a stream's messages: a bad one ends the stream
    )
    return factory(stream, deserializer, handler.response_serializer)
