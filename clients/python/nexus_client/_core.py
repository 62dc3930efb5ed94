"""The connection core of the trio client: one connection, many concurrent
callers, automatic reconnect. `AsyncClient` adds the session API on top.

Structure (one `AsyncClient` = one nursery with one background task):

* The *supervisor* task owns the connection. It connects, runs the handshake,
  then reads: every reply goes to the caller waiting on its request id, every
  event to the `Watch` of its session. When the connection ends it fails the
  requests in flight, tells the watches, sleeps (exponential backoff, full
  jitter) and connects again.
* Callers run in their own tasks: a request takes a fresh id from the
  `nexus_protocol.Connection`, registers a waiter, writes its frame under a
  lock and sleeps until the supervisor hands it the reply.

Delivery rules (the contract tests rely on):

* A request in flight when the connection drops fails with `ConnectionLost`;
  it is never re-sent, because the daemon may have applied it. A request
  whose frame could not be written completely cannot have been applied, so it
  goes to the next connection (when reconnecting is on). Requests made
  while the client is reconnecting wait for the new connection (bounded by
  `request_timeout`) and fail with `ConnectionLost` if the client gives up.
* After the daemon announced `shutdown`, requests go to the next connection.
  A request answered `unavailable` by a draining daemon was not applied, so it
  is sent again on the next connection (at most twice).
* The first connection is made once, without retries: `CannotConnect`
  propagates out of ``async with``.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Final, Self, TypeVar

import attrs
import trio
from nexus_protocol import (
    DEFAULT_LIMITS,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Hello,
    Limits,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Role,
    SessionEvent,
    Shutdown,
    Side,
    Welcome,
)

from ._backoff import Backoff
from ._errors import (
    BadRequest,
    CannotConnect,
    ConnectionLost,
    NexusError,
    ProtocolError,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
    error_from_reply,
)
from ._link import _Link, _Pending, _Subscriber
from ._transport import Target, Transport, open_transport
from ._types import SessionState

__all__ = ["DEFAULT_CLIENT_NAME", "ClientStatistics"]

DEFAULT_CLIENT_NAME: Final = "nexus-python"

#: A frame is written under a shielded deadline (a half-written frame would
#: desynchronise the stream); past it the connection is dropped.
_WRITE_TIMEOUT: Final = 10.0
#: The largest frame limit the client accepts from a daemon's welcome.
_MAX_FRAME_CAP: Final = 1 << 26
#: Handshake errors after which reconnecting cannot help.
_FATAL_HANDSHAKE: Final = (Unauthorized, UnsupportedVersion, BadRequest, TooLarge,
                           ProtocolError)

_R = TypeVar("_R", bound=Message)


@attrs.frozen
class ClientStatistics:
    """A snapshot of the client's connection state.

    Attributes:
        connected: a connection is up and accepts requests.
        connects: connections established so far (1 + successful reconnects).
        reconnect_attempts: connection attempts made after a drop.
        requests_in_flight: requests sent and not yet answered.
        watches: active `Watch` objects.
        connection_id: the daemon's id for the current connection.
        server: the daemon's name and version, from its welcome.
    """

    connected: bool
    connects: int
    reconnect_attempts: int
    requests_in_flight: int
    watches: int
    connection_id: str | None
    server: str | None


def _fresh(exc: NexusError) -> NexusError:
    """A new instance of `exc`, so that one failure can be raised to many callers."""
    new = type(exc)(exc.message, code=exc.code, retry_after=exc.retry_after,
                    session_id=exc.session_id)
    new.__cause__ = exc.__cause__
    return new


def _unwrap_body_error(group: BaseExceptionGroup[BaseException],
                       body: BaseException | None) -> bool:
    """True when `group` holds nothing but the body's own exception (and the
    cancellations that came with it), which then propagates unwrapped."""
    if body is None:
        return False
    _, rest = group.split(lambda e: e is body or isinstance(e, trio.Cancelled))
    return rest is None


class _ClientCore(AbstractAsyncContextManager["_ClientCore"]):
    """Connection, reconnects and request/reply matching; see `AsyncClient`
    for the arguments."""

    def __init__(self, target: str | Target | Sequence[str | Target] | None = None, *,
                 channel: str = "api",
                 client_name: str = DEFAULT_CLIENT_NAME,
                 tokens: Mapping[str, str] | None = None, admin_key: str | None = None,
                 reconnect: bool | Backoff = True, ssl_context: ssl.SSLContext | None = None,
                 connect_timeout: float = 10.0, request_timeout: float | None = None,
                 watch_buffer: int = 256, limits: Limits = DEFAULT_LIMITS) -> None:
        if watch_buffer < 1:
            raise ValueError("watch_buffer must be at least 1")
        if isinstance(target, (list, tuple)):
            if not target:
                raise ValueError("no endpoint given")
            self.endpoints = tuple(Target.parse(t) for t in target)
        else:
            self.endpoints = (Target.parse(target),)  # type: ignore[arg-type]
        # The endpoint in use (or last tried): the first that answers, in order.
        self.target = self.endpoints[0]
        self.channel = channel
        self.client_name = client_name
        self._tokens: dict[str, str] = dict(tokens or {})
        self._admin_key = admin_key
        self._backoff: Backoff | None = (Backoff() if reconnect is True
                                         else reconnect if isinstance(reconnect, Backoff)
                                         else None)
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._watch_buffer = watch_buffer
        self._limits = limits
        self._link: _Link | None = None
        self._link_changed: trio.Event | None = None
        self._watches: dict[str, _Subscriber] = {}
        # Takes `dispatch` events and a worker's `result` (cancelled) events.
        self._worker_events: Callable[[Message], None] | None = None
        # Session id -> listeners of the `progress`/`result` events of runs
        # this client asked for.
        self._run_events: dict[str, list[Callable[[Message], None]]] = {}
        self._detaching: dict[str, trio.Event] = {}
        self._failure: NexusError | None = None
        self._entered = False
        self._closed = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._generation = 0
        self._connects = 0
        self._reconnect_attempts = 0
        self._welcome: Welcome | None = None
        # session id -> its state as last read whole (for `continue_session`).
        self._last_synced: OrderedDict[str, SessionState] = OrderedDict()

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        """Connects (once, without retrying).

        Raises:
            CannotConnect: the daemon is not reachable.
            Unauthorized: the admin key was refused.
            UnsupportedVersion: no common protocol version.
        """
        if self._entered:
            raise RuntimeError("a client can be entered only once")
        self._entered = True
        self._link_changed = trio.Event()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            await self._nursery.start(self._supervise)
        except BaseException as exc:
            self._closed = True
            self._nursery.cancel_scope.cancel()
            try:
                await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                if not _unwrap_body_error(group, exc):
                    raise
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._begin_close()
        assert self._nursery_cm is not None
        try:
            await self._nursery_cm.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The body's exception arrives wrapped by the nursery; returning
            # lets Python re-raise it as the caller wrote it.
            if not _unwrap_body_error(group, exc):
                raise

    def _begin_close(self) -> None:
        """Marks the client closed and cancels its background task; from now on
        every call raises `trio.ClosedResourceError`."""
        if self._closed:
            return
        self._closed = True
        closed = trio.ClosedResourceError("the client is closed")
        for watch in list(self._watches.values()):
            watch._on_client_failed(closed)
        self._notify()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ inspection

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.usable

    @property
    def connection_id(self) -> str | None:
        """The daemon's id of the current (or last) connection."""
        return self._welcome.connection_id if self._welcome else None

    @property
    def server(self) -> str | None:
        """The daemon's name and version, from its welcome."""
        return self._welcome.server if self._welcome else None

    @property
    def is_admin(self) -> bool:
        """True when the daemon granted this connection admin rights."""
        return bool(self._welcome and self._welcome.admin)

    def statistics(self) -> ClientStatistics:
        link = self._link
        return ClientStatistics(
            connected=self.connected, connects=self._connects,
            reconnect_attempts=self._reconnect_attempts,
            requests_in_flight=len(link.pending) if link else 0,
            watches=len(self._watches), connection_id=self.connection_id,
            server=self.server)

    async def wait_connected(self) -> None:
        """Waits until a connection accepts requests.

        Raises:
            ConnectionLost: the client gave up reconnecting.
            trio.ClosedResourceError: the client is closed.
        """
        await self._wait_link()

    # ---------------------------------------------------------------- tokens

    def token_for(self, session_id: str) -> str | None:
        """The token the client holds for `session_id`, if any."""
        return self._tokens.get(session_id)

    def set_token(self, session_id: str, token: str) -> None:
        """Uses `token` for `session_id` from now on."""
        self._tokens[session_id] = token

    def forget_token(self, session_id: str) -> None:
        self._tokens.pop(session_id, None)

    def _token(self, session_id: str, token: str | None) -> str | None:
        return token if token is not None else self._tokens.get(session_id)

    # ------------------------------------------------------ request machinery

    async def _request(self, build: Callable[[int], Message], expect: type[_R], *,
                       session_id: str | None = None,
                       on_reply: Callable[[_Link, Message], None] | None = None) -> _R:
        timeout = self._request_timeout
        if timeout is None:
            return await self._roundtrip(build, expect, session_id, on_reply)
        try:
            with trio.fail_after(timeout):
                return await self._roundtrip(build, expect, session_id, on_reply)
        except trio.TooSlowError:
            raise Timeout(f"no reply from the daemon within {timeout:g}s",
                          session_id=session_id) from None

    async def _roundtrip(self, build: Callable[[int], Message], expect: type[_R],
                         session_id: str | None,
                         on_reply: Callable[[_Link, Message], None] | None) -> _R:
        resends = 0
        while True:
            link = await self._wait_link()
            rid = link.conn.next_request_id()
            request = build(rid)
            pending = _Pending(on_reply=on_reply)
            link.pending[rid] = pending
            try:
                if not await self._send(link, request, session_id):
                    continue  # the link stopped taking requests: use the next one
                await pending.done.wait()
            finally:
                link.pending.pop(rid, None)
            if pending.failure is not None:
                pending.failure.session_id = session_id
                raise pending.failure
            reply = pending.reply
            if isinstance(reply, Error):
                err = error_from_reply(reply, session_id)
                if (isinstance(err, Unavailable) and link.draining and resends < 2
                        and self._backoff is not None):
                    # It crossed the daemon's shutdown: not applied, safe to resend.
                    resends += 1
                    continue
                raise err
            if not isinstance(reply, expect):
                assert reply is not None
                raise ProtocolError(f"the daemon answered {request.TAG!r} with {reply.TAG!r}",
                                    session_id=session_id)
            return reply

    async def _send(self, link: _Link, message: Message, session_id: str | None) -> bool:
        """Writes `message`; False if it was not sent and may go on the next
        connection: `link` no longer takes requests, or the write failed. A
        frame that was not completely written cannot have been applied, so
        resending it is safe.

        Raises:
            BadRequest, TooLarge: the codec refused the message; nothing was sent.
            ConnectionLost: the write failed and the client does not reconnect,
                or the write timed out (the frame may have been delivered).
        """
        async with link.send_lock:
            if not link.usable:
                return False
            try:
                data = link.conn.send(message)
            except LocalProtocolError as exc:
                cls = TooLarge if exc.code is ErrorCode.TOO_LARGE else BadRequest
                raise cls(exc.message, session_id=session_id) from None
            with trio.move_on_after(_WRITE_TIMEOUT, shield=True) as scope:
                try:
                    await link.transport.send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._abort(link, ConnectionLost(f"writing to {self.target} failed: {exc}"))
                    if self._backoff is not None:
                        return False
                    raise ConnectionLost(f"connection to {self.target} lost while sending",
                                         session_id=session_id) from exc
            if scope.cancelled_caught:
                self._abort(link, ConnectionLost("the daemon stopped reading"))
                raise ConnectionLost(f"writing to {self.target} took over {_WRITE_TIMEOUT:g}s; "
                                     "the connection was dropped", session_id=session_id)
        return True

    async def _wait_link(self) -> _Link:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the client is closed")
            if self._failure is not None:
                raise _fresh(self._failure)
            link = self._link
            if link is not None and link.usable:
                return link
            assert self._link_changed is not None
            await self._link_changed.wait()

    def _notify(self) -> None:
        if self._link_changed is not None:
            self._link_changed.set()
            self._link_changed = trio.Event()

    def _can_reconnect(self) -> bool:
        return self._backoff is not None and self._failure is None and not self._closed

    def _abort(self, link: _Link, reason: NexusError) -> None:
        if link.reason is None:
            link.reason = reason
        link.closed = True  # no new request picks it while the reader winds down
        link.scope.cancel()

    # ------------------------------------------------------- watch registry

    async def _add_watch(self, watch: _Subscriber) -> None:
        sid = watch.session_id
        detaching = self._detaching.get(sid)
        if detaching is not None:
            await detaching.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the client is closed")
        if sid in self._watches:
            raise trio.BusyResourceError(f"session {sid} is already watched by this client")
        self._watches[sid] = watch

    def _remove_watch(self, watch: _Subscriber) -> None:
        if self._watches.get(watch.session_id) is watch:
            del self._watches[watch.session_id]

    # ------------------------------------------------------------ supervisor

    async def _supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        started = False
        # Consecutive failures: attempts that did not connect, and connections
        # the daemon broke with a protocol violation (so that a daemon that
        # always does is not hammered).
        failures = 0
        retry_after: float | None = None
        last: NexusError | None = None
        while True:
            try:
                async with self._open_first() as link:
                    self._install(link)
                    if not started:
                        started = True
                        task_status.started()
                    try:
                        with link.scope:
                            await self._read_loop(link)
                    finally:
                        self._uninstall(link)
                    retry_after, last = link.retry_after, link.reason
                    failures = failures + 1 if isinstance(last, ProtocolError) else 0
            except NexusError as exc:
                if not started:
                    raise
                failures += 1
                retry_after, last = exc.retry_after, exc
                if isinstance(exc, _FATAL_HANDSHAKE):
                    self._fail(exc)
                    return
            if self._closed:
                return
            backoff = self._backoff
            if backoff is None:
                self._fail(ConnectionLost(f"connection to {self.target} lost"
                                          + (f": {last.message}" if last else "")))
                return
            if backoff.gives_up_after(failures):
                self._fail(ConnectionLost(
                    f"gave up reconnecting to {self.target} after {failures} attempts"
                    + (f": {last.message}" if last else "")))
                return
            await trio.sleep(backoff.delay(failures, retry_after))
            self._reconnect_attempts += 1

    @asynccontextmanager
    async def _open_first(self) -> AsyncIterator[_Link]:
        """A connection to the first endpoint, in order, that connects and
        answers the handshake; `target` says which.

        Raises:
            CannotConnect: none did (the last endpoint's error, naming them all).
        """
        failed: list[CannotConnect] = []
        for target in self.endpoints:
            self.target = target
            stack = AsyncExitStack()
            try:
                transport = await stack.enter_async_context(open_transport(
                    target, ssl_context=self._ssl_context,
                    connect_timeout=self._connect_timeout, max_message_size=_MAX_FRAME_CAP))
                link = await self._handshake(transport)
            except CannotConnect as exc:
                await stack.aclose()
                failed.append(exc)
                continue
            except BaseException:
                await stack.aclose()
                raise
            async with stack:
                yield link
            return
        self.target = self.endpoints[0]
        if len(failed) == 1:
            raise failed[0]
        raise CannotConnect("no endpoint answered: " + "; ".join(e.message for e in failed))

    async def _handshake(self, transport: Transport) -> _Link:
        conn = Connection(Side.CLIENT, framing=transport.framing, limits=self._limits)
        hello = Hello(versions=list(PROTOCOL_VERSIONS), channel=self.channel,
                      client=self.client_name, credential=self._admin_key)
        try:
            with trio.fail_after(self._connect_timeout):
                await transport.send(conn.send(hello))
                while True:
                    event = conn.next_event()
                    if event is NEED_DATA:
                        conn.receive_data(await transport.receive())
                        continue
                    if isinstance(event, ConnectionClosed):
                        raise CannotConnect(
                            f"{self.target} closed the connection during the handshake")
                    if isinstance(event, Welcome):
                        break
                    if isinstance(event, Error):
                        raise error_from_reply(event)
                    raise ProtocolError(f"expected a welcome, got {event.TAG!r}")
        except trio.TooSlowError:
            raise CannotConnect(f"no welcome from {self.target} within "
                                f"{self._connect_timeout:g}s") from None
        except RemoteProtocolError as exc:
            cls = UnsupportedVersion if exc.code is ErrorCode.UNSUPPORTED_VERSION else ProtocolError
            raise cls(exc.message) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise CannotConnect(f"connection to {self.target} failed during the handshake: "
                                f"{exc}") from exc
        if 0 < event.max_frame <= _MAX_FRAME_CAP:
            conn.limits = attrs.evolve(conn.limits, max_frame=event.max_frame)
        self._generation += 1
        return _Link(conn=conn, transport=transport, welcome=event, generation=self._generation)

    def _install(self, link: _Link) -> None:
        self._link = link
        self._welcome = link.welcome
        self._connects += 1
        self._notify()

    def _uninstall(self, link: _Link) -> None:
        link.closed = True
        if self._link is link:
            self._link = None
        if link.reason is None:
            link.reason = ConnectionLost(f"connection to {self.target} closed")
        for pending in list(link.pending.values()):
            if pending.reply is None:
                pending.failure = self._lost(link)
                pending.done.set()
        link.pending.clear()
        for watch in list(self._watches.values()):
            watch._on_link_lost(link)
        self._notify()

    def _lost(self, link: _Link) -> NexusError:
        reason = link.reason
        if isinstance(reason, ProtocolError):
            return ProtocolError(reason.message)
        text = reason.message if reason else "closed"
        return ConnectionLost(f"the connection dropped before the reply arrived ({text}); "
                              "the request may or may not have been applied")

    def _fail(self, exc: NexusError) -> None:
        """Gives up: every waiting and future call raises `exc`."""
        self._failure = exc
        for watch in list(self._watches.values()):
            watch._on_client_failed(exc)
        self._notify()

    async def _read_loop(self, link: _Link) -> None:
        """Reads until the connection ends; sets `link.reason` to why."""
        conn = link.conn
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await link.transport.receive())
                    continue
                if isinstance(event, ConnectionClosed):
                    if link.reason is None:
                        link.reason = ConnectionLost(f"{self.target} closed the connection")
                    return
                self._dispatch(link, event)
        except RemoteProtocolError as exc:
            link.reason = ProtocolError(f"the daemon broke the protocol: {exc.message}")
        except ProtocolError as exc:
            link.reason = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if link.reason is None:
                link.reason = ConnectionLost(f"connection to {self.target} lost: {exc}")

    def _dispatch(self, link: _Link, message: Message) -> None:
        if isinstance(message, Shutdown):
            link.draining = True
            link.retry_after = message.retry_after
            link.reason = Unavailable(f"the daemon is shutting down: {message.reason}"
                                      if message.reason else "the daemon is shutting down",
                                      retry_after=message.retry_after)
            self._notify()
            return
        if isinstance(message, Error) and message.id is None:
            # The daemon is closing this connection and says why.
            link.draining = True
            link.retry_after = message.retry_after
            link.reason = error_from_reply(message)
            self._notify()
            return
        if message.ROLE is Role.REPLY:
            pending = link.pending.get(getattr(message, "id", -1))
            if pending is None:
                return  # its caller was cancelled; nobody waits for it
            if pending.on_reply is not None:
                pending.on_reply(link, message)
            pending.reply = message
            pending.done.set()
            return
        if isinstance(message, SessionEvent):
            tag = message.TAG
            if tag in ("dispatch", "result") and self._worker_events is not None:
                self._worker_events(message)
            if tag in ("progress", "result"):
                for listener in self._run_events.get(message.session_id, ()):
                    listener(message)
            watch = self._watches.get(message.session_id)
            if watch is not None:
                watch._deliver(link, message)

