"""The dashboard's TLS: the controller's serving certificate (reloaded after
`novacron-controller rotate-serving-cert`, as controller/serving.py does for gRPC) and,
optionally, a client certificate verified against the installation's CA. A browser without
one can still connect and log in with a service token; a certificate of another CA fails
the handshake.
"""

from __future__ import annotations

import ssl
import threading

import structlog

from controller.pki import Pki
from controller.security_policy import TlsPolicy

log = structlog.get_logger(__name__)


class ReloadingContext:
    def __init__(self, pki: Pki, policy: TlsPolicy | None = None) -> None:
        self._pki = pki
        self._policy = policy or TlsPolicy()
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._context = self._load()  # a broken pair at start-up is an error, not a warning

    def _files_stamp(self) -> tuple[int, int, int]:
        p = self._pki
        return (
            p.server_cert.stat().st_mtime_ns,
            p.server_key.stat().st_mtime_ns,
            p.ca_cert.stat().st_mtime_ns,
        )

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = (
            ssl.TLSVersion.TLSv1_3
            if self._policy.min_tls_version == "1.3"
            else ssl.TLSVersion.TLSv1_2
        )
        ctx.load_cert_chain(self._pki.server_cert, self._pki.server_key)
        ctx.load_verify_locations(cafile=str(self._pki.ca_cert))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def current(self) -> ssl.SSLContext:
        """The context for the next handshake: reloaded if the files changed and the new
        pair loads (mid-rotation, key and certificate may not match yet: keep the old one)."""
        with self._lock:
            try:
                stamp = self._files_stamp()
                if stamp != self._stamp:
                    self._context = self._load()
                    self._stamp = stamp
                    log.info("dashboard certificate reloaded")
            except (OSError, ssl.SSLError) as exc:
                log.warning("dashboard certificate not reloaded", error=str(exc))
            return self._context
