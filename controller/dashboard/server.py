"""The dashboard's HTTP(S) server, on its own threads so that no browser can slow the event
loop: a request thread asks the loop for one snapshot (`state_document`, built between two
events) and serialises it itself. Snapshots are shared for half a second, so many open
pages cost the loop what one does; a loop that does not answer within seconds gets a 503,
never a request thread stuck forever.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from importlib import resources
from typing import Any

import structlog

from controller.dashboard.auth import Verify
from controller.dashboard.document import state_document
from controller.dashboard.events import EVENT_LIMIT, EventSource
from controller.dashboard.handler import Busy, DashboardHandler
from controller.dashboard.tls import ReloadingContext
from controller.pki import Pki
from controller.security_policy import TlsPolicy
from controller.view import ControllerView
from shared.errors import InvalidArgument

log = structlog.get_logger(__name__)

CACHE_S = 0.5
LOOP_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32  # request threads at once; more are closed at once
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def load_static() -> dict[str, tuple[str, bytes]]:
    root = resources.files("controller.dashboard") / "static"
    return {path: (ctype, (root / name).read_bytes()) for path, (name, ctype) in STATIC.items()}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], dashboard: DashboardServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dashboard = dashboard
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, DashboardHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        tls = self.dashboard.tls
        if tls is not None:  # the handshake runs in the request's thread, not the accept loop
            sock = tls.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("dashboard request failed", peer=str(client_address), exc_info=True)


class DashboardServer:
    def __init__(
        self,
        view: ControllerView,
        events: EventSource,
        listen: str,
        loop: asyncio.AbstractEventLoop,
        *,
        pki: Pki | None,
        verify: Verify,
        tls_policy: TlsPolicy | None = None,
    ) -> None:
        self.view = view
        self.events = events
        self.verify = verify
        self.enforce = pki is not None  # --insecure: no TLS, no authentication (as the API)
        self.tls = ReloadingContext(pki, tls_policy) if pki is not None else None
        self.static = load_static()
        self._loop = loop
        self._cache_lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None
        host, _, port = listen.rpartition(":")
        try:
            self._httpd = _HTTPServer((host.strip("[]"), int(port)), self)
        except OSError as exc:  # in use, or an address this host does not have
            raise InvalidArgument(
                f"cannot listen on {listen} (dashboard_listen): {exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="dashboard", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    async def _collect(self) -> dict[str, Any]:
        doc = state_document(self.view, self.view.clock())
        try:
            doc["events"] = await self.events(EVENT_LIMIT)
        except Exception as exc:  # a store that cannot be read: the fleet is still worth showing
            log.warning("dashboard events unavailable", error=str(exc))
            doc["events"] = []
            doc["events_error"] = str(exc)
        return doc

    def state_json(self) -> bytes:
        """The current document (at most CACHE_S old); Busy if the loop does not answer."""
        with self._cache_lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            try:
                future = asyncio.run_coroutine_threadsafe(self._collect(), self._loop)
            except RuntimeError as exc:  # the loop is closed: the controller is stopping
                raise Busy(str(exc)) from None
            try:
                doc = future.result(timeout=LOOP_TIMEOUT_S)
            except TimeoutError:
                future.cancel()
                raise Busy(f"the controller did not answer within {LOOP_TIMEOUT_S:g} s") from None
            body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
            self._cached = (time.monotonic(), body)
            return body

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
