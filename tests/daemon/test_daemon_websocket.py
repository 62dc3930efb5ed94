"""The WebSocket listener: who may connect (Origin, Host), the subprotocols,
and the bounds on what a client may hold open (frame headers, unfinished
messages, silence)."""

from __future__ import annotations

import contextlib
import os
import struct

import nexus_protocol as p
import pytest
import trio
import trio_websocket
from raw_client import TIMEOUT, connect_unix, connect_ws

from nexusd import Daemon

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


async def _open(port: int, *, host: str = "127.0.0.1", origin: str | None = None,
                subprotocol: str | None = None) -> tuple[trio.SocketStream, bytes]:
    """Sends an upgrade request with these headers; the stream and the
    daemon's answer (its status line and headers)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
               f"Sec-WebSocket-Version: 13\r\n")
    if origin is not None:
        request += f"Origin: {origin}\r\n"
    if subprotocol is not None:
        request += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    await stream.send_all(request.encode() + b"\r\n")
    answer = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in answer:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            answer += chunk
    return stream, answer


async def _greeted(port: int) -> trio.SocketStream:
    """A raw WebSocket connection, past the upgrade and the hello."""
    stream, answer = await _open(port)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    await stream.send_all(_masked(0x2, p.encode_body(p.Hello(versions=[1], channel="web"))))
    with trio.fail_after(TIMEOUT):
        assert b"welcome" in await stream.receive_some(4096)
    return stream


async def _status(port: int, **headers: str | None) -> int:
    stream, answer = await _open(port, **headers)
    await stream.aclose()
    return int(answer.split(b" ", 2)[1])


def _masked(opcode: int, payload: bytes, *, fin: bool = True,
            length: int | None = None) -> bytes:
    """A client frame (masked with a zero key, so the payload reads as is)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


async def _read_close(stream: trio.SocketStream, within: float = TIMEOUT) -> int | None:
    """Reads server frames until a close frame (its code) or the end (None)."""
    buffer = b""
    with trio.fail_after(within):
        while True:
            while len(buffer) >= 2:
                n = buffer[1] & 0x7F
                start = 2 + (2 if n == 126 else 8 if n == 127 else 0)
                if len(buffer) < start:
                    break
                if n == 126:
                    n = struct.unpack("!H", buffer[2:4])[0]
                elif n == 127:
                    n = struct.unpack("!Q", buffer[2:10])[0]
                if len(buffer) < start + n:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[start:start + n]
                buffer = buffer[start + n:]
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if payload else None
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not chunk:
                return None
            buffer += chunk


async def test_a_page_from_another_origin_cannot_open_a_websocket(daemon: Daemon) -> None:
    assert daemon.ws_port
    # A page at http://evil.example: refused before the upgrade.
    stream, answer = await _open(daemon.ws_port, origin="http://evil.example")
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert b"not allowed" in answer + await stream.receive_some(4096)
    await stream.aclose()
    # So is an opaque origin (a sandboxed frame, a file:// page).
    assert await _status(daemon.ws_port, origin="null") == 403
    # A program sends no Origin, and is served.
    assert await _status(daemon.ws_port) == 101


@pytest.mark.daemon_config(allowed_origins="https://App.example:443, http://localhost:3000")
async def test_pages_from_allowed_origins_are_served(daemon: Daemon) -> None:
    assert daemon.ws_port
    assert await _status(daemon.ws_port, origin="https://app.example") == 101
    assert await _status(daemon.ws_port, origin="http://localhost:3000") == 101
    assert await _status(daemon.ws_port, origin="http://localhost:3001") == 403
    assert await _status(daemon.ws_port, origin="http://app.example") == 403


async def test_a_foreign_host_name_is_refused(daemon: Daemon) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 says so in Host."""
    assert daemon.ws_port
    assert await _status(daemon.ws_port, host="rebound.example") == 403
    assert await _status(daemon.ws_port, host=f"rebound.example:{daemon.ws_port}") == 403
    for name in ("127.0.0.1", "localhost", "[::1]"):
        assert await _status(daemon.ws_port, host=f"{name}:{daemon.ws_port}") == 101


@pytest.mark.daemon_config(allowed_hosts="nexus.internal")
async def test_allowed_hosts_replace_the_listening_names(daemon: Daemon) -> None:
    assert daemon.ws_port
    assert await _status(daemon.ws_port, host="nexus.internal:8765") == 101
    assert await _status(daemon.ws_port, host="localhost") == 403


async def test_subprotocols(daemon: Daemon) -> None:
    assert daemon.ws_port
    for offered, chosen in (("nexus.v1.msgpack", b"nexus.v1.msgpack"),
                            ("nexus.v1.json", b"nexus.v1.json"),
                            ("chat, nexus.v1.json", b"nexus.v1.json")):
        stream, answer = await _open(daemon.ws_port, subprotocol=offered)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        assert b"\r\nsec-websocket-protocol: " + chosen + b"\r\n" in answer.lower()
        await stream.aclose()
    # Asked for nothing we speak: refused, not upgraded to something unasked.
    stream, answer = await _open(daemon.ws_port, subprotocol="chat")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    await stream.aclose()


async def test_json_clients_share_sessions_with_msgpack_clients(daemon: Daemon) -> None:
    assert daemon.ws_port and daemon.socket_path is not None
    async with (connect_ws(daemon.ws_port, subprotocols=["nexus.v1.json"]) as page,
                connect_unix(daemon.socket_path) as cli):
        assert page.conn.encoding is p.Encoding.JSON
        assert isinstance(page.welcome, p.Welcome)
        created = await page.call(p.Create, channel="websocket", metadata={"$bytes": "x"})
        assert isinstance(created, p.Created), created
        attached = await page.call(p.Attach, session_id=created.session_id,
                                   token=created.token)
        assert isinstance(attached, p.Attached), attached
        await page.next_of(p.Snapshot)
        # Binary data and keys with "$" cross over intact, both ways.
        value = {"blob": b"\x00\xff", "$bytes": "not bytes", "n": [1, 2.5]}
        written = await cli.call(p.Set, session_id=created.session_id, key="k",
                                 value=value, token=created.token)
        assert isinstance(written, p.Written), written
        change = await page.next_of(p.Change)
        assert change.value == value and change.seq == written.seq
        reply = await page.call(p.Get, session_id=created.session_id, key="k",
                                token=created.token)
        assert isinstance(reply, p.Value) and reply.value == value
        # Errors come back by code, to the request.
        missing = await page.call(p.Get, session_id="0" * 32, key="k", token="nope")
        assert isinstance(missing, p.Error) and missing.code == "not_found"
        # A request that is not valid is answered; the connection carries on.
        rid = page.new_id()
        await page.send_raw(b'{"t": "get", "id": %d}' % rid, stands_for=p.Ping(id=rid))
        refused = await page.reply(rid)
        assert isinstance(refused, p.Error) and refused.code == "bad_request", refused
        assert "session_id" in refused.message
        assert isinstance(await page.call(p.Ping), p.Pong)
        # Malformed JSON, as malformed msgpack, ends the connection.
        await page.send_raw(b'{"t": "ping", "id": 9')
        events = await page.wait_closed()
        assert [(e.code, e.id) for e in events] == [("bad_request", None)], events


async def test_binary_messages_are_refused_on_the_json_subprotocol(daemon: Daemon) -> None:
    assert daemon.ws_port
    async with connect_ws(daemon.ws_port, subprotocols=["nexus.v1.json"]) as page:
        await page.transport.ws.send_message(  # type: ignore[attr-defined]
            p.encode_body(p.Ping(id=page.new_id())))
        assert await page.wait_closed() == []
        reason = page.transport.ws.closed  # type: ignore[attr-defined]
        assert reason is not None and reason.code == 1003, reason


@pytest.mark.daemon_config(max_frame=4096)
async def test_a_header_announcing_too_much_closes_before_the_payload(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.ws_port
    stream, answer = await _open(daemon.ws_port)
    assert answer.startswith(b"HTTP/1.1 101 ")
    t0 = trio.current_time()
    # A header saying 1 GiB follows, and not one byte of it.
    await stream.send_all(_masked(0x2, b"", length=1 << 30))
    assert await _read_close(stream) == 1009
    assert trio.current_time() - t0 < 1
    await stream.aclose()
    # The same for a message cut into frames, each small, together too long.
    stream, _ = await _open(daemon.ws_port)
    await stream.send_all(_masked(0x2, b"a" * 3000, fin=False))
    await stream.send_all(_masked(0x0, b"", fin=True, length=3000))
    assert await _read_close(stream) == 1009
    await stream.aclose()
    async with connect_ws(daemon.ws_port) as fresh:
        assert isinstance(await fresh.call(p.Ping), p.Pong)


@pytest.mark.daemon_config(read_timeout=30.0, ws_ping_interval=None)
async def test_an_unfinished_message_is_closed_after_the_read_timeout(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.ws_port
    stream = await _greeted(daemon.ws_port)
    t0 = trio.current_time()
    # Ten bytes of a hundred, then nothing.
    await stream.send_all(_masked(0x2, b"0123456789", length=100)[:16])
    assert await _read_close(stream, within=100) == 1008
    assert 30 <= trio.current_time() - t0 < 31
    await stream.aclose()
    # A client that says nothing at all is not held to it.
    async with connect_ws(daemon.ws_port) as quiet:
        await trio.sleep(300)
        assert isinstance(await quiet.call(p.Ping), p.Pong)


@pytest.mark.daemon_config(ws_ping_interval=20.0)
async def test_a_silent_client_is_pinged_then_closed(daemon: Daemon,
                                                     autojump_clock: object) -> None:
    assert daemon.ws_port
    # trio-websocket answers pings: kept, however long it says nothing.
    async with connect_ws(daemon.ws_port) as alive:
        await trio.sleep(200)
        assert isinstance(await alive.call(p.Ping), p.Pong)
    # A peer that answers nothing (its machine went to sleep) is closed.
    stream = await _greeted(daemon.ws_port)
    t0 = trio.current_time()
    got = b""
    with trio.fail_after(TIMEOUT * 10):
        while b"\x88" not in got[7:]:
            chunk = await stream.receive_some(4096)
            assert chunk, got
            got += chunk
    assert got[:7] == b"\x89\x05nexus"  # a ping, at 20 s, then the close, 20 s later
    assert 40 <= trio.current_time() - t0 < 41
    # The close comes as the daemon's last word.
    assert await _read_close(stream) is None
    await stream.aclose()


@pytest.mark.daemon_config(queue_size=10_000)
async def test_eager_writes_interleave_with_pongs_at_frame_boundaries(daemon: Daemon) -> None:
    """A watcher that reads slowly makes the daemon's writes stop inside a
    frame; its pings' answers must wait for the frame to end."""
    assert daemon.ws_port and daemon.socket_path is not None
    big = os.urandom(48 * 1024)
    async with (connect_unix(daemon.socket_path) as writer,
                connect_ws(daemon.ws_port) as watcher):
        created = await writer.call(p.Create)
        assert isinstance(created, p.Created)
        sid, token = created.session_id, created.token
        assert isinstance(await watcher.call(p.Attach, session_id=sid, token=token),
                          p.Attached)
        await watcher.next_of(p.Snapshot)
        watcher.pause_reading()
        ws = watcher.transport.ws  # type: ignore[attr-defined]
        for i in range(40):
            reply = await writer.call(p.Set, session_id=sid, key="k", value=[i, big],
                                      token=token)
            assert isinstance(reply, p.Written), reply
            with contextlib.suppress(trio.TooSlowError, trio_websocket.ConnectionClosed):
                with trio.fail_after(0.01):
                    await ws.ping(str(i).encode())
        watcher.resume_reading()
        got = [await watcher.next_of(p.Change) for _ in range(40)]
        assert [c.value[0] for c in got] == list(range(40))
        assert all(c.value[1] == big for c in got)
        assert isinstance(await watcher.call(p.Ping), p.Pong)


@pytest.mark.daemon_config(http="127.0.0.1:0")
async def test_the_inspectors_origin_may_open_a_websocket(daemon: Daemon) -> None:
    """The daemon's own HTTP origin, on the port it bound (here any free one)."""
    assert daemon.ws_port and daemon.http_port
    for name in ("127.0.0.1", "localhost", "[::1]"):
        origin = f"http://{name}:{daemon.http_port}"
        assert await _status(daemon.ws_port, origin=origin) == 101, origin
    assert await _status(daemon.ws_port, origin=f"http://localhost:{daemon.http_port + 1}") == 403
