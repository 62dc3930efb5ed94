"""The msgpack channel adapter: one client connection over a `Transport`.

The handshake makes the connection's `Principal`; then the reader task turns
bytes into protocol events and hands each request to the session service
with the connection's `Outbox` as its reply sink, without waiting for the
answer: actors reply straight into the outbox, which is written with their
batch (or by the writer task). A connection may have at most
`max_in_flight` requests unanswered; past that the reader stops reading, and
the client's own writes block (backpressure down to the socket).

Time bounds a client: a frame that has begun must be complete within
`read_timeout`, and a connection with no subscription and no request in
flight is closed after `idle_timeout`. Its protocol errors are counted and
logged through the daemon's `PeerLimits`, at a bounded rate.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
from nexus_protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Encoding,
    Error,
    ErrorCode,
    Framing,
    Hello,
    Limits,
    Message,
    RemoteProtocolError,
    Shutdown,
    Side,
    Welcome,
)

from .._limits import LimitSettings, Peer, PeerLimits
from .._principal import Principal
from .._service import SessionService
from ._outbox import Flusher, Outbox

__all__ = ["ConnectionHandler", "ConnectionSettings", "Transport"]

log = logging.getLogger("nexusd.connection")

_ids = itertools.count(1)


class Transport(Protocol):
    """What a transport adapter provides: whole frames out, bytes in."""

    kind: str  # "unix" or "websocket"
    framing: Framing
    encoding: Encoding
    peer: str  # for logs
    remote: Peer  # for limits
    admin: bool  # the peer is the daemon's own user (Unix socket)

    async def receive(self) -> bytes:
        """The next bytes (STREAM) or message (MESSAGE); b"" at the end."""

    async def send(self, frames: list[bytes]) -> None:
        """Writes `frames` in order."""

    # Optionally, `wrap(frame: bytes) -> bytes`: the bytes that carry a frame
    # of the `Connection` on the medium (a WebSocket frame), made as the frame
    # is queued; `send` and `send_now` then take wrapped frames.
    # Optionally, `send_now(data: bytes) -> int`: writes what the medium takes
    # without waiting and returns how much that was (see `Outbox`).

    async def aclose(self) -> None: ...


@attrs.frozen
class ConnectionSettings:
    """What a connection is bounded by; `check_admin_key(credential)` and
    `check_create_key(credential)` tell whether a hello's credential is the
    daemon's admin key or its create key; `require_create_key` whether a
    network client needs the create key to create sessions."""

    server_name: str
    limits: Limits
    check_admin_key: Callable[[str], bool]
    queue_size: int
    max_in_flight: int
    handshake_timeout: float
    write_timeout: float
    peer_limits: PeerLimits = attrs.field(factory=lambda: PeerLimits(LimitSettings()))
    check_create_key: Callable[[str], bool] = lambda credential: False
    require_create_key: bool = False
    queue_bytes: int = 8 << 20
    read_timeout: float = 30.0
    idle_timeout: float | None = None


class _Closing(Exception):
    """The connection ends: `message` says why, to the client and the log."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConnectionHandler:
    def __init__(self, service: SessionService, settings: ConnectionSettings,
                 flusher: Flusher, transport: Transport) -> None:
        self.service = service
        self.settings = settings
        self.transport = transport
        self.conn = Connection(Side.SERVER, framing=transport.framing,
                               encoding=transport.encoding, limits=settings.limits)
        self._wrap = getattr(transport, "wrap", None)
        self.outbox = Outbox(self.conn, max_frames=settings.queue_size,
                             max_bytes=settings.queue_bytes,
                             send_now=getattr(transport, "send_now", None),
                             flusher=flusher, wrap=self._wrap)
        self.connection_id = f"c{next(_ids)}"
        self.principal: Principal | None = None
        self.draining = False
        self._cancel = trio.CancelScope()
        self._frame_started: float | None = None  # a frame began and is not complete
        self._last_request = trio.current_time()

    # --------------------------------------------------------------- driving

    async def run(self) -> None:
        t = self.transport
        try:
            with self._cancel:
                hello = await self._handshake()
                if hello is None:
                    return
                log.debug("%s: %s connection from %s (channel %s, client %r)",
                          self.connection_id, t.kind, t.peer, hello.channel, hello.client)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    try:
                        await self._read_loop()
                    finally:
                        await self._detach_all()
                        self.outbox.close()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to tell anyone
        finally:
            await self._detach_all()
            self.outbox.detach()
            with trio.move_on_after(1, shield=True):
                await t.aclose()

    def shutdown(self, reason: str) -> None:
        """Says `shutdown` to the client; in-flight requests still complete."""
        if self.draining:
            return
        self.draining = True
        if self.principal is None:
            self._cancel.cancel()
            return
        self.outbox.reply(Shutdown(reason=reason, retry_after=1.0))
        self.outbox.close_when_answered()

    def abort(self) -> None:
        self._cancel.cancel()

    async def _handshake(self) -> Hello | None:
        settings = self.settings
        with trio.move_on_after(settings.handshake_timeout):
            while True:
                try:
                    event = self.conn.next_event()
                    if event is NEED_DATA:
                        # With message framing, an oversized message is refused here.
                        self.conn.receive_data(await self.transport.receive())
                        continue
                except RemoteProtocolError as exc:
                    await self._refuse(exc.code, exc.message, protocol_error=True)
                    return None
                if isinstance(event, ConnectionClosed):
                    return None
                assert isinstance(event, Hello)
                break
            remote = self.transport.remote
            admin = self.transport.admin
            may_create = not (settings.require_create_key and remote.network)
            if event.credential is not None and settings.check_admin_key(event.credential):
                admin = True
            elif event.credential is not None and settings.check_create_key(event.credential):
                may_create = True
            elif event.credential is not None:
                await self._refuse(ErrorCode.UNAUTHORIZED, "the credential is not valid",
                                   protocol_error=True)
                return None
            if self.draining:
                await self._refuse(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
                return None
            self.principal = Principal(self.connection_id, event.channel, event.client, admin,
                                       peer=remote, may_create=may_create or admin)
            await self._send(Welcome(
                version=self.conn.version or 1, server=settings.server_name,
                connection_id=self.connection_id, admin=admin,
                max_frame=settings.limits.max_frame))
            return event
        log.info("%s: no hello within %gs; closing", self.connection_id,
                 settings.handshake_timeout)
        return None

    async def _refuse(self, code: ErrorCode, message: str, *,
                      protocol_error: bool = False) -> None:
        if protocol_error:
            self.settings.peer_limits.protocol_error(self.transport.remote, self.connection_id,
                                                     f"refused: {message}")
        else:
            log.info("%s: refused: %s", self.connection_id, message)
        with trio.move_on_after(1):
            await self._send(Error(code=code.value, message=message))

    async def _send(self, message: Message) -> None:
        frame = self.conn.send(message)
        await self.transport.send([frame if self._wrap is None else self._wrap(frame)])

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                frames = await self.outbox.wait_frames()
                if not frames:
                    break
                with trio.fail_after(self.settings.write_timeout):
                    await self.transport.send(frames)
                self.outbox.sent()
        except trio.TooSlowError:
            log.info("%s: client stopped reading for %gs; closing", self.connection_id,
                     self.settings.write_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The client is gone or the outbox is closed and flushed: stop reading.
        scope.cancel()

    async def _receive(self) -> bytes:
        """The transport's next bytes, within the connection's time bounds.

        Raises:
            _Closing: a frame begun `read_timeout` ago is still incomplete, or
                the connection sat idle, unsubscribed, for `idle_timeout`.
        """
        conn, settings = self.conn, self.settings
        if conn.buffered:
            if self._frame_started is None:
                self._frame_started = trio.current_time()
            with trio.move_on_at(self._frame_started + settings.read_timeout):
                return await self.transport.receive()
            raise _Closing(ErrorCode.BAD_REQUEST,
                           f"a frame was begun and not completed within "
                           f"{settings.read_timeout:g} s")
        self._frame_started = None
        idle = settings.idle_timeout
        if idle is None:
            return await self.transport.receive()
        while True:
            with trio.move_on_at(self._last_request + idle):
                return await self.transport.receive()
            principal = self.principal
            if principal is None or not (principal.subscriptions or conn.in_flight):
                raise _Closing(ErrorCode.UNAVAILABLE,
                               f"closing a connection with no subscription that sent "
                               f"nothing for {idle:g} s")
            # Watching, or waiting for an answer: not idle; look again later.
            self._last_request = trio.current_time()

    async def _read_loop(self) -> None:
        try:
            await self._read_events()
        except _Closing as exc:
            self.settings.peer_limits.protocol_error(self.transport.remote, self.connection_id,
                                                     exc.message)
            self.outbox.reply(Error(code=exc.code.value, message=exc.message))

    async def _read_events(self) -> None:
        conn, outbox = self.conn, self.outbox
        principal, submit = self.principal, self.service.submit
        assert principal is not None
        max_in_flight = self.settings.max_in_flight
        protocol_error = self.settings.peer_limits.protocol_error
        remote = self.transport.remote
        while True:
            try:
                event = conn.next_event()
                if event is NEED_DATA:
                    # With message framing, an oversized message is refused here.
                    conn.receive_data(await self._receive())
                    continue
            except RemoteProtocolError as exc:
                protocol_error(remote, self.connection_id, exc.message)
                if exc.fatal or exc.request_id is None:
                    outbox.reply(Error(code=exc.code.value, message=exc.message))
                    return
                outbox.reply(Error(id=exc.request_id, code=exc.code.value, message=exc.message))
                continue
            if isinstance(event, ConnectionClosed):
                return
            self._frame_started = None
            self._last_request = trio.current_time()
            await outbox.wait_reply_capacity(max_in_flight)
            if self.draining:
                outbox.reply(_draining(event))
                continue
            await submit(principal, event, outbox)

    async def _detach_all(self) -> None:
        if self.principal is not None:
            await self.service.disconnect(self.principal)


def _draining(req: Message) -> Error:
    return Error(id=req.id, code=ErrorCode.UNAVAILABLE.value,  # type: ignore[attr-defined]
                 message="the daemon is shutting down", retry_after=1.0)
