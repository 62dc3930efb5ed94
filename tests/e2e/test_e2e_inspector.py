"""The inspector in a real browser: headless Chromium (Debian's package,
driven by Playwright with the system browser) loads the page from
`nexusd serve`, signs in with a session token, and shows a value the
``nexus`` command writes within a second."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._procs import Cli, DaemonProcess, clean_environ, http_daemon

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_chromium() -> None:
    """Skips without a browser, except in CI, where the browser test must run."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, so it may not be skipped")
        pytest.skip(reason)


@pytest.fixture
def daemon(tmp_path: Path, home: Path) -> Iterator[DaemonProcess]:
    """``nexusd serve`` with a Unix socket and HTTP on a free loopback port."""
    yield from http_daemon(tmp_path, home)


def _create(base: str) -> tuple[str, str]:
    request = urllib.request.Request(f"{base}/sessions", method="POST",
                                     data=b'{"channel": "api"}',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.load(response)
    return created["session_id"], created["token"]


def test_the_inspector_shows_a_cli_write_within_a_second(
        daemon: DaemonProcess, home: Path, tmp_path: Path) -> None:
    _need_chromium()
    from playwright.sync_api import expect, sync_playwright

    base = daemon.http_url
    sid, token = _create(base)
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(daemon.socket),
               "NEXUS_TOKEN": token})
    assert cli.run("set", sid, "theme", '"dark"').code == 0
    problems: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(10_000)
            # A CSP violation or a script error is reported on the console.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error"
                    else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/")
            page.fill("#session-id", sid)
            page.fill("#credential", token)
            page.click("button[type=submit]")
            # Locators, not page scripts: the page's policy forbids eval.
            expect(page.locator("#status")).to_have_text(f"live · {sid}")
            # The write made before the page opened is there, from the replay,
            # and the context as it stands, though no change in it touched it.
            page.wait_for_selector('#entries tr[data-key="theme"]')
            expect(page.locator("#context")).to_contain_text('"current_channel": "api"')

            r = cli.run("set", sid, "greeting", '"hello from the cli"')
            assert r.code == 0, r.err
            written = time.monotonic()
            row = page.wait_for_selector('#entries tr[data-key="greeting"]', timeout=1_000)
            seen = time.monotonic() - written
            assert row is not None
            cells = [c.inner_text() for c in row.query_selector_all("td")]
            assert cells[:4] == ["greeting", '"hello from the cli"', "1", "cli"], cells
            assert seen < 1.0
            # The timeline and the analytics show the two writes on "cli".
            expect(page.locator("#timeline li")).to_have_count(2)
            expect(page.locator("#timeline li").first).to_contain_text("cli · set greeting")
            expect(page.locator("#chart-channels svg")).to_have_attribute(
                "aria-label", re.compile(r"\bcli 2\b"))
            # The secret went nowhere but into the page's memory.
            assert token not in page.url
            assert page.evaluate("localStorage.length + sessionStorage.length") == 0
            assert page.evaluate("document.cookie") == ""
            assert page.input_value("#credential") == ""
            shot = tmp_path / "inspector.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("NEXUS_INSPECTOR_SCREENSHOT"):
                page.screenshot(path=os.environ["NEXUS_INSPECTOR_SCREENSHOT"], full_page=True)
        finally:
            context.close()
    assert problems == []
