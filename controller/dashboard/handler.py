"""One dashboard request: static files (public: they hold no data), the login that trades a
service token for a cookie, and the state document behind the API's authentication."""

from __future__ import annotations

import json
import ssl
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import structlog

from controller.dashboard.auth import Verdict, cleared_cookie, decide, session_cookie
from controller.dashboard.pages import SECURITY_HEADERS, login_page, simple_page

if TYPE_CHECKING:
    from controller.dashboard.server import DashboardServer

log = structlog.get_logger(__name__)

MAX_BODY = 4096  # a login form holds one token
PUBLIC = ("/dashboard.js", "/dashboard.css")


class Busy(Exception):
    """The controller's loop did not hand over a snapshot in time (or is shutting down)."""


class DashboardHandler(BaseHTTPRequestHandler):
    server_version = "novacron-dashboard"
    sys_version = ""
    timeout = 15.0  # a client that stalls its handshake or request loses its thread

    @property
    def dashboard(self) -> DashboardServer:
        return self.server.dashboard  # type: ignore[attr-defined, no-any-return]

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # e.g. a certificate of another CA
                log.debug("dashboard handshake refused", peer=self.client_address, error=str(exc))
                self.close_connection = True
                return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard", request=format % args)

    # -- answers -----------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str = "text/html; charset=utf-8",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (*SECURITY_HEADERS, *headers):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, location: str, cookie: str) -> None:
        self._send(303, b"", headers=(("Location", location), ("Set-Cookie", cookie)))

    def _refuse(self, verdict: Verdict, as_json: bool) -> None:
        headers: list[tuple[str, str]] = []
        if verdict.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="novacron-dashboard"'))
        if verdict.clear_cookie:
            headers.append(("Set-Cookie", cleared_cookie()))
        if as_json:
            body = json.dumps({"error": verdict.why, "status": verdict.status}).encode()
            self._send(verdict.status, body, "application/json", tuple(headers))
        else:
            page = login_page(verdict.status, verdict.why, form=self.dashboard.tls is not None)
            self._send(verdict.status, page, headers=tuple(headers))

    def _verdict(self, token: str = "") -> Verdict:
        d = self.dashboard
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        if token:  # a login: only the token given counts
            return decide(None, f"Bearer {token}", None, d.verify, enforce=True)
        return decide(
            peer,
            self.headers.get("Authorization"),
            self.headers.get("Cookie"),
            d.verify,
            enforce=d.enforce,
        )

    def _login(self, token: str) -> None:
        """A token from the form or the URL: checked, then kept in the cookie, and the
        browser sent to the page without it in the address bar."""
        if not self.dashboard.enforce:
            self._redirect("/", cleared_cookie())
            return
        verdict = self._verdict(token)
        if not verdict.admitted:
            self._refuse(verdict, as_json=False)
            return
        log.info("dashboard login", actor=verdict.identity.actor if verdict.identity else "")
        self._redirect("/", session_cookie(token))

    # -- methods -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        static = self.dashboard.static
        if url.path in PUBLIC:
            ctype, body = static[url.path]
            self._send(200, body, ctype)
            return
        token = parse_qs(url.query).get("token", [""])[0]
        if url.path == "/" and token:
            self._login(token)
            return
        if url.path not in ("/", "/api/state"):
            self._send(404, simple_page(404, "no such page"))
            return
        verdict = self._verdict()
        if not verdict.admitted:
            self._refuse(verdict, as_json=url.path.startswith("/api/"))
            return
        if url.path == "/":
            ctype, body = static["/"]
            self._send(200, body, ctype)
            return
        try:
            body = self.dashboard.state_json()
        except Busy as exc:
            self._send(503, json.dumps({"error": str(exc)}).encode(), "application/json")
            return
        except ValueError as exc:  # a NaN or infinity: the page must not parse broken JSON
            why = f"the state holds a value JSON cannot carry ({exc})"
            self._send(500, json.dumps({"error": why}).encode(), "application/json")
            return
        self._send(200, body, "application/json")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin is not None and urlsplit(origin).netloc != host:
            self._send(403, simple_page(403, "a form of another site may not post here"))
            return
        if path == "/logout":
            self._redirect("/", cleared_cookie())
            return
        if path != "/login":
            self._send(404, simple_page(404, "no such page"))
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(400, simple_page(400, f"the login form is at most {MAX_BODY} bytes"))
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        token = form.get("token", [""])[0].strip()
        if not token:
            self._send(400, simple_page(400, "the form has no token"))
            return
        self._login(token)
