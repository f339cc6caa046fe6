"""The dashboard page in headless Chromium against an in-process controller: it draws the
sites from the JSON document, and a hostile string from an agent shows as text, runs nothing
and injects no element."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.pb.v1 import admin_pb2 as adpb
from tests import chromium
from tests.conftest import require_backend
from tests.integration.harness import Cluster, make_fake_kernel_images

HOSTILE = "<img src=x onerror=\"document.title='owned'\"><b id=injected>x</b>"


@pytest.fixture(autouse=True)
def needs_chromium() -> None:
    require_backend(chromium.available(), f"{chromium.CHROMIUM} is missing (Debian: chromium)")


def drive(url: str) -> tuple[str, str, int, int]:
    with chromium.browser() as b:
        b.open(url)
        b.wait_for("Number(document.body?.dataset.updates ?? 0) >= 2", 30, "two redraws")
        return (
            chromium.text_of(b, '.site[data-node="edge-h"] .labels'),
            str(b.evaluate("document.title")),
            int(b.evaluate("document.querySelectorAll('#injected, main img').length")),
            int(b.evaluate("document.querySelectorAll('#map [data-node=\"edge-h\"]').length")),
        )


async def test_the_page_draws_sites_and_shows_hostile_strings_as_text(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, secure=False)
    await cluster.start_controller()
    try:
        images = make_fake_kernel_images(tmp_path / "images")
        await cluster.start_agent(
            "edge-h", cluster.test_uri("edge-h"), images, labels={"owner": HOSTILE}
        )
        assert cluster.server is not None and cluster.server.dashboard is not None
        url = cluster.server.dashboard.url
        # the browser in a thread: this loop is the controller's and must keep serving
        labels, title, injected, marks = await asyncio.to_thread(drive, url)
        assert HOSTILE in labels
        assert title == "NovaCron Edge" and injected == 0
        assert marks == 0  # the test driver's node has no location: listed, not on the map
    finally:
        await cluster.close()


def sign_in(url: str, spki: str) -> tuple[str, str, int]:
    with chromium.browser(spki=spki) as b:
        b.open(url)
        b.wait_for("Number(document.body?.dataset.updates ?? 0) >= 1", 30, "the page to draw")
        return (
            str(b.evaluate("location.pathname + location.search")),
            str(b.evaluate("document.cookie")),
            int(b.evaluate("document.querySelectorAll('.site').length")),
        )


async def test_a_browser_signs_in_with_a_token_over_https(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, secure=True)
    await cluster.start_controller()
    try:
        images = make_fake_kernel_images(tmp_path / "images")
        await cluster.start_agent("edge-s", cluster.test_uri("edge-s"), images)
        created = await cluster.admin.CreateServiceToken(
            adpb.CreateServiceTokenRequest(name="browser", role="viewer", ttl_seconds=600)
        )
        assert cluster.server is not None and cluster.server.dashboard is not None
        url = f"{cluster.server.dashboard.url}?token={created.secret_token}"
        spki = chromium.spki_hash(cluster.pki.server_cert.read_bytes())
        where, script_cookies, sites = await asyncio.to_thread(sign_in, url, spki)
        assert where == "/"  # redirected: the token is not left in the address bar
        assert script_cookies == ""  # HttpOnly: the page's script cannot read the token
        assert sites == 1
    finally:
        await cluster.close()
