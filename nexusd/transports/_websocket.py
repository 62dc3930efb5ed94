"""The WebSocket transport, on wsproto over trio streams (optionally TLS).

The upgrade is refused (403) to a page whose `Origin` is not allowed or a
`Host` the daemon does not answer to, and (400) to a client offering only
subprotocols it does not speak: `nexus.v1.msgpack` (binary messages, the
default when none is asked) and `nexus.v1.json` (text messages, SPEC 2.4).

Each connection's frames are checked as they arrive: a frame header that
announces a message longer than the limit closes the connection before its
payload is read; a message that has begun must end within `read_timeout`; a
client silent for `ping_interval` is pinged, and closed if it stays silent
as long again. Server frames are built here (unmasked, unfragmented) when
the connection handler queues them, so that its outbox holds bytes for the
socket and writes them eagerly, as on the Unix socket; under TLS there is
no descriptor to write to, and the writer task sends everything.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import struct
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio
from nexus_protocol import Encoding, Framing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError
from wsproto.utilities import RemoteProtocolError as HandshakeError

from .._limits import Peer, PeerLimits, peer_of_address
from .._origins import check_browser
from ._common import Handler, accept_loop, bracket, listen_error, run_alone

__all__ = ["SUBPROTOCOLS", "WebSocketSettings", "WebSocketTransport", "serve_ws"]

log = logging.getLogger("nexusd.transport")

SUBPROTOCOLS = {"nexus.v1.msgpack": Encoding.MSGPACK, "nexus.v1.json": Encoding.JSON}
RECEIVE_SIZE = 64 * 1024
#: How long the closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 1.0
# Close codes (RFC 6455 section 7.4.1).
UNSUPPORTED_DATA, POLICY_VIOLATION, MESSAGE_TOO_BIG = 1003, 1008, 1009
_OPCODE = {Encoding.MSGPACK: 0x82, Encoding.JSON: 0x81}  # FIN + binary / text


@attrs.frozen
class WebSocketSettings:
    """`max_message`: longest message taken from the WebSocket layer (the
    protocol's own limit answers `too_large` up to it); `max_request`: the
    largest upgrade request (431 past it); `allowed_origins` and
    `allowed_hosts` as `check_browser` takes them."""

    max_message: int
    max_request: int
    handshake_timeout: float
    read_timeout: float
    ping_interval: float | None
    allowed_origins: frozenset[str]
    allowed_hosts: frozenset[str] | None


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", opcode, 126, n) + payload
    return struct.pack("!BBQ", opcode, 127, n) + payload


class _Closed(Exception):
    """The connection is over (closed by either side, or refused a frame)."""


class WebSocketTransport:
    kind = "websocket"
    framing = Framing.MESSAGE
    admin = False

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, peer: str, remote: Peer,
                 encoding: Encoding, settings: WebSocketSettings, fd: int | None) -> None:
        self.stream = stream
        self.ws = ws
        self.peer = peer
        self.remote = remote
        self.encoding = encoding
        self.settings = settings
        self._opcode = _OPCODE[encoding]
        self._fd = fd
        #: Eager writes: only where there is a descriptor (not under TLS).
        self.send_now: Callable[[bytes], int] | None = self._send_now if fd is not None else None
        self._lock = trio.Lock()  # held by every write that waits
        self._dirty = False  # an eager write stopped inside a frame: the outbox has the rest
        self._control: list[bytes] = []  # pongs and the close, for the next frame boundary
        self._messages: deque[bytes] = deque()
        self._parts: list[Any] = []  # the message being received
        self._received = 0  # its bytes so far
        # The frame headers, read ahead of wsproto: `_header` holds a partial
        # one, `_skip` counts the payload bytes of the current frame still to
        # come, `_announced` what the current message's headers announced.
        self._header = bytearray()
        self._skip = 0
        self._announced = 0
        self._started: float | None = None  # when the unfinished message began
        self._pending = b""  # frames that came with the upgrade request
        self._closed = False

    # --------------------------------------------------------------- reading

    async def receive(self) -> bytes:
        """The next message (UTF-8 bytes for text); b"" once closed."""
        while not self._messages:
            if self._closed:
                return b""
            try:
                if self._pending:
                    data, self._pending = self._pending, b""
                    await self._feed(data)
                else:
                    await self._read()
            except _Closed:
                self._closed = True
        message = self._messages.popleft()
        return message or b"\x00"  # an empty message is a (malformed) body, not EOF

    async def _read(self) -> None:
        settings = self.settings
        if self._started is not None:
            deadline = self._started + settings.read_timeout
        elif settings.ping_interval is not None:
            deadline = trio.current_time() + settings.ping_interval
        else:
            deadline = math.inf
        data = await self._receive_until(deadline)
        if data is not None:
            await self._feed(data)
            return
        if self._started is not None:
            await self._close(POLICY_VIOLATION, f"a message was left unfinished for "
                                                f"{settings.read_timeout:g}s")
        # Silent for a whole interval: is anybody there?
        assert settings.ping_interval is not None
        await self._send_control(self.ws.send(Ping(payload=b"nexus")))
        data = await self._receive_until(trio.current_time() + settings.ping_interval)
        if data is not None:
            await self._feed(data)
            return
        await self._close(POLICY_VIOLATION, f"no answer to a ping within "
                                            f"{settings.ping_interval:g}s")

    async def _receive_until(self, deadline: float) -> bytes | None:
        """What arrives before `deadline` (b"" at the end), or None."""
        with trio.move_on_at(deadline):
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        return None

    async def _feed(self, data: bytes) -> None:
        """Takes what arrived: its frame headers checked first, then its events.

        Raises:
            _Closed: the connection is over.
        """
        if not data:
            self.ws.receive_data(None)
            raise _Closed
        too_big = self._scan(data)
        if too_big:
            await self._close(MESSAGE_TOO_BIG, too_big)
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, BytesMessage | TextMessage):
                await self._take(event)
            elif isinstance(event, Ping):
                await self._send_control(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_control(ws.send(event.response()))
                    raise _Closed
                # The client broke the framing rules (wsproto says how).
                await self._close(event.code, event.reason or "protocol error")
        if self._skip or self._header or self._announced or self._parts:
            if self._started is None:
                self._started = trio.current_time()
        else:
            self._started = None

    def _scan(self, data: bytes) -> str | None:
        """Reads the frame headers in `data`; why the connection must close, if
        one announces a message longer than the limit."""
        i, n = 0, len(data)
        header = self._header
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            need = _header_size(header)
            while len(header) < need and i < n:
                header.append(data[i])
                i += 1
                need = _header_size(header)
            if len(header) < need:
                break
            length = header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(header[2:4], "big")
            elif length == 127:
                length = int.from_bytes(header[2:10], "big")
            if header[0] & 0x0F < 8:  # a data frame: part of a message
                self._announced += length
                if self._announced > self.settings.max_message:
                    return (f"a message of {self._announced} bytes or more exceeds the "
                            f"limit of {self.settings.max_message}")
                if header[0] & 0x80:
                    self._announced = 0
            self._skip = length
            header.clear()
        return None

    async def _take(self, event: BytesMessage | TextMessage) -> None:
        if (self._opcode == 0x81) != isinstance(event, TextMessage):
            kind = "text" if self._opcode == 0x81 else "binary"
            await self._close(UNSUPPORTED_DATA, f"nexus frames here are {kind} messages")
        self._received += len(event.data)
        if self._received > self.settings.max_message:  # (the headers said so first)
            await self._close(MESSAGE_TOO_BIG, "message too big")
        self._parts.append(event.data)
        if event.message_finished:
            parts, self._parts, self._received = self._parts, [], 0
            if self._opcode == 0x81:
                self._messages.append("".join(parts).encode())
            else:
                self._messages.append(parts[0] if len(parts) == 1 else b"".join(parts))

    async def _close(self, code: int, reason: str) -> None:
        """Closes the connection with `code`.

        Raises:
            _Closed: always.
        """
        log.info("%s: closing (%d): %s", self.peer, code, reason)
        if self.ws.state is ConnectionState.OPEN:
            await self._send_control(self.ws.send(CloseConnection(code=code, reason=reason)))
        raise _Closed

    # --------------------------------------------------------------- writing

    def wrap(self, body: bytes) -> bytes:
        """The WebSocket frame that carries one body."""
        return _frame(self._opcode, body)

    def _send_now(self, data: bytes) -> int:
        """Writes as much of `data` as the socket takes without waiting.

        Never called while `send` is writing, nor after `aclose`.
        """
        if self._lock.locked():
            return 0  # a control frame is going out: the writer task sends this after it
        try:
            written = os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"the client went away: {exc}") from None
        if 0 < written < len(data):
            self._dirty = True
        return written

    async def send(self, frames: list[bytes]) -> None:
        """Writes frames made by `wrap` (and what an eager write left of one)."""
        async with self._lock:
            try:
                await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))
                self._dirty = False
                await self._write_control()
            except OSError as exc:
                raise trio.BrokenResourceError(f"the client went away: {exc}") from None

    async def _send_control(self, data: bytes) -> None:
        """Writes a control frame at the next frame boundary: now, or after
        the write in progress (the writer task's `send` takes it along)."""
        self._control.append(data)
        if self._dirty or self._lock.locked():
            return
        async with self._lock:
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._write_control()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _Closed from None

    async def _write_control(self) -> None:
        while self._control and not self._dirty:
            data = b"".join(self._control)
            self._control.clear()
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        """Says goodbye (close code 1000) if nobody has yet, waits (briefly)
        for the client's goodbye, so that closing the socket cannot reset
        what was sent before it, and closes."""
        self.send_now = None
        ws = self.ws
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                if ws.state is ConnectionState.OPEN:
                    await self._send_control(ws.send(CloseConnection(code=1000)))
                while ws.state is ConnectionState.LOCAL_CLOSING and not self._dirty:
                    data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
                    ws.receive_data(data or None)
                    for _ in ws.events():
                        pass
        except (_Closed, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


def _header_size(header: bytearray) -> int:
    """The size of the frame header that begins with `header` (2 until known)."""
    if len(header) < 2:
        return 2
    length = header[1] & 0x7F
    return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if header[1] & 0x80 else 0)


async def _read_request(stream: trio.abc.Stream, ws: WSConnection, max_request: int
                        ) -> bytes | None:
    """The bytes of the upgrade request and any after it; None if the client
    went away, or sent too much (then it is told so)."""
    buffer = b""
    end = -1
    while end < 0 and len(buffer) <= max_request:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        buffer += bytes(data)
        end = buffer.find(b"\r\n\r\n")
    # The whole head counts, however many reads brought it.
    if end < 0 or end + 4 > max_request:
        await _refuse(stream, ws, 431, "request headers too large")
        return None
    return buffer


async def _upgrade(stream: trio.abc.Stream, peer: str, remote: Peer,
                   settings: WebSocketSettings, fd: int | None) -> WebSocketTransport | None:
    """Reads the upgrade request and accepts it, or refuses it (and None)."""
    ws = WSConnection(ConnectionType.SERVER)
    buffer = await _read_request(stream, ws, settings.max_request)
    if buffer is None:
        return None
    end = buffer.index(b"\r\n\r\n") + 4
    # Only the request goes to the handshake: what follows it is frames.
    try:
        ws.receive_data(buffer[:end])
        request = next((e for e in ws.events() if isinstance(e, Request)), None)
    except HandshakeError as exc:
        await _refuse(stream, ws, 400, f"not a WebSocket upgrade: {exc}")
        return None
    if request is None:
        await _refuse(stream, ws, 400, "not a WebSocket upgrade")
        return None
    headers = {k.lower(): v for k, v in request.extra_headers}
    origin = headers.get(b"origin")
    reason = check_browser(None if origin is None else origin.decode("latin-1"), request.host,
                           settings.allowed_origins, settings.allowed_hosts)
    if reason is not None:
        log.info("%s: WebSocket refused: %s", peer, reason)
        await _refuse(stream, ws, 403, reason)
        return None
    offered = request.subprotocols
    subprotocol = next((s for s in offered if s in SUBPROTOCOLS), None)
    if offered and subprotocol is None:
        await _refuse(stream, ws, 400, f"no subprotocol in common: this daemon speaks "
                                       f"{', '.join(SUBPROTOCOLS)}")
        return None
    await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
    encoding = SUBPROTOCOLS[subprotocol] if subprotocol else Encoding.MSGPACK
    transport = WebSocketTransport(stream, ws, peer, remote, encoding, settings, fd)
    transport._pending = buffer[end:]
    return transport


async def _refuse(stream: trio.abc.Stream, ws: WSConnection, status: int, reason: str) -> None:
    body = reason.encode() + b"\n"
    try:
        data = ws.send(RejectConnection(
            status_code=status, has_body=True,
            headers=[(b"content-type", b"text/plain; charset=utf-8"),
                     (b"content-length", str(len(body)).encode())]))
        data += ws.send(RejectData(data=body))
    except Exception:  # the handshake is too broken to answer in HTTP
        return
    with trio.move_on_after(CLOSE_TIMEOUT):
        await stream.send_all(data)


async def serve_ws(handler: Handler, host: str, port: int, settings: WebSocketSettings, *,
                   ssl_context: ssl.SSLContext | None, handler_nursery: trio.Nursery,
                   limits: PeerLimits,
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
        raise listen_error(exc, host, port) from None

    async def connection(stream: trio.abc.Stream) -> None:
        peer, remote = _ws_peer(stream)
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None

        async def refuse() -> None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                ws = WSConnection(ConnectionType.SERVER)
                if await _read_request(stream, ws, settings.max_request) is not None:
                    await _refuse(stream, ws, 503, "the daemon has as many connections as it may")

        async def run() -> None:
            transport = None
            with trio.move_on_after(settings.handshake_timeout):
                transport = await _upgrade(stream, peer, remote, settings, fd)
            if transport is not None:
                await handler(transport)

        # A refused client is read and answered too, and may reset (or fail
        # its TLS handshake) meanwhile: that runs alone as well.
        if not limits.admit_connection(remote):
            await run_alone(peer, refuse)
            return
        try:
            await run_alone(peer, run)
        finally:
            limits.release_connection(remote)

    task_status.started(_tcp_socket(listeners[0]).getsockname()[1])
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(partial(accept_loop, listener, _tcp_socket(listener),
                                       connection, handler_nursery, name="ws"))


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
