"""Property tests: valid messages round-trip; arbitrary bytes never crash."""

from __future__ import annotations

import hypothesis
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nexus_protocol import (
    DEFAULT_LIMITS,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ConnectionState,
    ErrorCode,
    Framing,
    Hello,
    Limits,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Role,
    Set,
    Side,
    decode_body,
    encode_body,
    frame,
    validate,
)

from . import strategies as nst
from .helpers import PROFILE, SID, chunks, drain, nested, open_pair, same

SMALL = Limits(max_frame=100, max_key=8, max_depth=3, max_patch=4)
LIMITS = pytest.mark.parametrize("limits", [DEFAULT_LIMITS, SMALL], ids=["default", "small"])


@settings(PROFILE, max_examples=400)
@given(nst.messages())
def test_valid_messages_round_trip(message: Message) -> None:
    validate(message)
    decoded = decode_body(encode_body(message))
    assert decoded == message
    assert same(decoded, message)


@settings(PROFILE, max_examples=200)
@given(st.data())
def test_valid_messages_round_trip_under_small_limits(data: st.DataObject) -> None:
    message = data.draw(nst.messages(limits=SMALL))
    validate(message, SMALL)
    body = encode_body(message)
    if len(body) > SMALL.max_frame:
        with pytest.raises(RemoteProtocolError) as caught:
            decode_body(body, SMALL)
        assert caught.value.code is ErrorCode.TOO_LARGE
    else:
        assert same(decode_body(body, SMALL), message)


@settings(PROFILE, max_examples=150)
@given(nst.messages_with_role(Role.REQUEST), st.lists(st.integers(1, 16), max_size=4))
def test_requests_cross_a_connection_pair(message: Message, sizes: list[int]) -> None:
    client, server = open_pair()
    received = []
    for part in chunks(client.send(message), sizes):
        server.receive_data(part)
        received += drain(server)
    assert received == [message]
    assert server.in_flight == client.in_flight == {message.id}  # type: ignore[attr-defined]


@settings(PROFILE, max_examples=150)
@given(nst.messages_with_role(Role.EVENT))
def test_events_cross_a_connection_pair(message: Message) -> None:
    client, server = open_pair(framing=Framing.MESSAGE)
    client.receive_data(server.send(message))
    assert drain(client) == [message]


@settings(PROFILE, max_examples=200)
@given(st.binary(max_size=200))
def test_decode_body_refuses_garbage_cleanly(body: bytes) -> None:
    try:
        decode_body(body)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST


@settings(PROFILE, max_examples=200)
@given(nst.near_messages())
def test_decode_body_checks_near_messages(obj: dict[str, object]) -> None:
    """A real tag with any values: the result is a valid message or a clean error."""
    try:
        message = decode_body(msgpack.packb(obj))
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        assert exc.request_id in (None, obj.get("id"))
    else:
        validate(message)


def feed_everything(conn: Connection, stream: bytes, sizes: list[int]) -> list[object]:
    """Feeds `stream` in pieces, reading every event after each piece, then the
    end of the stream. Checks the invariants a transport relies on."""
    limits = conn.limits
    outcomes: list[object] = []

    def pump() -> None:
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                assert isinstance(exc.code, ErrorCode)
                hypothesis.event(f"error: {exc.code.value}{' (fatal)' if exc.fatal else ''}")
                outcomes.append(exc.code)
                if exc.fatal:
                    assert conn.state is ConnectionState.CLOSED
                    assert conn.buffered == 0
                    assert exc.request_id is None
                continue
            if event is NEED_DATA:
                # Whatever a peer sends, what stays buffered is less than one
                # frame (its prefix and its body).
                assert conn.buffered <= limits.max_frame + 4
                return
            if isinstance(event, ConnectionClosed):
                outcomes.append(event)
                return
            assert isinstance(event, Message)
            hypothesis.event("message")
            outcomes.append(event)

    framing_is_stream = conn.framing is Framing.STREAM
    for part in (chunks(stream, sizes) if framing_is_stream else [stream]):
        try:
            conn.receive_data(part)
        except RemoteProtocolError as exc:
            assert not framing_is_stream and exc.code is ErrorCode.TOO_LARGE
            assert conn.buffered == 0
        pump()
    conn.receive_data(b"")
    pump()
    assert conn.state is ConnectionState.CLOSED
    assert isinstance(outcomes[-1], ConnectionClosed)
    return outcomes


def server_stream(limits: Limits) -> st.SearchStrategy[bytes]:
    return st.lists(nst.frames(limits), max_size=6).map(b"".join)


HELLO = frame(encode_body(Hello(versions=[1], channel="fuzz")))


@LIMITS
@settings(PROFILE, max_examples=300)
@given(data=st.data())
def test_server_after_handshake_survives_any_bytes(limits: Limits, data: st.DataObject) -> None:
    stream = data.draw(server_stream(limits))
    sizes = data.draw(st.lists(st.integers(1, 40), max_size=5))
    _, server = open_pair(limits=limits)
    feed_everything(server, stream, sizes)


@LIMITS
@settings(PROFILE, max_examples=300)
@given(data=st.data())
def test_server_before_handshake_survives_any_bytes(limits: Limits, data: st.DataObject) -> None:
    stream = data.draw(st.one_of(server_stream(limits),
                                 server_stream(limits).map(lambda s: HELLO + s)))
    sizes = data.draw(st.lists(st.integers(1, 40), max_size=5))
    server = Connection(Side.SERVER, limits=limits)
    outcomes = feed_everything(server, stream, sizes)
    # Before a welcome is sent the server can take in one hello, nothing more.
    messages = [o for o in outcomes if isinstance(o, Message)]
    assert len(messages) <= 1
    assert all(isinstance(m, Hello) for m in messages)
    if stream.startswith(HELLO):
        assert messages == [Hello(versions=[1], channel="fuzz")]


@LIMITS
@settings(PROFILE, max_examples=200)
@given(data=st.data())
def test_client_survives_any_bytes(limits: Limits, data: st.DataObject) -> None:
    stream = data.draw(server_stream(limits))
    sizes = data.draw(st.lists(st.integers(1, 40), max_size=5))
    client, _ = open_pair(limits=limits)
    feed_everything(client, stream, sizes)


@LIMITS
@settings(PROFILE, max_examples=200)
@given(data=st.data())
def test_message_framing_survives_any_bodies(limits: Limits, data: st.DataObject) -> None:
    bodies = data.draw(st.lists(st.one_of(
        nst.messages(limits=limits).map(encode_body),
        nst.near_messages().map(msgpack.packb),
        st.binary(min_size=1, max_size=limits.max_frame + 8),
    ), max_size=6))
    _, server = open_pair(limits=limits, framing=Framing.MESSAGE)
    for body in bodies:
        feed_everything_message(server, body)


def feed_everything_message(conn: Connection, body: bytes) -> None:
    try:
        conn.receive_data(body)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.TOO_LARGE and len(body) > conn.limits.max_frame
        assert conn.buffered == 0
        return
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            continue
        if event is NEED_DATA:
            assert conn.buffered == 0
            return
        assert isinstance(event, Message)


@pytest.mark.parametrize("max_depth", [1, 32, 300])
def test_depth_limit_is_exact(max_depth: int) -> None:
    """A value max_depth deep passes, one level more does not, whichever way
    the codec walks it (recursively up to 200 levels, iteratively beyond)."""
    limits = Limits(max_depth=max_depth)
    ok = Set(id=1, session_id=SID, key="k", value=nested(max_depth))
    too_deep = Set(id=2, session_id=SID, key="k", value={"a": nested(max_depth)})
    validate(ok, limits)
    assert decode_body(encode_body(ok), limits) == ok
    with pytest.raises(ValueError, match="nesting deeper"):
        validate(too_deep, limits)
    with pytest.raises(RemoteProtocolError, match="nesting deeper") as caught:
        decode_body(encode_body(too_deep), limits)
    assert caught.value.request_id == 2


@pytest.mark.parametrize("value", [
    (1, 2),
    {1, 2},
    {"a": object()},
    [msgpack.ExtType(5, b"x")],
    {"k": {("a",): 1}},
], ids=["tuple", "set", "object", "ext", "tuple-key"])
def test_values_outside_msgpack_core_are_refused_on_send(value: object) -> None:
    client, _ = open_pair()
    with pytest.raises(LocalProtocolError):
        client.send(Set(id=1, session_id=SID, key="k", value=value))
    assert client.in_flight == frozenset()
