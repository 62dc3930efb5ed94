"""Clients that vanish mid-connection fail alone: the daemon serves the next one.

A client that resets its TCP connection (SO_LINGER 0, then close) right after
the WebSocket upgrade, or while the daemon is still answering it, is what
load and client-side timeouts produce. These tests run on the real clock:
the resets race the daemon's own steps, on purpose.
"""

from __future__ import annotations

import logging
import socket
import struct

import nexus_protocol as p
import pytest
import trio
from raw_client import TIMEOUT, connect_unix, connect_ws

from nexusd import Daemon

UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
RESETS = 50


async def _reset(port: int, *, after_upgrade: bool) -> None:
    """Asks for a WebSocket upgrade, reads the `101` answer if `after_upgrade`,
    then resets the connection."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, trio.fail_after(TIMEOUT):
        await sock.connect(("127.0.0.1", port))
        await sock.send(UPGRADE)
        if after_upgrade:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = await sock.recv(4096)
                assert chunk, f"the daemon closed instead of answering: {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 101 "), answer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("after_upgrade", [True, False], ids=["after-101", "before-101"])
async def test_clients_that_reset_do_not_end_the_daemon(daemon: Daemon, after_upgrade: bool,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    assert daemon.ws_port and daemon.socket_path is not None
    caplog.set_level(logging.INFO, logger="nexusd")
    for _ in range(RESETS):
        await _reset(daemon.ws_port, after_upgrade=after_upgrade)
    # Both listeners still serve, and the sessions they serve still work.
    async with connect_ws(daemon.ws_port) as web, connect_unix(daemon.socket_path) as cli:
        created = await cli.call(p.Create)
        assert isinstance(created, p.Created)
        written = await web.call(p.Set, session_id=created.session_id, key="k", value=1,
                                 token=created.token)
        assert isinstance(written, p.Written), written
        assert isinstance(await web.call(p.Ping), p.Pong)
    # A client that goes away is no error of the daemon's.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def _reset_partway(port: int) -> None:
    """Sends half an upgrade request, then resets the connection: a refused
    client resets while the daemon reads its request to answer it 503."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, trio.fail_after(TIMEOUT):
        await sock.connect(("127.0.0.1", port))
        await sock.send(UPGRADE[:20])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.daemon_config(max_connections_per_peer=1)
async def test_refused_clients_that_reset_do_not_end_the_daemon(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    assert daemon.ws_port is not None
    caplog.set_level(logging.INFO, logger="nexusd")
    async with connect_ws(daemon.ws_port) as held:
        for _ in range(RESETS):
            await _reset_partway(daemon.ws_port)
        assert isinstance(await held.call(p.Ping), p.Pong)
    async with connect_ws(daemon.ws_port) as web:  # the daemon still serves
        assert isinstance(await web.call(p.Ping), p.Pong)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
