"""The WebSocket transport's writes, against a socket pair: eager writes that
stop inside a frame, and control frames that must wait for its end."""

from __future__ import annotations

import socket

import trio
import wsproto
from nexus_protocol import Encoding
from wsproto.events import AcceptConnection, BytesMessage, Ping, Request

from nexusd._limits import peer_of_address
from nexusd.transports._websocket import WebSocketSettings, WebSocketTransport

SETTINGS = WebSocketSettings(max_message=1 << 20, max_request=16 * 1024, handshake_timeout=10,
                             read_timeout=30,
                             ping_interval=None, allowed_origins=frozenset(),
                             allowed_hosts=None)


def _pair() -> tuple[WebSocketTransport, socket.socket, wsproto.WSConnection]:
    """A transport past the upgrade, the client's socket, and its wsproto."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setblocking(False)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    assert any(isinstance(e, Request) for e in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    return (WebSocketTransport(stream, server, "test", peer_of_address("127.0.0.1"),
                               Encoding.MSGPACK, SETTINGS, a.fileno()),
            b, client)


async def _drain(sock: socket.socket, client: wsproto.WSConnection) -> list[object]:
    """Everything the client's socket holds, as wsproto events."""
    sock.setblocking(False)
    events: list[object] = []
    while True:
        await trio.sleep(0.01)
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return events
        client.receive_data(data)
        events += list(client.events())


async def test_a_control_frame_waits_for_the_end_of_a_frame_cut_by_an_eager_write() -> None:
    transport, sock, client = _pair()
    body = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    frame = transport.wrap(body)
    assert transport.send_now is not None
    written = transport.send_now(frame)
    assert 0 < written < len(frame)
    # A keepalive ping (or a pong, or the close) while the frame is cut waits.
    await transport._send_control(transport.ws.send(Ping(payload=b"p")))
    # The writer task sends the rest of the frame, the next, then the ping.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.send, [frame[written:], transport.wrap(b"after")])
        got = []
        while len(got) < 3:
            got += await _drain(sock, client)
    assert [type(e) for e in got if not isinstance(e, BytesMessage) or e.message_finished] \
        == [BytesMessage, BytesMessage, Ping]
    data = b"".join(e.data for e in got if isinstance(e, BytesMessage))
    assert data == body + b"after"
    sock.close()
    await transport.stream.aclose()


async def test_an_eager_write_waits_while_a_control_frame_goes_out() -> None:
    transport, sock, _client = _pair()
    assert transport.send_now is not None
    async with transport._lock:  # as `_send_control` holds it while it writes
        assert transport.send_now(transport.wrap(b"x")) == 0
    assert transport.send_now(transport.wrap(b"x")) == 3
    sock.close()
    await transport.stream.aclose()
