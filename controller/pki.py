"""The installation's certificate authority and the controller's serving certificate
(issue 11, item 1): `novacron-controller init --state-dir DIR` makes them once, in DIR/pki.

ECDSA P-256 keys (what grpcio's BoringSSL and every TLS 1.2/1.3 client speak). The CA lives
ten years; the serving certificate one, with the addresses agents and clients dial as its
SANs. Key files are created 0600 with O_EXCL (never overwritten, never readable by others for
a moment), and never logged. The CA's pin is the SHA-256 of its SubjectPublicKeyInfo, as
kubeadm's `--discovery-token-ca-cert-hash`: what a joining agent checks before it trusts the
controller with a join token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from shared.files import replace_file

PKI_DIR = "pki"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "controller.crt", "controller.key"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
BACKDATE = dt.timedelta(minutes=5)  # a joining node's clock may run a little behind


@dataclass(frozen=True, slots=True)
class Pki:
    """The files of one installation's PKI, in `<state dir>/pki`."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def pin(self) -> str:
        return ca_pin(self.ca_cert.read_bytes())


def pki_of(state_dir: Path) -> Pki:
    return Pki(state_dir / PKI_DIR)


def init_pki(state_dir: Path, advertise: list[str], now: dt.datetime | None = None) -> Pki:
    """Create the CA and the serving certificate for `advertise` (IP addresses or DNS names).
    Refuses a state dir that has a CA already (a second CA would orphan every node)."""
    if not advertise:
        raise InvalidArgument("at least one --advertise-address is needed (what agents dial)")
    sans = [_san(a) for a in advertise]
    pki = pki_of(state_dir)
    if pki.ca_cert.exists() or pki.ca_key.exists():
        raise AlreadyExists(
            f"{pki.directory} holds a CA already; a new one would orphan every enrolled node"
        )
    now = now or dt.datetime.now(dt.UTC)
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "NovaCron Edge installation CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server = _serving(ca_key, ca_name, sans, now)
    write_private(pki.ca_key, pem_key(ca_key))
    write_private(pki.server_key, pem_key(server_key))
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return pki


def rotate_serving(pki: Pki, advertise: list[str], now: dt.datetime | None = None) -> None:
    """A new serving key and certificate, replacing the old ones: each file written whole,
    then renamed (a running controller loads them at its next handshake, see
    controller/serving.py, and checks that key and certificate match before it does)."""
    if not advertise:
        raise InvalidArgument("at least one --advertise-address is needed (what agents dial)")
    sans = [_san(a) for a in advertise]
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{pki.ca_key}: not the installation's ECDSA CA key")
    key, cert = _serving(ca_key, ca.subject, sans, now or dt.datetime.now(dt.UTC))
    replace_file(pki.server_key, pem_key(key), 0o600)
    replace_file(pki.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o600)


def _serving(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    sans: list[x509.GeneralName],
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "novacron-controller")]),
            ca_name,
            server_key.public_key(),
            now,
            SERVER_LIFETIME,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return server_key, server


def require_pki(state_dir: Path) -> Pki:
    """The installation's PKI, or an error that says what to run."""
    pki = pki_of(state_dir)
    missing = [p.name for p in (pki.ca_cert, pki.server_cert, pki.server_key) if not p.is_file()]
    if missing:
        raise FailedPrecondition(
            f"no CA in {pki.directory} (missing {', '.join(missing)}): run "
            f"`novacron-controller init --state-dir {state_dir} --advertise-address ADDRESS` "
            "once, or start with --insecure for local development"
        )
    return pki


def ca_pin(ca_pem: bytes) -> str:
    """`sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _san(address: str) -> x509.GeneralName:
    host = address.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or not all(_dns_label(label) for label in labels):
        raise InvalidArgument(
            f"--advertise-address {address[:80]!r}: neither an IP address nor a DNS name"
        )
    return x509.DNSName(host.rstrip(".").lower())


def _dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """0600 from the first byte, and never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
