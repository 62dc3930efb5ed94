"""A small test client over `nexus_protocol.Connection`, for the daemon's tests.

It speaks the protocol at the message level and hides nothing the tests want to
check: every reply and every pushed event comes back as the message the daemon
sent. One background task per connection reads whatever arrives; replies are
matched to their request by id and events are buffered in arrival order, so a
test may wait for a reply while events pile up, and several tasks may share
one client. Every wait runs under `trio.fail_after`: a daemon that never
answers fails the test instead of hanging it.

Raw bytes (`send_raw`) let a test send what no well-behaved client would.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import nexus_protocol as p
import trio
from trio.testing import MockClock
from trio_websocket import ConnectionClosed as WSClosed
from trio_websocket import WebSocketConnection, wrap_client_stream

from nexusd import Config, Daemon, MemoryStore

__all__ = [
    "TIMEOUT",
    "ClientClosed",
    "RawClient",
    "connect_unix",
    "connect_ws",
    "make_config",
    "real_time_passing",
    "run_daemon",
    "trio_wall",
]

#: Hard bound on any single wait (virtual seconds under `autojump_clock`).
TIMEOUT = 10.0

M = TypeVar("M", bound=p.Message)


class ClientClosed(Exception):
    """The daemon closed the connection while the test was waiting on it."""


class _Transport(Protocol):
    framing: p.Framing
    encoding: p.Encoding

    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _UnixTransport:
    framing = p.Framing.STREAM
    encoding = p.Encoding.MSGPACK

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        await self.stream.aclose()


class _WSTransport:
    """With the `nexus.v1.json` subprotocol, bodies are JSON in text messages."""

    framing = p.Framing.MESSAGE

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.encoding = (p.Encoding.JSON if ws.subprotocol == "nexus.v1.json"
                         else p.Encoding.MSGPACK)

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data.decode() if self.encoding is p.Encoding.JSON
                                       else data)
        except WSClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def receive(self) -> bytes:
        try:
            message = await self.ws.get_message()
        except WSClosed:
            return b""
        if self.encoding is p.Encoding.JSON:
            assert isinstance(message, str), f"the daemon sent a binary message: {message!r}"
            return message.encode()
        assert isinstance(message, bytes), f"the daemon sent a text message: {message!r}"
        return message

    async def aclose(self) -> None:
        await self.ws.aclose()


class RawClient:
    """One protocol connection to the daemon, driven by a background reader."""

    def __init__(self, transport: _Transport, nursery: trio.Nursery,
                 timeout: float = TIMEOUT) -> None:
        self.transport = transport
        #: The hard bound on each wait; wrap a call in `trio.fail_after` for a
        #: shorter one.
        self.timeout = timeout
        self.conn = p.Connection(p.Side.CLIENT, framing=transport.framing,
                                 encoding=transport.encoding,
                                 limits=p.Limits(max_frame=0xFFFF_FFFF))
        self.welcome: p.Welcome | None = None
        #: What was wrong with the daemon's bytes, if they ended the connection.
        self.protocol_error: p.RemoteProtocolError | None = None
        self._send_lock = trio.StrictFIFOLock()
        self._events_tx, self._events_rx = trio.open_memory_channel[p.Message](math.inf)
        self._replies: dict[int, p.Message] = {}
        self._waiting: dict[int, trio.Event] = {}
        self._closed = trio.Event()
        self._reading = trio.Event()
        self._reading.set()
        nursery.start_soon(self._reader)

    # -------------------------------------------------------------- reading

    async def _reader(self) -> None:
        conn = self.conn
        try:
            while True:
                try:
                    event = conn.next_event()
                except p.RemoteProtocolError as exc:
                    # The daemon broke the protocol, or cut the stream inside
                    # a frame (as it may when it aborts a connection).
                    self.protocol_error = exc
                    return
                if event is p.NEED_DATA:
                    await self._reading.wait()
                    conn.receive_data(await self.transport.receive())
                    continue
                if isinstance(event, p.ConnectionClosed):
                    return
                rid = getattr(event, "id", None)
                if event.ROLE is p.Role.REPLY and rid is not None:
                    self._replies[rid] = event
                    waiter = self._waiting.pop(rid, None)
                    if waiter is not None:
                        waiter.set()
                else:  # events, welcome, shutdown, connection-level errors
                    self._events_tx.send_nowait(event)
        finally:
            self._closed.set()
            self._events_tx.close()
            for waiter in self._waiting.values():
                waiter.set()

    @property
    def closed(self) -> bool:
        """True once the daemon has closed the connection (EOF seen)."""
        return self._closed.is_set()

    def pause_reading(self) -> None:
        """Stops taking bytes off the socket, as a client that hangs would."""
        self._reading = trio.Event()

    def resume_reading(self) -> None:
        self._reading.set()

    # -------------------------------------------------------------- sending

    def new_id(self) -> int:
        return self.conn.next_request_id()

    async def send(self, message: p.Message) -> None:
        """Sends `message` without waiting for anything."""
        async with self._send_lock:
            await self.transport.send(self.conn.send(message))

    async def send_many(self, messages: Sequence[p.Message]) -> None:
        """Sends requests back to back, in one write where the framing allows,
        without waiting for any reply."""
        frames = [self.conn.send(m) for m in messages]
        async with self._send_lock:
            if self.transport.framing is p.Framing.STREAM:
                await self.transport.send(b"".join(frames))
            else:
                for frame in frames:
                    await self.transport.send(frame)

    async def send_raw(self, data: bytes, *, stands_for: p.Message | None = None) -> None:
        """Sends bytes as they are (one WebSocket message, or raw stream bytes).

        `stands_for` is a message that the bytes take the place of: it goes
        through this side's protocol state (its bytes are dropped), so that the
        daemon's answer is expected -- a `Ping` with the id of a malformed
        request, whose error reply then counts as that request's reply; a
        `Hello`, when garbage is sent instead of the greeting.
        """
        if stands_for is not None:
            self.conn.send(stands_for)
        async with self._send_lock:
            await self.transport.send(data)

    async def hello(self, channel: str = "api", client: str = "test",
                    credential: str | None = None) -> p.Message:
        """Sends hello; the daemon's answer: `Welcome`, or an `Error` refusal."""
        await self.send(p.Hello(versions=[1], channel=channel, client=client,
                                credential=credential))
        answer = await self.next_event()
        if isinstance(answer, p.Welcome):
            self.welcome = answer
        return answer

    # -------------------------------------------------------------- waiting

    async def reply(self, rid: int) -> p.Message:
        """The reply to request `rid`, waiting for it if need be.

        Raises:
            ClientClosed: the connection ended without that reply.
        """
        with trio.fail_after(self.timeout):
            return await self._reply(rid)

    async def _reply(self, rid: int) -> p.Message:
        while rid not in self._replies:
            if self.closed:
                raise ClientClosed(f"connection closed before the reply to {rid}"
                                   f" ({self.protocol_error or 'EOF'})")
            waiter = self._waiting.setdefault(rid, trio.Event())
            await waiter.wait()
        return self._replies.pop(rid)

    def take_replies(self) -> dict[int, p.Message]:
        """Every reply received and not yet taken, by request id."""
        replies, self._replies = self._replies, {}
        return replies

    async def request(self, message: p.Message) -> p.Message:
        """Sends a request and returns its reply."""
        await self.send(message)
        return await self.reply(message.id)  # type: ignore[attr-defined]

    async def call(self, cls: type[p.Message], **fields: Any) -> p.Message:
        """`request(cls(id=<fresh id>, **fields))`."""
        return await self.request(cls(id=self.new_id(), **fields))

    async def request_many(self, messages: Sequence[p.Message]) -> list[p.Message]:
        """Pipelines `messages` (sent while replies come back); their replies
        in the same order."""
        frames = [self.conn.send(m) for m in messages]
        replies: list[p.Message] = []

        async def write() -> None:
            async with self._send_lock:
                if self.transport.framing is p.Framing.STREAM:
                    for i in range(0, len(frames), 64):
                        await self.transport.send(b"".join(frames[i:i + 64]))
                else:
                    for frame in frames:
                        await self.transport.send(frame)

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                for m in messages:
                    replies.append(await self._reply(m.id))  # type: ignore[attr-defined]
        return replies

    async def next_event(self) -> p.Message:
        """The next pushed event (or shutdown, or connection-level error).

        Raises:
            ClientClosed: the connection ended and every event was taken.
        """
        with trio.fail_after(self.timeout):
            return await self._next_event()

    async def _next_event(self) -> p.Message:
        try:
            return await self._events_rx.receive()
        except trio.EndOfChannel:
            raise ClientClosed("connection closed; no more events") from None

    async def next_of(self, cls: type[M]) -> M:
        """The next event, which must be a `cls`."""
        event = await self.next_event()
        assert isinstance(event, cls), f"expected {cls.__name__}, got {event!r}"
        return event

    async def events_until(self, done: Callable[[p.Message], bool]) -> list[p.Message]:
        """Events up to and including the first one for which `done` is true."""
        got: list[p.Message] = []
        with trio.fail_after(self.timeout):
            while True:
                event = await self._next_event()
                got.append(event)
                if done(event):
                    return got

    def pending_events(self) -> list[p.Message]:
        """Events already received and not yet taken, without waiting."""
        got = []
        while True:
            try:
                got.append(self._events_rx.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return got

    async def no_event_within(self, seconds: float) -> None:
        """Asserts that nothing is pushed for `seconds`."""
        with trio.move_on_after(seconds):
            try:
                event = await self._events_rx.receive()
            except trio.EndOfChannel:
                raise AssertionError("the connection closed") from None
            raise AssertionError(f"unexpected event {event!r}")

    async def wait_closed(self) -> list[p.Message]:
        """Waits for the daemon to close the connection; the events before it."""
        got: list[p.Message] = []
        with trio.fail_after(self.timeout):
            while True:
                try:
                    got.append(await self._events_rx.receive())
                except trio.EndOfChannel:
                    return got


@asynccontextmanager
async def _client(open_transport: Callable[[], Any], make: Callable[..., RawClient],
                  hello: bool, channel: str, client: str,
                  credential: str | None) -> AsyncIterator[RawClient]:
    async with open_transport() as transport, trio.open_nursery() as nursery:
        c = make(transport, nursery)
        if hello:
            welcome = await c.hello(channel, client, credential)
            assert isinstance(welcome, p.Welcome), f"refused: {welcome!r}"
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _unix(path: Path) -> AsyncIterator[_UnixTransport]:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_unix_socket(str(path))
    transport = _UnixTransport(stream)
    try:
        yield transport
    finally:
        await transport.aclose()


def connect_unix(path: Path, *, hello: bool = True, channel: str = "api",
                 client: str = "test", credential: str | None = None,
                 timeout: float = TIMEOUT) -> AbstractAsyncContextManager[RawClient]:
    """A client on the daemon's Unix socket, greeted (unless `hello` is False);
    `timeout` bounds each of its waits."""
    return _client(lambda: _unix(path), partial(RawClient, timeout=timeout), hello, channel,
                   client, credential)


@asynccontextmanager
async def _ws(port: int, subprotocols: Sequence[str] = ()) -> AsyncIterator[_WSTransport]:
    # The client owns its TCP stream (rather than `open_websocket_url`) because
    # trio-websocket leaves the socket open when the server closes first.
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(TIMEOUT):
                ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/",
                                              subprotocols=list(subprotocols) or None,
                                              max_message_size=1 << 24)
            try:
                yield _WSTransport(ws)
            finally:
                with trio.move_on_after(TIMEOUT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


def connect_ws(port: int, *, hello: bool = True, channel: str = "web", client: str = "test",
               credential: str | None = None, timeout: float = TIMEOUT,
               subprotocols: Sequence[str] = ()) -> AbstractAsyncContextManager[RawClient]:
    """A client on the daemon's WebSocket listener, greeted unless `hello` is False;
    `timeout` bounds each of its waits. It asks for `subprotocols`, and speaks
    JSON if the daemon chooses `nexus.v1.json`."""
    return _client(lambda: _ws(port, subprotocols), partial(RawClient, timeout=timeout), hello,
                   channel, client, credential)


# ------------------------------------------------------------------ the daemon


@contextmanager
def real_time_passing() -> Iterator[None]:
    """Under a `MockClock`, lets virtual time follow real time, without jumps.

    With `autojump_clock`, a wait on a worker thread looks like idleness, and
    virtual time would leap to the next deadline (a test's hard timeout) while
    the thread works. Inside this block it cannot; the hard timeouts still
    hold, in real seconds.
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, MockClock):
        yield
        return
    rate, threshold = clock.rate, clock.autojump_threshold
    clock.autojump_threshold, clock.rate = math.inf, 1.0
    try:
        yield
    finally:
        clock.rate, clock.autojump_threshold = rate, threshold


def make_config(data: Path, socket_dir: Path, **settings: Any) -> Config:
    """A daemon configuration for tests: a Unix socket in `socket_dir`, a
    WebSocket on a free loopback port, data in `data`, idle connections
    kept (tests let virtual hours pass), then `settings`."""
    defaults: dict[str, Any] = {
        "socket": socket_dir / "n.sock", "ws": "127.0.0.1:0", "http": None, "data": data,
        "shutdown_grace": 2.0, "durability": "memory", "idle_connection_timeout": None,
    }
    return Config(**{**defaults, **settings})


def trio_wall() -> Callable[[], float]:
    """A wall clock that moves with trio's clock (a `MockClock` in tests),
    from the real wall-clock time now: deadlines come due as virtual time
    passes."""
    offset = time.time() - trio.current_time()
    return lambda: trio.current_time() + offset


@asynccontextmanager
async def run_daemon(config: Config, *, store: MemoryStore | None = None,
                     wall: Callable[[], float] | None = None) -> AsyncIterator[Daemon]:
    """The daemon, started in-process with `nursery.start`, its wall clock
    `wall` (by default `trio_wall()`); stopped (and its run awaited, within a
    hard bound) on the way out."""
    daemon = Daemon(config, store=store, wall=wall or trio_wall())
    async with trio.open_nursery() as nursery:
        # The daemon binds its Unix socket in a worker thread (trio does, as a
        # bind touches the file system).
        with real_time_passing(), trio.fail_after(TIMEOUT):
            await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.stop()
            with trio.fail_after(config.shutdown_grace + TIMEOUT):
                await daemon.stopped.wait()
