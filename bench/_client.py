"""The client side of the bench: blocking sockets, `nexus_protocol`, and a
minimal RESP codec for Redis.

The client processes must cost little and never blame a server for their own
time: a frame's receipt time is read as soon as ``recv()`` returns, before any
parsing, and a writer's send time is read just before it encodes the frame
(the encoding is therefore inside the measured latency, the same few
microseconds for every server).

Nothing here is asynchronous: a client process waits on `select.epoll`, which
costs less per wake-up than any event loop, and measures the servers rather
than itself. Every server is reached through the same code: nexusd and the
relays speak the nexus protocol (`NexusClient`), Redis speaks RESP
(`RedisClient`).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

import attrs
import nexus_protocol as p
import wsproto
import wsproto.connection
import wsproto.events as ws_events
from nexus_protocol import NEED_DATA, Connection, Encoding, Framing, Side

from ._relay_core import split_frames

__all__ = [
    "Link",
    "NexusClient",
    "RedisClient",
    "RespError",
    "RespParser",
    "ServerError",
    "Target",
    "connect",
    "raise_nofile_limit",
    "resp_command",
    "wait_readable",
]

RECV_SIZE: Final = 256 * 1024
_HEADER: Final = struct.Struct(">I")


@attrs.frozen
class Target:
    """Where a server listens, and what it speaks.

    `proto` is "nexus" (nexusd and the relays) or "redis"; `transport` is
    "unix", "ws" (binary msgpack), "wsjson" (nexusd's `nexus.v1.json`
    subprotocol) or "tcp"; `address` a socket path or HOST:PORT.
    """

    proto: str
    transport: str
    address: str

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Target:
        return cls(d["proto"], d["transport"], d["address"])

    def to_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def _open_socket(target: Target) -> socket.socket:
    if target.transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target.address)
    else:
        host, _, port = target.address.rpartition(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Link:
    """One connection's bytes, with the framing of its transport.

    `feed` turns what ``recv()`` returned into the pieces a
    `nexus_protocol.Connection` takes (STREAM: the bytes; MESSAGE: one piece
    per WebSocket message); `bodies` turns it into whole frame bodies, for the
    paths that use the codec without a `Connection`; `frame` does the reverse.
    """

    framing: Framing
    encoding = Encoding.MSGPACK

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> bytes:
        """What the socket holds (it must be readable); b"" at EOF."""
        return self.sock.recv(RECV_SIZE)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def feed(self, data: bytes) -> list[bytes]:
        return [data]

    def bodies(self, data: bytes) -> list[bytes]:
        self._buffer += data
        return split_frames(self._buffer)

    def frame(self, body: bytes) -> bytes:
        """The bytes that carry one frame body."""
        return _HEADER.pack(len(body)) + body

    def wrap(self, data: bytes) -> bytes:
        """The bytes that carry what `Connection.send` returned."""
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class StreamLink(Link):
    framing = Framing.STREAM


class WsLink(Link):
    """A WebSocket client over a blocking socket, with wsproto (sans-I/O);
    with `json`, on the `nexus.v1.json` subprotocol (text messages)."""

    framing = Framing.MESSAGE

    def __init__(self, sock: socket.socket, host: str, *, json: bool = False) -> None:
        super().__init__(sock)
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._partial: list[Any] = []
        self.encoding = Encoding.JSON if json else Encoding.MSGPACK
        sock.sendall(self.ws.send(ws_events.Request(
            host=host, target="/", subprotocols=["nexus.v1.json"] if json else [])))
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("the server closed the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, ws_events.AcceptConnection):
                    return
                if isinstance(event, ws_events.RejectConnection):
                    raise ConnectionError(f"WebSocket rejected: {event.status_code}")

    def feed(self, data: bytes) -> list[bytes]:
        ws = self.ws
        ws.receive_data(data or None)
        out = []
        for event in ws.events():
            if isinstance(event, ws_events.BytesMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    out.append(b"".join(self._partial))
                    self._partial.clear()
            elif isinstance(event, ws_events.TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    out.append("".join(self._partial).encode())
                    self._partial.clear()
            elif isinstance(event, ws_events.Ping):
                self.sock.sendall(ws.send(event.response()))
            elif isinstance(event, ws_events.CloseConnection):
                if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(OSError):
                        self.sock.sendall(ws.send(event.response()))
                self.closed = True
        return out

    bodies = feed

    def frame(self, body: bytes) -> bytes:
        data = body.decode() if self.encoding is Encoding.JSON else body
        return self.ws.send(ws_events.Message(data=data))

    wrap = frame

    def close(self) -> None:
        if not self.closed and self.ws.state is wsproto.connection.ConnectionState.OPEN:
            with contextlib.suppress(OSError):
                self.sock.sendall(self.ws.send(ws_events.CloseConnection(code=1000)))
        self.closed = True
        self.sock.close()


def connect(target: Target) -> Link:
    sock = _open_socket(target)
    if target.transport in ("ws", "wsjson"):
        return WsLink(sock, target.address.rpartition(":")[0],
                      json=target.transport == "wsjson")
    return StreamLink(sock)


def wait_readable(fds: Sequence[int], timeout: float) -> bool:
    """True once one of `fds` is readable, False after `timeout` seconds
    (poll, not select: a client may hold thousands of descriptors)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class ServerError(Exception):
    """A server answered a setup request with an error."""


#: What the bench accepts from servers: their limits hold for what they send.
_LIMITS: Final = p.Limits(max_frame=64 << 20, max_key=1 << 16, max_depth=64, max_patch=1 << 16)


class NexusClient:
    """A nexus protocol connection (to nexusd or to a relay).

    Setup requests go through the sans-I/O `Connection` (state machine and
    all); the measured paths use the codec directly (see the module docs).
    """

    def __init__(self, target: Target, *, channel: str = "bench", client: str = "bench") -> None:
        self.target = target
        self.link = connect(target)
        self.conn = Connection(Side.CLIENT, framing=self.link.framing, limits=_LIMITS,
                               encoding=self.link.encoding)
        self.events: list[p.Message] = []
        hello = p.Hello(versions=[1], channel=channel, client=client)
        self.link.send(self.link.wrap(self.conn.send(hello)))
        welcome = self._next()
        if not isinstance(welcome, p.Welcome):
            raise ServerError(f"handshake refused: {welcome!r}")
        self.welcome = welcome

    def fileno(self) -> int:
        return self.link.fileno()

    def _next(self, timeout: float = 30.0) -> p.Message:
        deadline = time.monotonic() + timeout
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, p.ConnectionClosed):
                    raise ConnectionError("the server closed the connection")
                return event  # type: ignore[return-value]
            if not wait_readable([self.link.fileno()], max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no answer from the server")
            for piece in self.link.feed(self.link.recv() or b""):
                self.conn.receive_data(piece)
            if self.link.closed:
                self.conn.receive_data(b"")

    def request(self, message: p.Message, timeout: float = 30.0) -> p.Message:
        """Sends `message` and returns its reply; events meanwhile go to `events`."""
        self.link.send(self.link.wrap(self.conn.send(message)))
        rid = message.id  # type: ignore[attr-defined]
        while True:
            reply = self._next(timeout)
            if getattr(reply, "id", None) == rid:
                if isinstance(reply, p.Error):
                    raise ServerError(f"{reply.code}: {reply.message}")
                return reply
            self.events.append(reply)

    def pipeline(self, messages: Sequence[p.Message], window: int = 200) -> list[p.Message]:
        """Sends `messages` with at most `window` unanswered; their replies in order."""
        replies: dict[int, p.Message] = {}
        ids = [m.id for m in messages]  # type: ignore[attr-defined]
        sent = 0
        while len(replies) < len(messages):
            batch = []
            while sent < len(messages) and sent - len(replies) < window:
                batch.append(self.link.wrap(self.conn.send(messages[sent])))
                sent += 1
            if batch:
                self.link.send(b"".join(batch))
            reply = self._next()
            rid = getattr(reply, "id", None)
            if rid is None:
                continue  # an event
            if isinstance(reply, p.Error):
                raise ServerError(f"{reply.code}: {reply.message}")
            replies[rid] = reply
        return [replies[i] for i in ids]

    def next_id(self) -> int:
        return self.conn.next_request_id()

    def close(self) -> None:
        self.link.close()


# ------------------------------------------------------------------ Redis


class RespError(Exception):
    pass


def resp_command(*args: bytes | str | int) -> bytes:
    """One RESP command, as bytes."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    if kind == 0x2B:  # +
        return line, end + 2
    if kind == 0x2D:  # -
        return RespError(line.decode(errors="replace")), end + 2
    if kind == 0x3A:  # :
        return int(line), end + 2
    if kind == 0x24:  # $
        n = int(line)
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 0x2A:  # *
        n = int(line)
        items = []
        pos = end + 2
        for _ in range(max(n, 0)):
            r = _parse(buf, pos)
            if r is None:
                return None
            items.append(r[0])
            pos = r[1]
        return items, pos
    raise RespError(f"bad RESP type byte {kind!r}")


class RespParser:
    """RESP2 replies and push messages from bytes, sans-I/O."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while pos < len(buf):
            r = _parse(buf, pos)
            if r is None:
                break
            out.append(r[0])
            pos = r[1]
        if pos:
            del buf[:pos]
        return out


class RedisClient:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.sock = _open_socket(target)
        self.parser = RespParser()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def replies(self, n: int, timeout: float = 30.0) -> list[Any]:
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            if not wait_readable([self.sock.fileno()], max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no answer from redis")
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("redis closed the connection")
            out.extend(self.parser.feed(data))
        for r in out:
            if isinstance(r, RespError):
                raise r
        return out

    def command(self, *args: bytes | str | int) -> Any:
        self.send(resp_command(*args))
        return self.replies(1)[0]

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def raise_nofile_limit() -> None:
    """Lifts the soft limit on open files to the hard limit (idle connections)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
