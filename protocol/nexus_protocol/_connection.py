"""The sans-I/O connection: bytes in, events out; messages in, bytes out.

Like h11 and wsproto, a `Connection` owns no socket, no task and no clock. The
caller feeds it what arrived (`receive_data`), takes events out of it
(`next_event`) and writes what `send` returns.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from ._codec import FRAME_HEADER, decode_body, encode_body, frame_too_large, validate
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._json import decode_json, encode_json, json_from_body
from ._limits import DEFAULT_LIMITS, Limits
from ._messages import Error, Hello, Message, Request, Role, Welcome

__all__ = [
    "NEED_DATA",
    "PROTOCOL_VERSIONS",
    "TRANSITIONS",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "Encoding",
    "Framing",
    "NeedData",
    "Side",
]

#: The protocol versions this implementation speaks, newest last.
PROTOCOL_VERSIONS: Final = (1,)


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Framing(enum.Enum):
    """STREAM: 4-byte length prefix per body. MESSAGE: one transport message
    (a WebSocket binary message) per body; each `receive_data` is one body."""

    STREAM = "stream"
    MESSAGE = "message"


class Encoding(enum.Enum):
    """How a body is written (SPEC section 2.4): MSGPACK, or JSON (message
    framing only: the `nexus.v1.json` WebSocket subprotocol)."""

    MSGPACK = "msgpack"
    JSON = "json"


class ConnectionState(enum.Enum):
    """Where one side of a connection is in its life (SPEC section 5.2)."""

    IDLE = "idle"  # nothing said yet
    HANDSHAKE = "handshake"  # hello on the wire, welcome not yet
    OPEN = "open"  # requests, replies and events flow
    DRAINING = "draining"  # shutdown said: replies still flow, no new requests
    CLOSED = "closed"  # the end: the transport may be closed


class NeedData(enum.Enum):
    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


@attrs.frozen
class ConnectionClosed:
    """The peer closed the transport (`receive_data(b"")`)."""


# Direction of a message as this connection sees it.
_SEND, _RECV = "send", "recv"

# {(side, state): {(direction, role): next_state}}; a missing entry is a
# protocol error. An `error` reply with no id during the handshake counts as
# Role.SHUTDOWN: it refuses the connection.
TRANSITIONS: Final[dict[tuple[Side, ConnectionState], dict[tuple[str, Role], ConnectionState]]] = {
    (Side.CLIENT, ConnectionState.IDLE): {
        (_SEND, Role.HELLO): ConnectionState.HANDSHAKE,
    },
    (Side.CLIENT, ConnectionState.HANDSHAKE): {
        (_RECV, Role.WELCOME): ConnectionState.OPEN,
        (_RECV, Role.SHUTDOWN): ConnectionState.CLOSED,
    },
    (Side.CLIENT, ConnectionState.OPEN): {
        (_SEND, Role.REQUEST): ConnectionState.OPEN,
        (_RECV, Role.REPLY): ConnectionState.OPEN,
        (_RECV, Role.EVENT): ConnectionState.OPEN,
        (_RECV, Role.SHUTDOWN): ConnectionState.DRAINING,
    },
    (Side.CLIENT, ConnectionState.DRAINING): {
        (_RECV, Role.REPLY): ConnectionState.DRAINING,
        (_RECV, Role.EVENT): ConnectionState.DRAINING,
        (_RECV, Role.SHUTDOWN): ConnectionState.DRAINING,
    },
    (Side.SERVER, ConnectionState.IDLE): {
        (_RECV, Role.HELLO): ConnectionState.HANDSHAKE,
    },
    (Side.SERVER, ConnectionState.HANDSHAKE): {
        (_SEND, Role.WELCOME): ConnectionState.OPEN,
        (_SEND, Role.SHUTDOWN): ConnectionState.CLOSED,
    },
    (Side.SERVER, ConnectionState.OPEN): {
        (_RECV, Role.REQUEST): ConnectionState.OPEN,
        (_SEND, Role.REPLY): ConnectionState.OPEN,
        (_SEND, Role.EVENT): ConnectionState.OPEN,
        (_SEND, Role.SHUTDOWN): ConnectionState.DRAINING,
    },
    (Side.SERVER, ConnectionState.DRAINING): {
        # Requests that crossed the shutdown on the wire are answered with
        # `unavailable`; nothing new is started.
        (_RECV, Role.REQUEST): ConnectionState.DRAINING,
        (_SEND, Role.REPLY): ConnectionState.DRAINING,
        (_SEND, Role.EVENT): ConnectionState.DRAINING,
        (_SEND, Role.SHUTDOWN): ConnectionState.DRAINING,
    },
    # After a fatal error the server may still say why, once, before closing.
    (Side.SERVER, ConnectionState.CLOSED): {
        (_SEND, Role.SHUTDOWN): ConnectionState.CLOSED,
    },
}


def _role(message: Message) -> Role:
    if isinstance(message, Error) and message.id is None:
        return Role.SHUTDOWN
    return message.ROLE


class Connection:
    """One end of a nexus protocol connection.

    Args:
        side: CLIENT or SERVER.
        framing: STREAM for byte streams (Unix socket), MESSAGE for WebSocket.
        limits: the bounds this side enforces on what it receives and sends.
        versions: the protocol versions this side speaks.
        encoding: MSGPACK, or JSON (with MESSAGE framing).

    Raises:
        ValueError: JSON bodies with STREAM framing.
    """

    def __init__(self, side: Side, *, framing: Framing = Framing.STREAM,
                 limits: Limits = DEFAULT_LIMITS,
                 versions: tuple[int, ...] = PROTOCOL_VERSIONS,
                 encoding: Encoding = Encoding.MSGPACK) -> None:
        if encoding is Encoding.JSON and framing is not Framing.MESSAGE:
            raise ValueError("JSON bodies travel with message framing only")
        self.side = side
        self.framing = framing
        self.encoding = encoding
        json = encoding is Encoding.JSON
        self._decode = decode_json if json else decode_body
        self._encode = encode_json if json else encode_body
        self.limits = limits
        self.versions = versions
        self.version: int | None = None
        self.state = ConnectionState.IDLE
        self._buffer = bytearray()
        self._bodies: list[bytes] = []
        self._eof = False
        self._next_id = 1
        # Client: ids sent and not yet answered. Server: ids received and not
        # yet answered.
        self._in_flight: set[int] = set()

    # ------------------------------------------------------------- inspection

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buffer) + sum(len(b) for b in self._bodies)

    @property
    def in_flight(self) -> frozenset[int]:
        """Request ids awaiting their reply."""
        return frozenset(self._in_flight)

    def next_request_id(self) -> int:
        """A fresh request id (client side)."""
        rid = self._next_id
        self._next_id += 1
        return rid

    # ---------------------------------------------------------------- receive

    def receive_data(self, data: bytes) -> None:
        """Feeds bytes from the transport; b"" means the peer closed it.

        With MESSAGE framing each call must be exactly one body.

        Raises:
            RemoteProtocolError: `too_large` when a message-framed body exceeds
                the frame limit (nothing of it is kept).
        """
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        if self.state is ConnectionState.CLOSED:
            # Nothing more will be read: keeping it would let a peer that
            # goes on sending after a fatal error fill our memory.
            return
        if self.framing is Framing.MESSAGE:
            if len(data) > self.limits.max_frame:
                raise self._fail(frame_too_large(len(data), self.limits))
            self._bodies.append(bytes(data))
        else:
            self._buffer += data

    def _next_body(self) -> bytes | None:
        if self.framing is Framing.MESSAGE:
            return self._bodies.pop(0) if self._bodies else None
        buf = self._buffer
        if len(buf) < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(buf)
        if length > self.limits.max_frame:
            raise self._fail(frame_too_large(length, self.limits))
        end = FRAME_HEADER.size + length
        if len(buf) < end:
            return None
        body = bytes(buf[FRAME_HEADER.size:end])
        del buf[:end]
        return body

    def next_event(self) -> Message | NeedData | ConnectionClosed:
        """The next complete message, NEED_DATA, or ConnectionClosed at EOF.

        Raises:
            RemoteProtocolError: the peer sent something invalid. When `fatal`
                is false the stream is still in sync: answer with the error's
                code (to `request_id` if set) and carry on.
        """
        if self.state is ConnectionState.CLOSED:
            return ConnectionClosed() if self._eof else NEED_DATA
        body = self._next_body()
        if body is None:
            if self._eof:
                if self._buffer:
                    raise self._fail(RemoteProtocolError(
                        "connection closed inside a frame", ErrorCode.BAD_REQUEST, fatal=True))
                self.state = ConnectionState.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        try:
            message = self._decode(body, self.limits)
        except RemoteProtocolError as exc:
            if self.state in (ConnectionState.IDLE, ConnectionState.HANDSHAKE) or exc.fatal:
                exc.fatal = True
                raise self._fail(exc) from None
            rid = exc.request_id
            if self.side is Side.SERVER and rid is not None:
                # The frame was a request we cannot serve: it is answered with
                # the error, so its id is in flight until then.
                if rid in self._in_flight:
                    exc.request_id = None
                else:
                    self._in_flight.add(rid)
            else:
                exc.request_id = None
            raise
        self._advance(_RECV, message)
        return message

    # ------------------------------------------------------------------- send

    def send(self, message: Message) -> bytes:
        """The bytes to write for `message`.

        Raises:
            LocalProtocolError: the message is not allowed in this state, its
                fields are invalid, or its body exceeds the frame limit.
        """
        try:
            validate(message, self.limits)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        try:
            body = self._encode(message)
        except (TypeError, ValueError, OverflowError) as exc:
            # What `validate` leaves to msgpack: integers beyond 64 bits,
            # strings that are not valid Unicode.
            raise LocalProtocolError(f"{message.TAG}: cannot encode: {exc}") from None
        # Only a message that encodes and fits in a frame counts as sent.
        data = self._frame(body)
        self._advance(_SEND, message)
        return data

    def send_encoded(self, body: bytes) -> bytes:
        """The bytes to write for an event body already encoded as msgpack
        (server side).

        Fan-out encodes an event once and sends the same body to every
        subscriber; this frames it without decoding it again (with JSON
        encoding, it is converted: once per body, however many subscribers).

        Raises:
            LocalProtocolError: the connection cannot carry events now.
        """
        allowed = TRANSITIONS.get((self.side, self.state), {})
        if (_SEND, Role.EVENT) not in allowed:
            raise LocalProtocolError(f"cannot send an event in state {self.state.value}")
        if self.encoding is Encoding.JSON:
            body = json_from_body(body)
        return self._frame(body)

    def _frame(self, body: bytes) -> bytes:
        if len(body) > self.limits.max_frame:
            raise LocalProtocolError(
                f"frame of {len(body)} bytes exceeds the limit of {self.limits.max_frame}",
                ErrorCode.TOO_LARGE,
            )
        if self.framing is Framing.MESSAGE:
            return body
        return FRAME_HEADER.pack(len(body)) + body

    # ------------------------------------------------------------ state table

    def _advance(self, direction: str, message: Message) -> None:
        role = _role(message)
        allowed = TRANSITIONS.get((self.side, self.state), {})
        nxt = allowed.get((direction, role))
        if nxt is None:
            text = (f"{self.side.value} cannot {direction} {message.TAG!r} "
                    f"in state {self.state.value}")
            if direction == _SEND:
                raise LocalProtocolError(text)
            rid = message.id if isinstance(message, Request) else None
            fatal = self.state in (ConnectionState.IDLE, ConnectionState.HANDSHAKE)
            err = RemoteProtocolError(text, ErrorCode.BAD_REQUEST, fatal=fatal, request_id=rid)
            raise self._fail(err) if fatal else err
        self._track(direction, role, message)
        self.state = nxt

    def _track(self, direction: str, role: Role, message: Message) -> None:
        if role is Role.HELLO:
            assert isinstance(message, Hello)
            if direction == _RECV:
                common = set(message.versions) & set(self.versions)
                if not common:
                    raise self._fail(RemoteProtocolError(
                        f"no common protocol version: client speaks {message.versions}, "
                        f"server speaks {list(self.versions)}",
                        ErrorCode.UNSUPPORTED_VERSION, fatal=True,
                    ))
                self.version = max(common)
        elif role is Role.WELCOME:
            assert isinstance(message, Welcome)
            if direction == _RECV and message.version not in self.versions:
                raise self._fail(RemoteProtocolError(
                    f"server chose protocol version {message.version}, "
                    f"which this client does not speak", ErrorCode.UNSUPPORTED_VERSION,
                    fatal=True,
                ))
            if direction == _SEND and message.version != self.version:
                raise LocalProtocolError(
                    f"welcome must carry the negotiated version {self.version}")
            self.version = message.version
        elif role is Role.REQUEST:
            assert isinstance(message, Request)
            rid = message.id
            if rid in self._in_flight:
                if direction == _SEND:
                    raise LocalProtocolError(f"request id {rid} is already in flight")
                raise RemoteProtocolError(f"request id {rid} is already in flight",
                                          request_id=None)
            self._in_flight.add(rid)
        elif role is Role.REPLY:
            rid = message.id  # type: ignore[attr-defined]
            if rid not in self._in_flight:
                if direction == _SEND:
                    raise LocalProtocolError(f"no request {rid} to answer")
                raise RemoteProtocolError(f"reply to unknown request id {rid}")
            self._in_flight.discard(rid)

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        # A closed connection can answer no request, only the connection.
        exc.request_id = None
        self.state = ConnectionState.CLOSED
        self._buffer.clear()
        self._bodies.clear()
        return exc
