"""The inspector page: served from the package with strict headers, and the
same files as its sources in clients/js/inspector (`npm run build`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from http_client import TIMEOUT, http_client

from nexusd import Daemon

HTTP = pytest.mark.daemon_config(http="127.0.0.1:0")
ROOT = Path(__file__).resolve().parents[2]


@HTTP
async def test_the_page_and_its_files_are_served_with_strict_headers(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        with trio.fail_after(TIMEOUT):
            page = await client.get("/")
            script = await client.get("/inspector.js")
            style = await client.get("/inspector.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert "<form" in page.text and "/inspector.js" in page.text
    # Every script comes from a file: none inline, none from elsewhere.
    for tag in re.findall(r"<script\b[^>]*>", page.text):
        assert re.search(r'\bsrc="/[\w.]+"', tag), tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", page.text) is None
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert links and all(link.startswith(("/", "data:")) for link in links), links
    for r in (page, script, style):
        policy = r.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self';" in policy
        assert "unsafe" not in policy
        assert "frame-ancestors 'none'" in policy
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    # No secret kept across visits: no storage API used unasked.
    assert "localStorage" not in script.text


@HTTP
async def test_the_page_is_refused_under_a_foreign_host_name(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        with trio.fail_after(TIMEOUT):
            r = await client.get("/", headers={"Host": "rebound.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_the_packaged_files_are_the_built_sources() -> None:
    """`npm run build` in clients/js copies the sources into the package;
    run it after changing them."""
    sources = ROOT / "clients" / "js" / "inspector"
    built = ROOT / "nexusd" / "http" / "static"
    names = sorted(p.name for p in sources.iterdir())
    assert names == sorted(p.name for p in built.iterdir())
    for name in names:
        assert (sources / name).read_bytes() == (built / name).read_bytes(), (
            f"nexusd/http/static/{name} is stale: run `npm run build` in clients/js")
