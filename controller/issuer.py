"""Signs certificates with the installation CA: nodes' (from their CSR, at enrolment and
renewal) and clients' (`novacron-controller issue-client`, and the admin's at init).

The identity goes into one URI SAN (shared/identity.py) and nowhere else that is read: the
CSR's own subject and extensions are ignored, so a node cannot ask for a name or a CA bit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.pki import BACKDATE, Pki, key_usage, pem_key
from shared.errors import InvalidArgument
from shared.identity import CertIdentity, ClientIdentity

CLIENT_LIFETIME = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class Issued:
    certificate_pem: bytes
    not_after: dt.datetime


class Issuer:
    """The CA's key, loaded once; every certificate it signs is a leaf for client auth."""

    def __init__(self, pki: Pki) -> None:
        self.ca_pem = pki.ca_cert.read_bytes()
        self._ca = x509.load_pem_x509_certificate(self.ca_pem)
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"{pki.ca_key}: not the installation's ECDSA CA key")
        self._key = key

    def sign_request(
        self, csr_pem: bytes, identity: CertIdentity, lifetime: dt.timedelta, now: dt.datetime
    ) -> Issued:
        """A certificate for the CSR's public key (checked by `verify_request`)."""
        return self.sign_key(verify_request(csr_pem), identity, lifetime, now)

    def issue_client(
        self, identity: ClientIdentity, lifetime: dt.timedelta = CLIENT_LIFETIME
    ) -> tuple[bytes, Issued]:
        """A new key and its certificate (the key in PEM, for the operator to keep)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.sign_key(key.public_key(), identity, lifetime, dt.datetime.now(dt.UTC))
        return pem_key(key), issued

    def sign_key(
        self,
        public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        identity: CertIdentity,
        lifetime: dt.timedelta,
        now: dt.datetime,
    ) -> Issued:
        not_after = now + lifetime
        # backdated for a node whose clock runs behind, but by little against a short
        # lifetime: agents renew at 2/3 of not_before..not_after (agent/credentials.py)
        backdate = min(BACKDATE, lifetime / 10)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.actor)]))
            .issuer_name(self._ca.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(min(not_after, self._ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), cert.not_valid_after_utc)


def verify_request(csr_pem: bytes) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """The public key of a well-formed, self-signed CSR (proof the caller holds the key)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise InvalidArgument("csr_pem: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise InvalidArgument("csr_pem: its signature does not verify")
    public = csr.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1 | ec.SECP384R1):
            raise InvalidArgument(f"csr_pem: curve {public.curve.name} (use P-256)")
        return public
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public
    raise InvalidArgument("csr_pem: the key must be ECDSA P-256 or Ed25519")
