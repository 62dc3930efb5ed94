"""The WebSocket transport: a listener (over trio-websocket, optionally TLS) and
the adapter that turns each connection into the `Transport` the connection
handler reads and writes. It knows nothing of the protocol beyond its framing.
"""

from __future__ import annotations

import errno
import logging
import ssl
from typing import Any

import trio
from nexus_protocol import Framing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from .._limits import Peer, PeerLimits, peer_of_address
from ._common import Handler, accept_loop, bracket, in_use, run_alone

__all__ = ["WebSocketTransport", "serve_ws"]

log = logging.getLogger("nexusd.transport")

#: How long a WebSocket closing handshake may take before the connection is
#: dropped.
CLOSE_TIMEOUT = 1.0


class WebSocketTransport:
    kind = "websocket"
    framing = Framing.MESSAGE
    admin = False

    def __init__(self, ws: WebSocketConnection, peer: str, remote: Peer) -> None:
        self.ws = ws
        self.peer = peer
        self.remote = remote

    async def receive(self) -> bytes:
        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            return b""
        if isinstance(message, str):
            # Text frames are not part of the protocol; a body is binary.
            await self.ws.aclose(code=1003, reason="nexus frames are binary messages")
            return b""
        return message or b"\x00"  # an empty message is a (malformed) body, not EOF

    async def send(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await self.ws.send_message(frame)
        except ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def aclose(self) -> None:
        await self.ws.aclose()


async def serve_ws(handler: Handler, host: str, port: int, *, max_frame: int,
                   handshake_timeout: float, ssl_context: ssl.SSLContext | None,
                   handler_nursery: trio.Nursery, limits: PeerLimits,
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serves WebSocket connections in `handler_nursery`, handing each
    `WebSocketTransport` to `handler`; reports the bound port through
    `task_status`. A client has `handshake_timeout` to complete the upgrade;
    one over `limits` is closed at once (its upgrade answered 503 if it
    comes within `CLOSE_TIMEOUT`).

    Raises:
        OSError: the address cannot be bound.
    """
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    try:
        if ssl_context is None:
            listeners += await trio.open_tcp_listeners(port, host=host)
        else:
            listeners += await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host,
                                                                https_compatible=True)
    except OSError as exc:
        address = f"{bracket(host)}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, in_use(address)) from None
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}"
                      ) from None

    async def connection(stream: trio.abc.Stream) -> None:
        peer, remote = _ws_peer(stream)
        if not limits.admit_connection(remote):
            await _refuse(stream)
            return

        async def run() -> None:
            # The nursery holds the WebSocket's reader task.
            async with trio.open_nursery() as nursery:
                ws = None
                try:
                    with trio.move_on_after(handshake_timeout):
                        request = await wrap_server_stream(nursery, stream,
                                                           max_message_size=max_frame + 1)
                        ws = await request.accept()
                    if ws is not None:
                        await handler(WebSocketTransport(ws, peer, remote))
                finally:
                    # (trio closes the stream itself when this returns.)
                    if ws is not None:
                        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                            await ws.aclose()
                    nursery.cancel_scope.cancel()

        try:
            await run_alone(peer, run)
        finally:
            limits.release_connection(remote)

    task_status.started(_tcp_socket(listeners[0]).getsockname()[1])
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, _tcp_socket(listener), connection,
                               handler_nursery)


async def _refuse(stream: trio.abc.Stream) -> None:
    """Answers an upgrade over the connection limits with 503, if it comes soon."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            try:
                request = await wrap_server_stream(nursery, stream, max_message_size=1024)
                await request.reject(503, body=b"the daemon has as many connections as it may")
            except (ConnectionClosed, OSError, trio.BrokenResourceError,
                    trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()


def _tcp_socket(stream_or_listener: Any) -> trio.socket.SocketType:
    """The TCP socket under a stream or a listener, with or without TLS on it."""
    tcp = getattr(stream_or_listener, "transport_stream",
                  getattr(stream_or_listener, "transport_listener", stream_or_listener))
    return tcp.socket  # type: ignore[no-any-return]


def _ws_peer(stream: trio.abc.Stream) -> tuple[str, Peer]:
    """The client's address, read from a socket the client may have reset,
    and its `Peer`."""
    try:
        host, port = _tcp_socket(stream).getpeername()[:2]
    except OSError:
        return "ws:?", peer_of_address("?")
    return f"ws:{bracket(host)}:{port}", peer_of_address(host)
