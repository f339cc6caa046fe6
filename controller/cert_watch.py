"""When the installation's certificates expire, for the CertificateExpiring alert.

The CA and serving certificates are read from the PKI directory (again whenever the files
change: `novacron-controller rotate-serving-cert` replaces them). A node's certificate is
judged by the newest one known: each one the issuer signs is kept with the node's credential
(`NodeCredential.expires_at`, schema 7, across restarts), and the one a node connects with
is seen too (a certificate issued before schema 7 is known only from then).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from controller.alerts import CertFacts
from controller.issuer import Issued, Issuer
from controller.pki import Pki
from controller.records import NodeCredential
from controller.sessions import NodeIdentityOf
from shared.identity import CertIdentity, NodeIdentity
from shared.pb.v1 import agent_pb2 as apb

log = structlog.get_logger(__name__)


class CertificateWatch:
    def __init__(self, pki: Pki | None) -> None:
        self._pki = pki
        self._files: dict[str, tuple[int, float]] = {}  # path -> (mtime_ns, not_after)
        self._nodes: dict[str, float] = {}  # node id -> the latest not_after seen

    def node_seen(self, node_id: str, not_after: float) -> None:
        """A certificate of `node_id` (connected with, or just issued): the newest counts."""
        self._nodes[node_id] = max(not_after, self._nodes.get(node_id, 0.0))

    def node_not_after(self, node_id: str) -> float | None:
        return self._nodes.get(node_id)

    def facts(self, credentials: Mapping[str, NodeCredential]) -> tuple[CertFacts, ...]:
        """Every known certificate: the CA's, the serving one, and enrolled nodes' (a revoked
        or removed node's certificate no longer matters)."""
        found: list[CertFacts] = []
        if self._pki is not None:
            for subject, path in (
                ("installation CA certificate", self._pki.ca_cert),
                ("controller serving certificate", self._pki.server_cert),
            ):
                not_after = self._file_not_after(str(path))
                if not_after is not None:
                    found.append(CertFacts(subject, not_after))
        for node_id, credential in sorted(credentials.items()):
            not_after = max(credential.expires_at, self._nodes.get(node_id, 0.0))
            if not_after and not credential.revoked:
                found.append(CertFacts(f"node {node_id} certificate", not_after))
        return tuple(found)

    def _file_not_after(self, path: str) -> float | None:
        try:
            mtime = os.stat(path).st_mtime_ns
            cached = self._files.get(path)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            with open(path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as exc:
            log.warning("cannot read a certificate's expiry", path=path, error=str(exc))
            return None
        not_after = cert.not_valid_after_utc.timestamp()
        self._files[path] = (mtime, not_after)
        return not_after


def peer_not_after(context: Any) -> float | None:
    """The not-after of the peer's verified client certificate, if the call has one."""
    pems = context.auth_context().get("x509_pem_cert", [])
    if len(pems) != 1:
        return None
    try:
        return float(x509.load_pem_x509_certificate(pems[0]).not_valid_after_utc.timestamp())
    except ValueError:
        return None


def watching_identity(inner: NodeIdentityOf, watch: CertificateWatch) -> NodeIdentityOf:
    """`inner` (who a connecting node is), noting the certificate it connects with."""

    def identity(hello: apb.Hello, context: Any) -> tuple[str, int]:
        node_id, epoch = inner(hello, context)
        not_after = peer_not_after(context)
        if not_after is not None:
            watch.node_seen(node_id, not_after)
        return node_id, epoch

    return identity


class WatchedIssuer(Issuer):
    """The issuer, telling the watch about every node certificate it signs."""

    def __init__(self, pki: Pki, watch: CertificateWatch) -> None:
        super().__init__(pki)
        self._watch = watch

    def sign_key(
        self,
        public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        identity: CertIdentity,
        lifetime: dt.timedelta,
        now: dt.datetime,
    ) -> Issued:
        issued = super().sign_key(public, identity, lifetime, now)
        if isinstance(identity, NodeIdentity):
            self._watch.node_seen(identity.node_id, issued.not_after.timestamp())
        return issued
