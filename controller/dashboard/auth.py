"""Who is asking the dashboard, by the API's rules (controller/authz.py): a client
certificate of the installation's CA (identity from its URI SAN, shared/identity.py) or a
service token, as an `Authorization: Bearer` header or, for a browser, the cookie that the
login form or `?token=` set. Any client role may read; a node's certificate may not.

The TLS layer has already refused a certificate of another CA (the handshake fails), so a
certificate that reaches here is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

from shared.identity import (
    ClientIdentity,
    Identity,
    NodeIdentity,
    Role,
    ServiceIdentity,
    parse_uri,
)

COOKIE = "__Host-novacron-token"  # __Host-: Secure, Path=/, no Domain (the browser checks)
SESSION_S = 12 * 3600
NEEDED = (
    "a client certificate of this installation (novacron-controller issue-client NAME "
    "--role viewer) or a service token (novacron service-token create NAME --role viewer) "
    "is needed"
)

Verify = Callable[[str], ServiceIdentity | None]  # a bearer token -> its service, or None
PeerCert = Mapping[str, Any]  # what ssl.SSLSocket.getpeercert() returns


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # 200 admitted, 401 no (valid) credentials, 403 credentials without the right
    why: str = ""
    identity: Identity | None = None
    clear_cookie: bool = False  # the browser holds a token that no longer works

    @property
    def admitted(self) -> bool:
        return self.status == 200


def certificate_identity(peer: PeerCert | None) -> Identity | None:
    """The identity in a verified certificate's URI SAN; None without exactly one of ours."""
    if not peer:
        return None
    uris = [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]
    found = [i for uri in uris if (i := parse_uri(str(uri)))]
    return found[0] if len(found) == 1 else None


def bearer_token(header: str | None) -> str:
    if header and header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return ""


def cookie_token(header: str | None) -> str:
    if not header:
        return ""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:  # a malformed Cookie header is no credential
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def _allowed(identity: Identity) -> Verdict:
    if isinstance(identity, NodeIdentity):
        return Verdict(403, f"{identity.actor} is a node: the dashboard is for operators", identity)
    assert isinstance(identity, ClientIdentity | ServiceIdentity)
    if identity.role < Role.VIEWER:
        return Verdict(403, f"needs the viewer role ({identity.actor})", identity)
    return Verdict(200, "", identity)


def decide(
    peer: PeerCert | None,
    authorization: str | None,
    cookie: str | None,
    verify: Verify,
    *,
    enforce: bool = True,
) -> Verdict:
    """Admit or refuse one request (enforce=False: --insecure, everyone is admitted)."""
    if not enforce:
        return Verdict(200)
    identity = certificate_identity(peer)
    if identity is not None:
        return _allowed(identity)
    bearer = bearer_token(authorization)
    if bearer:
        service = verify(bearer)
        if service is None:
            return Verdict(401, "the bearer token is not valid (unknown, expired or revoked)")
        return _allowed(service)
    held = cookie_token(cookie)
    if held:
        service = verify(held)
        if service is None:
            return Verdict(
                401, "the dashboard's token is no longer valid (expired or revoked)", None, True
            )
        return _allowed(service)
    return Verdict(401, NEEDED)


def session_cookie(token: str) -> str:
    """The Set-Cookie value for a verified token: script cannot read it, other sites cannot
    send it, and it never travels over plain HTTP."""
    return f"{COOKIE}={token}; Path=/; Max-Age={SESSION_S}; Secure; HttpOnly; SameSite=Strict"


def cleared_cookie() -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
