"""The spec's `policies.security` entries and `edge_computing.require_tls` (issue 11, item 5):
each key takes effect or is refused at start-up with a message saying why; none is ignored.

TLS versions: grpcio's Python API has no minimum-version setting, and its BoringSSL accepts
TLS 1.2 and 1.3 (it negotiates 1.3 with every client that offers it). `min_tls_version: "1.3"`
is honoured one level up: the authorisation interceptor refuses every call on a connection
that negotiated less (controller/authz.py), so a TLS 1.2 client completes its handshake and
then gets PERMISSION_DENIED, never an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import build, read_yaml
from shared.errors import ConfigError

TLS_VERSIONS = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    name: str = ""
    require_tls: bool = False
    min_tls_version: str = "1.2"
    network_isolation: bool = False
    audit_logging: bool = True

    def __post_init__(self) -> None:
        where = f"policies.security[{self.name or '?'}]"
        if self.min_tls_version not in TLS_VERSIONS:
            raise ConfigError(
                f"{where}.min_tls_version: {self.min_tls_version!r} is not 1.2 or 1.3 (grpcio "
                "speaks no other; 1.2 is its floor)"
            )
        if self.network_isolation:
            raise ConfigError(
                f"{where}.network_isolation: not built; the VMs of every site share one routed "
                "VM network over the mesh. Set it to false (or remove it) until it is"
            )
        if not self.audit_logging:
            raise ConfigError(
                f"{where}.audit_logging: the audit trail cannot be turned off (every mutating "
                "call is recorded before it is answered)"
            )


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What the policies add up to: the strictest of them."""

    require_tls: bool = False
    min_tls_version: str = "1.2"

    @property
    def minimum(self) -> str:
        """As gRPC's auth context names it (`ssl_tls_version`)."""
        return TLS_VERSIONS[self.min_tls_version]


def combine(policies: Sequence[SecurityPolicy], require_tls: bool) -> TlsPolicy:
    return TlsPolicy(
        require_tls=require_tls or any(p.require_tls for p in policies),
        min_tls_version=max((p.min_tls_version for p in policies), default="1.2"),
    )


def load_policies(path: Path | None) -> tuple[SecurityPolicy, ...]:
    """`policies.security` of the config file: a list of policies."""
    if path is None:
        return ()
    entries: Any = read_yaml(path, "policies").get("security", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("policies.security: expected a list of policies (mappings)")
    return tuple(build(SecurityPolicy, e, f"policies.security[{i}]") for i, e in enumerate(entries))


def version_refusal(negotiated: bytes | None, policy: TlsPolicy) -> str | None:
    """Why a connection that negotiated `negotiated` may not be served, or None."""
    if policy.min_tls_version == "1.2":
        return None
    if negotiated is not None and negotiated.decode() >= policy.minimum:
        return None  # "TLSv1.2" < "TLSv1.3": the names sort as the versions do
    seen = negotiated.decode() if negotiated else "an unknown version"
    return f"this controller requires TLS {policy.min_tls_version}; the connection uses {seen}"
