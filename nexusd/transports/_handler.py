"""One client connection: the handshake, then requests in, replies and events out.

The reader task turns bytes into protocol events and hands each request to the
registry (daemon-wide requests) or to the session's actor, without waiting
for the answer: actors reply straight into the connection's `Outbox`, which
the writer task drains. A connection may have at most `max_in_flight`
requests unanswered; past that the reader stops reading, and the client's
own writes block (backpressure down to the socket).
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Protocol

import trio
from nexus_protocol import (
    NEED_DATA,
    Analytics,
    Connection,
    ConnectionClosed,
    Create,
    Error,
    ErrorCode,
    Framing,
    Hello,
    ListSessions,
    Message,
    Ping,
    Pong,
    RemoteProtocolError,
    Report,
    Run,
    Sessions,
    Shutdown,
    Side,
    Stats,
    Welcome,
)

from ._actor import Caller, Disconnect, Envelope
from ._errors import RequestError
from ._outbox import Outbox

if TYPE_CHECKING:
    from ._daemon import Daemon

__all__ = ["ConnectionHandler", "Transport"]

log = logging.getLogger("nexusd.connection")

_ids = itertools.count(1)


class Transport(Protocol):
    """What a transport adapter provides: whole frames out, bytes in."""

    kind: str  # "unix" or "websocket"
    framing: Framing
    peer: str
    admin: bool  # the peer is the daemon's own user (Unix socket)

    async def receive(self) -> bytes:
        """The next bytes (STREAM) or message (MESSAGE); b"" at the end."""

    async def send(self, frames: list[bytes]) -> None:
        """Writes `frames` in order."""

    # Optionally, `send_now(data: bytes) -> int`: writes what the medium takes
    # without waiting and returns how much that was (see `Outbox`).

    async def aclose(self) -> None: ...


class ConnectionHandler:
    def __init__(self, daemon: Daemon, transport: Transport) -> None:
        self.daemon = daemon
        self.transport = transport
        self.config = daemon.config
        self.conn = Connection(Side.SERVER, framing=transport.framing, limits=daemon.limits)
        self.outbox = Outbox(self.conn, max_frames=self.config.queue_size,
                             send_now=getattr(transport, "send_now", None),
                             flusher=daemon.flusher)
        self.connection_id = f"c{next(_ids)}"
        self.caller: Caller | None = None
        self.draining = False
        self._cancel = trio.CancelScope()

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
                        self._detach_all()
                        self.outbox.close()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to tell anyone
        finally:
            self._detach_all()
            self.outbox.detach()
            with trio.move_on_after(1, shield=True):
                await t.aclose()

    def shutdown(self, reason: str) -> None:
        """Says `shutdown` to the client; in-flight requests still complete."""
        if self.draining:
            return
        self.draining = True
        if self.caller is None:
            self._cancel.cancel()
            return
        self.outbox.reply(Shutdown(reason=reason, retry_after=1.0))
        self.outbox.close_when_answered()

    def abort(self) -> None:
        self._cancel.cancel()

    async def _handshake(self) -> Hello | None:
        with trio.move_on_after(self.config.handshake_timeout):
            while True:
                try:
                    event = self.conn.next_event()
                    if event is NEED_DATA:
                        # With message framing, an oversized message is refused here.
                        self.conn.receive_data(await self.transport.receive())
                        continue
                except RemoteProtocolError as exc:
                    await self._refuse(exc.code, exc.message)
                    return None
                if isinstance(event, ConnectionClosed):
                    return None
                assert isinstance(event, Hello)
                break
            admin = self.transport.admin
            if event.credential is not None and self.daemon.check_admin_key(event.credential):
                admin = True
            elif event.credential is not None:
                await self._refuse(ErrorCode.UNAUTHORIZED, "the admin credential is not valid")
                return None
            if self.draining:
                await self._refuse(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
                return None
            self.caller = Caller(self.connection_id, event.channel, event.client, admin,
                                 self.outbox)
            await self.transport.send([self.conn.send(Welcome(
                version=self.conn.version or 1, server=self.daemon.server_name,
                connection_id=self.connection_id, admin=admin,
                max_frame=self.daemon.limits.max_frame))])
            return event
        log.info("%s: no hello within %gs; closing", self.connection_id,
                 self.config.handshake_timeout)
        return None

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        log.info("%s: refused: %s", self.connection_id, message)
        with trio.move_on_after(1):
            await self.transport.send([self.conn.send(Error(code=code.value, message=message))])

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                frames = await self.outbox.wait_frames()
                if not frames:
                    break
                with trio.fail_after(self.config.write_timeout):
                    await self.transport.send(frames)
                self.outbox.sent()
        except trio.TooSlowError:
            log.info("%s: client stopped reading for %gs; closing", self.connection_id,
                     self.config.write_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The client is gone or the outbox is closed and flushed: stop reading.
        scope.cancel()

    async def _read_loop(self) -> None:
        conn, outbox = self.conn, self.outbox
        while True:
            try:
                event = conn.next_event()
                if event is NEED_DATA:
                    # With message framing, an oversized message is refused here.
                    conn.receive_data(await self.transport.receive())
                    continue
            except RemoteProtocolError as exc:
                if exc.fatal or exc.request_id is None:
                    log.info("%s: protocol error: %s", self.connection_id, exc.message)
                    outbox.reply(Error(code=exc.code.value, message=exc.message))
                    return
                outbox.reply(Error(id=exc.request_id, code=exc.code.value, message=exc.message))
                continue
            if isinstance(event, ConnectionClosed):
                return
            await outbox.wait_reply_capacity(self.config.max_in_flight)
            await self._dispatch(event)

    def _detach_all(self) -> None:
        caller = self.caller
        if caller is None:
            return
        for sid in list(caller.subscriptions):
            actor = self.daemon.registry.active(sid)
            if actor is not None:
                actor.send_nowait(Envelope(Disconnect(self.connection_id)))
        caller.subscriptions.clear()

    # ------------------------------------------------------------ dispatching

    async def _dispatch(self, req: Message) -> None:
        caller = self.caller
        assert caller is not None
        rid: int = req.id  # type: ignore[attr-defined]
        try:
            if self.draining:
                raise RequestError(ErrorCode.UNAVAILABLE, "the daemon is shutting down",
                                   retry_after=1.0)
            session_id = getattr(req, "session_id", None)
            if isinstance(req, Run):
                raise RequestError(ErrorCode.UNAVAILABLE,
                                   "workflow execution is not available in this daemon")
            if session_id is not None:
                await self.daemon.registry.submit(session_id, Envelope(req, caller),
                                                  self.config.busy_timeout)
                return
            self.outbox.reply(await self._serve_daemon(caller, req))
        except RequestError as exc:
            self.outbox.reply(exc.reply(rid))
        except Exception:
            log.exception("%s: request %s failed", self.connection_id, req.TAG)
            self.outbox.reply(Error(id=rid, code=ErrorCode.INTERNAL.value,
                                    message="internal error; see the daemon's log"))

    async def _serve_daemon(self, caller: Caller, req: Message) -> Message:
        if isinstance(req, Ping):
            return Pong(id=req.id)
        if isinstance(req, Create):
            return await self.daemon.registry.create(caller, req)
        if not caller.admin:
            raise RequestError(ErrorCode.FORBIDDEN,
                               f"{req.TAG!r} needs the admin credential")
        if isinstance(req, Stats):
            return Report(id=req.id, report=await self.daemon.stats())
        if isinstance(req, Analytics):
            return Report(id=req.id, report=self.daemon.analytics())
        if isinstance(req, ListSessions):
            limit = min(req.limit or 100, 1000)
            metas = await self.daemon.store.list_sessions(req.after, limit + 1)
            page = metas[:limit]
            registry = self.daemon.registry
            sessions = [{"session_id": m.session_id, "created_at": m.created_at,
                         "expires_at": m.expires_at, "idle_expires_at": m.idle_expires_at,
                         "active": registry.active(m.session_id) is not None} for m in page]
            after = page[-1].session_id if len(metas) > limit else None
            return Sessions(id=req.id, sessions=sessions, after=after)
        raise RequestError(ErrorCode.BAD_REQUEST, f"unexpected {req.TAG!r}")
