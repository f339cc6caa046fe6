"""The controller's serving credentials, reloaded from STATE_DIR/pki when the files change:
`novacron-controller rotate-serving-cert` replaces them and the next handshake uses the new
certificate, while every open stream goes on with the one it was made with (gRPC calls the
fetcher before each new handshake: `dynamic_ssl_server_credentials`).
"""

from __future__ import annotations

import threading

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.pki import Pki

log = structlog.get_logger(__name__)


class ServingCredentials:
    def __init__(self, pki: Pki, *, client_auth: bool) -> None:
        self._pki = pki
        self._client_auth = client_auth
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        self._stamp = self._files_stamp()
        self.serial = 0
        self._initial = self._load()
        if self._initial is None:
            raise ValueError(f"{pki.server_key} does not match {pki.server_cert}")

    def credentials(self) -> grpc.ServerCredentials:
        assert self._initial is not None
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # None = "no change" (grpcio's docs)
            require_client_authentication=self._client_auth,
        )

    def _files_stamp(self) -> tuple[int, int]:
        return (self._pki.server_cert.stat().st_mtime_ns, self._pki.server_key.stat().st_mtime_ns)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._files_stamp()
                if stamp == self._stamp:
                    return None
                loaded = self._load()
            except (OSError, ValueError) as exc:  # mid-rotation: keep the current one
                log.warning("serving certificate not reloaded", error=str(exc))
                return None
            if loaded is None:
                return None  # key and certificate of different rotations: try next time
            self._stamp = stamp
            log.info("serving certificate reloaded", serial=f"{self.serial:x}")
            return loaded

    def _load(self) -> grpc.ServerCertificateConfiguration | None:
        key_pem = self._pki.server_key.read_bytes()
        cert_pem = self._pki.server_cert.read_bytes()
        ca_pem = self._pki.ca_cert.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(
            der, public
        ):
            return None
        self.serial = cert.serial_number
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem + ca_pem)],
            root_certificates=ca_pem if self._client_auth else None,
        )
