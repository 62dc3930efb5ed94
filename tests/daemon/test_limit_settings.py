"""Limits a client can reach that are settings: the size of a request's head
(HTTP and the WebSocket upgrade), how long an idle HTTP connection stays
open, and how many sessions one page of the session list holds."""

from __future__ import annotations

import nexus_protocol as p
import pytest
import trio
from raw_client import TIMEOUT, connect_unix

from nexusd import Daemon

PADDING = b"X-Padding: " + b"a" * 2048 + b"\r\n"
UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n" + PADDING + b"\r\n")


async def _status_of(port: int, request: bytes) -> bytes:
    """The status line the daemon answers `request` with."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(TIMEOUT):
            while b"\r\n" not in answer:
                chunk = await stream.receive_some(4096)
                assert chunk, answer
                answer += chunk
    return answer.split(b"\r\n")[0]


@pytest.mark.parametrize("status", [
    pytest.param(b"431", marks=pytest.mark.daemon_config(max_request_head=1024), id="1KiB"),
    pytest.param(b"101", id="default")])
async def test_the_websocket_upgrade_request_is_bounded_by_max_request_head(
        daemon: Daemon, status: bytes) -> None:
    assert daemon.ws_port is not None
    line = await _status_of(daemon.ws_port, UPGRADE)
    assert line.split()[1] == status, line


@pytest.mark.parametrize("status", [
    pytest.param(b"200", marks=pytest.mark.daemon_config(
        http="127.0.0.1:0", max_request_head=256 * 1024), id="256KiB"),
    pytest.param(b"431", marks=pytest.mark.daemon_config(http="127.0.0.1:0"), id="default")])
async def test_the_http_request_head_is_bounded_by_max_request_head(
        daemon: Daemon, status: bytes) -> None:
    # HTTP checks the bound on a head still arriving (a read is up to 64
    # KiB): a 100 KiB head is past the 16 KiB default, not past 256 KiB.
    assert daemon.http_port is not None
    line = await _status_of(daemon.http_port, b"GET /openapi.json HTTP/1.1\r\n"
                            b"Host: 127.0.0.1\r\n" + PADDING * 50 + b"\r\n")
    assert line.split()[1] == status, line


@pytest.mark.daemon_config(http="127.0.0.1:0", http_keep_alive="30s")
async def test_an_idle_http_connection_stays_open_for_http_keep_alive(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.http_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.http_port)
    async with stream:
        await trio.sleep(20)  # past the 5 s default
        await stream.send_all(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with trio.fail_after(TIMEOUT):
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
        # Then, idle past the setting, it is closed.
        with trio.fail_after(60):
            while await stream.receive_some(1 << 16):
                pass


@pytest.mark.daemon_config(max_page=2)
async def test_a_page_of_the_session_list_holds_at_most_max_page(daemon: Daemon) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as owner:
        for _ in range(3):
            assert isinstance(await owner.call(p.Create), p.Created)
        page = await owner.call(p.ListSessions, limit=1000)
        assert isinstance(page, p.Sessions), page
        assert len(page.sessions) == 2 and page.after is not None
        rest = await owner.call(p.ListSessions, limit=1000, after=page.after)
        assert isinstance(rest, p.Sessions) and len(rest.sessions) == 1
