"""Transport adapters: a Unix socket and a WebSocket listener.

Each turns its medium into the `Transport` the connection handler reads and
writes; neither knows anything of the protocol beyond its framing. Each
connection fails alone: whatever one raises is logged once and ends that
connection, never the nursery that serves the others.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from nexus_protocol import Framing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

__all__ = ["StreamTransport", "WebSocketTransport", "open_unix_listener", "serve_unix",
           "serve_ws"]

log = logging.getLogger("nexusd.transport")

_PEERCRED = struct.Struct("3i")
RECEIVE_SIZE = 256 * 1024
#: How long a WebSocket closing handshake may take before the connection is
#: dropped.
CLOSE_TIMEOUT = 1.0

#: A transport's handler: serves one connection, returns when it is over.
Handler = Callable[[Any], Awaitable[None]]

#: What a client that goes away, or speaks no WebSocket, makes a connection
#: raise: its own doing, not the daemon's.
_CLIENT_FAULTS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                  ConnectionClosed, WebSocketProtocolError)


async def _alone(peer: str, run: Callable[[], Awaitable[None]]) -> None:
    """Runs one connection; whatever it raises (cancellation aside) is logged
    once and goes no further, so one connection cannot end the daemon."""
    try:
        await run()
    except* _CLIENT_FAULTS as group:
        log.info("%s: the client went away: %s", peer,
                 "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions))
    except* Exception as group:
        log.error("%s: connection failed", peer, exc_info=group)


class StreamTransport:
    kind = "unix"
    framing = Framing.STREAM

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.peer, self.admin = _peer_of(stream.socket)
        self._fd = stream.socket.fileno()

    async def receive(self) -> bytes:
        return await self.stream.receive_some(RECEIVE_SIZE)

    def send_now(self, data: bytes) -> int:
        """Writes as much of `data` as the socket takes without waiting.

        Never called while `send` is writing, nor after `aclose`.
        """
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"the client went away: {exc}") from None

    async def send(self, frames: list[bytes]) -> None:
        await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    async def aclose(self) -> None:
        await self.stream.aclose()


def _peer_of(sock: trio.socket.SocketType) -> tuple[str, bool]:
    """The peer's description, and whether it is this daemon's user (or root)."""
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError):
        return "unix:?", False
    return f"unix:pid={pid},uid={uid}", uid in (os.getuid(), 0)


async def open_unix_listener(path: Path) -> trio.SocketListener:
    """Listens on `path`, created mode 0600 (and its directory 0700 if new).

    A socket file left by a daemon that died is replaced; one that a live
    daemon answers on is not.

    Raises:
        OSError: the path is in use by a live daemon, or cannot be bound.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody is listening
        else:
            raise OSError(errno.EADDRINUSE, _in_use(str(path)))
        finally:
            probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window where others connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(socket.SOMAXCONN)
    return trio.SocketListener(sock)


async def serve_unix(handler: Handler, listener: trio.SocketListener, *,
                     handler_nursery: trio.Nursery,
                     task_status: trio.TaskStatus[list[trio.SocketListener]]
                     = trio.TASK_STATUS_IGNORED) -> None:
    """Serves `listener`'s connections in `handler_nursery`, handing each
    `StreamTransport` to `handler`."""

    async def connection(stream: trio.SocketStream) -> None:
        async def run() -> None:
            await handler(StreamTransport(stream))
        await _alone("unix", run)

    await trio.serve_listeners(connection, [listener], handler_nursery=handler_nursery,
                               task_status=task_status)


class WebSocketTransport:
    kind = "websocket"
    framing = Framing.MESSAGE
    admin = False

    def __init__(self, ws: WebSocketConnection, peer: str) -> None:
        self.ws = ws
        self.peer = peer

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
                   handler_nursery: trio.Nursery,
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serves WebSocket connections in `handler_nursery`, handing each
    `WebSocketTransport` to `handler`; reports the bound port through
    `task_status`. A client has `handshake_timeout` to complete the upgrade.

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
        address = f"{_bracket(host)}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, _in_use(address)) from None
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}"
                      ) from None

    async def connection(stream: trio.abc.Stream) -> None:
        peer = _ws_peer(stream)

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
                        await handler(WebSocketTransport(ws, peer))
                finally:
                    # (trio closes the stream itself when this returns.)
                    if ws is not None:
                        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                            await ws.aclose()
                    nursery.cancel_scope.cancel()

        await _alone(peer, run)

    task_status.started(_tcp_socket(listeners[0]).getsockname()[1])
    await trio.serve_listeners(connection, listeners, handler_nursery=handler_nursery)


def _tcp_socket(stream_or_listener: Any) -> trio.socket.SocketType:
    """The TCP socket under a stream or a listener, with or without TLS on it."""
    tcp = getattr(stream_or_listener, "transport_stream",
                  getattr(stream_or_listener, "transport_listener", stream_or_listener))
    return tcp.socket  # type: ignore[no-any-return]


def _ws_peer(stream: trio.abc.Stream) -> str:
    """The client's address, read from a socket the client may have reset."""
    try:
        host, port = _tcp_socket(stream).getpeername()[:2]
    except OSError:
        return "ws:?"
    return f"ws:{_bracket(host)}:{port}"


def _in_use(address: str) -> str:
    return f"address {address} is in use (another nexusd?)"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
