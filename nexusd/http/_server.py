"""The HTTP listener: hypercorn's trio worker, in the daemon's nurseries.

Each accepted connection is served by hypercorn's `TCPServer` (HTTP/1.1 and
HTTP/2, TLS when given), running in the daemon's connection nursery; the
accept loop runs in its listener nursery, so that stopping the listeners
stops accepting and nothing else. This is `hypercorn.trio.serve` taken
apart for two reasons: the daemon owns the order of its shutdown (stop
accepting, let requests in flight finish, then cut what is left), and
hypercorn's writes to a client cannot be cancelled (they are shielded), so a
client that stops reading could hold a response, and the shutdown, forever.
The listener keeps each connection's socket by the client's address, and
`abort_client` / `abort` close it, which ends any write waiting on it.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from .._limits import PeerLimits, peer_of_address
from ..transports._common import accept_loop, bracket, listen_error, run_alone

__all__ = ["HttpListener", "HttpListenerStatistics"]

log = logging.getLogger("nexusd.http")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@attrs.frozen
class HttpListenerStatistics:
    connections: int  # open TCP connections
    accepted: int


class HttpListener:
    """Serves an ASGI app over HTTP; see the module's docstring.

    `limits` admits each connection (one over them is answered 503 and
    closed); `keep_alive` is how long an idle connection stays open, and
    how long one has to send its first request's head; `max_header` bounds
    a request's head (request line and headers), in bytes;
    `handshake_timeout` the time a TLS handshake may take.
    """

    def __init__(self, limits: PeerLimits, *, keep_alive: float = 5.0,
                 max_header: int = 16 * 1024, handshake_timeout: float = 10.0) -> None:
        self._limits = limits
        config = HypercornConfig()
        config.accesslog = None
        config.errorlog = logging.getLogger("nexusd.http.server")
        config.keep_alive_timeout = keep_alive
        # hypercorn closes a connection after 1,000 requests by default; a
        # client that keeps one connection for its writes should not pay a
        # reconnection (and a lost pipeline) every thousand.
        config.keep_alive_max_requests = 1 << 62
        config.h11_max_incomplete_size = max_header
        config.ssl_handshake_timeout = handshake_timeout
        config.include_server_header = False
        self._config = config
        self._app: Any = None
        self._context = WorkerContext(None)
        self._sockets: dict[tuple[str, int], trio.SocketStream] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._accepted = 0
        self.port: int | None = None
        self.scheme = "http"

    def statistics(self) -> HttpListenerStatistics:
        return HttpListenerStatistics(len(self._sockets), self._accepted)

    async def serve(self, make_app: Callable[[int], ASGIApp], host: str, port: int,
                    tls: ssl.SSLContext | None, *, handler_nursery: trio.Nursery,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves the app `make_app(port)` makes (the port bound: the app's
        own origin names it) on `host`:`port` (0: any free port) and reports
        the port bound; each connection runs in `handler_nursery`. Returns
        never: cancel it to stop accepting.

        Raises:
            OSError: the address cannot be bound (in use, not local).
        """
        try:
            listeners: list[Any] = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise listen_error(exc, host, port) from None
        self.port = listeners[0].socket.getsockname()[1]
        app: Any = make_app(self.port)
        self._app = wrap_app(app, self._config.wsgi_max_body_size, "asgi")
        if tls is not None:
            tls.set_alpn_protocols(["h2", "http/1.1"])
            self.scheme = "https"
        task_status.started(self.port)
        # The transports' accept loop: out of descriptors, it sheds the
        # connections waiting and logs once an interval, not each retry.
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                sock = listener.socket
                if tls is not None:
                    listener = trio.SSLListener(listener, tls, https_compatible=True)
                nursery.start_soon(partial(accept_loop, listener, sock, self._handle,
                                           handler_nursery, name="http"))

    async def _handle(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
                      ) -> None:
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        assert isinstance(raw, trio.SocketStream)
        try:
            peer = raw.socket.getpeername()
        except OSError:
            await raw.aclose()
            return  # gone before it was served
        key = (peer[0], peer[1])
        remote = peer_of_address(peer[0])
        if not self._limits.admit_connection(remote):
            await _refuse(stream)
            return
        self._sockets[key] = raw
        if self._idle.is_set():
            self._idle = trio.Event()
        self._accepted += 1
        try:
            server = TCPServer(self._app, self._config, self._context, ConnectionState({}),
                               stream)  # type: ignore[arg-type]  # plain streams too
            # Whatever one connection raises is logged and goes no further.
            await run_alone(f"http {bracket(peer[0])}:{peer[1]}", server.run)
        finally:
            self._limits.release_connection(remote)
            if self._sockets.get(key) is raw:
                del self._sockets[key]
            if not self._sockets:
                self._idle.set()

    def abort_client(self, client: tuple[str, int] | None) -> None:
        """Cuts the connection of the client at `client` (an ASGI scope's
        "client"), ending whatever waits on it."""
        raw = self._sockets.get((client[0], client[1])) if client else None
        if raw is not None:
            raw.socket.close()

    async def shutdown(self) -> None:
        """Idle connections close, and those in use once their response is
        out (no keep-alive)."""
        await self._context.terminated.set()

    async def wait_closed(self) -> None:
        """Returns once no connection is open."""
        while self._sockets:
            await self._idle.wait()

    def abort(self) -> None:
        """Cuts every connection still open."""
        for raw in list(self._sockets.values()):
            raw.socket.close()


_BUSY: Final = (b'{"error":{"code":"busy","message":"the daemon has as many connections as '
                b'it may"}}\n')


async def _refuse(stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
    """Answers a connection over the limits 503 (if it can, within a second) and closes it."""
    with trio.move_on_after(1), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\n"
                              b"content-type: application/json\r\nretry-after: 1\r\n"
                              b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                              % (len(_BUSY), _BUSY))
    with trio.move_on_after(1, shield=True):
        await stream.aclose()
