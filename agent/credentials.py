"""The node's key, certificate and the installation CA it pinned at enrolment, in
`<state dir>/pki` (the key 0600, never logged, never sent: only its CSR leaves the node).

Written atomically (a new file, fsync, rename): a crash while renewing leaves the old set or
the new one, never a key without its certificate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.errors import ConfigError
from shared.files import replace_file

PKI_DIR = "pki"
CA, KEY, CERT = "ca.crt", "node.key", "node.crt"
RENEW_AT = 2 / 3  # of the certificate's lifetime


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    ca_pem: bytes
    key_pem: bytes
    cert_pem: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trusts only the installation CA (not the system's), and proves who we are."""
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)

    def renew_at(self) -> dt.datetime:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * RENEW_AT

    def not_after(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def new_key_and_request(node_id: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PEM) and a CSR signed by it; the CA writes the identity itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node:{node_id}")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def load(state_dir: Path) -> NodeCredentials | None:
    """The stored credentials; None if the node never enrolled; an error if half are there."""
    directory = state_dir / PKI_DIR
    paths = [directory / name for name in (CA, KEY, CERT)]
    present = [p.exists() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = ", ".join(p.name for p, ok in zip(paths, present, strict=True) if not ok)
        raise ConfigError(
            f"{directory}: {missing} missing; enrol the node again (--join-token, from "
            "`novacron token create --node-id NODE`)"
        )
    ca, key, cert = (p.read_bytes() for p in paths)
    return NodeCredentials(ca, key, cert)


def save(state_dir: Path, credentials: NodeCredentials) -> None:
    directory = state_dir / PKI_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data, mode in (
        (CA, credentials.ca_pem, 0o644),
        (KEY, credentials.key_pem, 0o600),
        (CERT, credentials.cert_pem, 0o644),
    ):
        replace_file(directory / name, data, mode)


def open_channel(
    target: str, credentials: NodeCredentials | None, options: list[tuple[str, int]]
) -> grpc.aio.Channel:
    """mTLS with the node's credentials; plain text only when there are none (--insecure)."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials.channel_credentials(), options=options)
