"""A small HTTP(S) client for the dashboard tests: one request per connection, as a browser
polling the page would, with optional client certificate and headers."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def tls_context(ca: Path, client: Path | None = None) -> ssl.SSLContext:
    """Trusts `ca`; presents the client set in `client` (pki_cli's layout) if given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(client / "client.crt", client / "client.key")
    return ctx


def request(
    port: int,
    path: str,
    *,
    ctx: ssl.SSLContext | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
) -> Answer:
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
        if ctx is not None
        else http.client.HTTPConnection(host, port, timeout=10)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()
