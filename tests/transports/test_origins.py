"""The browser check shared by the listeners: `check_browser` and its helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusd import Config
from nexusd._daemon import websocket_settings
from nexusd._origins import ANY, check_browser, listen_hosts, normalize_origin

LOOPBACK = listen_hosts("127.0.0.1")


@pytest.mark.parametrize(("origin", "normal"), [
    ("HTTP://Example.com:80", "http://example.com"),
    ("https://app.example:443", "https://app.example"),
    ("https://app.example:8443", "https://app.example:8443"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("null", "null"),
])
def test_origins_compare_as_browsers_write_them(origin: str, normal: str) -> None:
    assert normalize_origin(origin) == normal


def test_programs_are_allowed_and_pages_only_if_listed() -> None:
    allowed = {"http://127.0.0.1:8000"}
    assert check_browser(None, "127.0.0.1:8765", allowed, LOOPBACK) is None
    assert check_browser("http://127.0.0.1:8000", "localhost:8765", allowed, LOOPBACK) is None
    reason = check_browser("http://evil.example", "127.0.0.1:8765", allowed, LOOPBACK)
    assert reason is not None and "evil.example" in reason
    assert check_browser("null", "127.0.0.1", allowed, LOOPBACK) is not None
    assert check_browser("http://evil.example", "127.0.0.1", {ANY}, LOOPBACK) is None


def test_hosts_are_the_listening_names() -> None:
    assert listen_hosts("localhost") == {"127.0.0.1", "localhost", "::1"}
    assert listen_hosts("0.0.0.0") is None and listen_hosts("::") is None
    assert listen_hosts("192.0.2.7") == {"192.0.2.7"}
    for host in ("127.0.0.1:8765", "LOCALHOST", "localhost.", "[::1]:8765"):
        assert check_browser(None, host, (), LOOPBACK) is None, host
    for host in ("evil.example", "evil.example:8765", "", "127.0.0.2"):
        assert check_browser(None, host, (), LOOPBACK) is not None, host
    assert check_browser(None, "anything", (), None) is None
    assert check_browser(None, "anything", (), {ANY}) is None


def test_the_daemons_own_http_origin_may_open_a_websocket(tmp_path: Path) -> None:
    config = Config(data=tmp_path, socket=None, http="127.0.0.1:8000",
                    allowed_origins="https://app.example")
    settings = websocket_settings(config, "127.0.0.1")
    assert settings.allowed_origins == {
        "https://app.example", "http://127.0.0.1:8000", "http://localhost:8000",
        "http://[::1]:8000"}
    assert settings.allowed_hosts == {"127.0.0.1", "localhost", "::1"}
    assert websocket_settings(Config(data=tmp_path, socket=None, http=None),
                              "127.0.0.1").allowed_origins == frozenset()
