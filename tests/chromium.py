"""Headless Chromium (Debian's `chromium`) for the dashboard tests, driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`: fd 3 in, fd 4 out, NUL-separated JSON), so
no websocket library is needed. One browser per test, with a profile of its own, always
ended by its pid and its profile removed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,900", "--hide-scrollbars",
)  # fmt: skip


def available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def spki_hash(cert_pem: bytes) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the SPKI."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class CdpError(Exception):
    pass


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], to_chrome: int, from_chrome: int) -> None:
        self.process = process
        self._out, self._in = to_chrome, from_chrome
        self._ids = itertools.count(1)
        self._buffer = b""
        self.session = ""

    def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        """One command; its result (events in between are dropped)."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._next(deadline)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError("Chromium did not answer in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise CdpError(f"Chromium exited (status {self.process.poll()})")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        """Poll a JS expression until it is truthy, with a deadline (no fixed sleeps)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))


@contextlib.contextmanager
def browser(spki: str = "") -> Iterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="nc-chromium-"))
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    flags = [*FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"]
    if spki:
        flags.append(f"--ignore-certificate-errors-spki-list={spki}")
    # bash (dash takes one-digit fds only) puts our pipe ends on fds 3 and 4 for Chromium
    argv = ["/bin/bash", "-c", f'exec "$@" 3<&{to_r} 4>&{from_w}', "bash", CHROMIUM, *flags]
    log = (profile / "chromium.log").open("wb")
    process = subprocess.Popen(argv, pass_fds=(to_r, from_w), stdout=log, stderr=log)
    os.close(to_r)
    os.close(from_w)
    try:
        yield Browser(process, to_w, from_r)
    except CdpError as exc:
        tail = (profile / "chromium.log").read_text(errors="replace").splitlines()[-15:]
        raise CdpError(f"{exc}\n--- chromium's log ---\n" + "\n".join(tail)) from None
    finally:
        log.close()
        os.close(to_w)
        os.close(from_r)
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def text_of(b: Browser, selector: str) -> str:
    return str(b.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent ?? ''"))


Check = Callable[[Browser], bool]
