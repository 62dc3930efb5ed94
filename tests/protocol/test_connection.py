"""The Connection state machine, driven as a client and a server would."""

from __future__ import annotations

import msgpack
import pytest
from nexus_protocol import (
    NEED_DATA,
    Attach,
    Attached,
    Change,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Create,
    Created,
    Error,
    ErrorCode,
    Framing,
    Get,
    Hello,
    Limits,
    LocalProtocolError,
    Ping,
    Pong,
    RemoteProtocolError,
    Set,
    Shutdown,
    Side,
    Snapshot,
    Value,
    Welcome,
    Written,
    encode_body,
    frame,
)

from .helpers import SID, TOKEN, deliver, drain, open_pair

TS = 1_700_000_000.0


def test_a_whole_session() -> None:
    client = Connection(Side.CLIENT)
    server = Connection(Side.SERVER)

    # Handshake.
    hello = Hello(versions=[1], channel="cli", client="nexus-cli/0.1.0")
    assert deliver(client.send(hello), server) == [hello]
    assert (client.state, server.state) == (ConnectionState.HANDSHAKE, ConnectionState.HANDSHAKE)
    assert server.version == 1
    welcome = Welcome(version=1, server="nexusd/0.1.0", connection_id="c-1",
                      max_frame=server.limits.max_frame)
    assert deliver(server.send(welcome), client) == [welcome]
    assert (client.state, server.state) == (ConnectionState.OPEN, ConnectionState.OPEN)
    assert client.version == 1

    # create -> created
    rid = client.next_request_id()
    create = Create(id=rid, channel="cli", ttl=3600.0)
    assert deliver(client.send(create), server) == [create]
    assert client.in_flight == server.in_flight == {rid}
    created = Created(id=rid, session_id=SID, token=TOKEN, seq=0, expires_at=TS + 3600)
    assert deliver(server.send(created), client) == [created]
    assert client.in_flight == server.in_flight == frozenset()

    # attach -> attached, then a snapshot event, arriving in one read.
    rid = client.next_request_id()
    attach = Attach(id=rid, session_id=SID, token=TOKEN)
    assert deliver(client.send(attach), server) == [attach]
    attached = Attached(id=rid, session_id=SID, seq=0, recovered=False, scope="read")
    snapshot = Snapshot(session_id=SID, seq=0, entries={}, context={}, recovered=True)
    assert deliver(server.send(attached) + server.send(snapshot), client) == [attached, snapshot]

    # set -> written, and the change event fanned out (encoded once).
    rid = client.next_request_id()
    write = Set(id=rid, session_id=SID, key="theme", value={"mode": "dark"}, expect=0)
    assert deliver(client.send(write), server) == [write]
    change = Change(session_id=SID, seq=1, op="set", ts=TS, channel="cli", writer="c-1",
                    key="theme", value={"mode": "dark"}, version=1)
    written = Written(id=rid, seq=1, version=1)
    data = server.send_encoded(encode_body(change)) + server.send(written)
    assert deliver(data, client) == [change, written]

    # get -> value
    rid = client.next_request_id()
    get = Get(id=rid, session_id=SID, key="theme")
    assert deliver(client.send(get), server) == [get]
    value = Value(id=rid, key="theme", value={"mode": "dark"}, version=1, updated_at=TS,
                  channel="cli")
    assert deliver(server.send(value), client) == [value]

    # A request that fails gets an error with its id; the connection goes on.
    rid = client.next_request_id()
    missing = Get(id=rid, session_id="nope")
    assert deliver(client.send(missing), server) == [missing]
    error = Error(id=rid, code=ErrorCode.NOT_FOUND.value, message="no session 'nope'")
    assert deliver(server.send(error), client) == [error]
    assert client.state is ConnectionState.OPEN

    # shutdown: a request already sent is still answered; no new ones.
    late = client.next_request_id()
    ping = Ping(id=late)
    assert deliver(client.send(ping), server) == [ping]
    shutdown = Shutdown(reason="stopping", retry_after=1.0)
    assert deliver(server.send(shutdown), client) == [shutdown]
    assert (client.state, server.state) == (ConnectionState.DRAINING, ConnectionState.DRAINING)
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=client.next_request_id()))
    assert deliver(server.send(Pong(id=late)), client) == [Pong(id=late)]
    assert client.in_flight == server.in_flight == frozenset()

    # The server closes the transport.
    assert deliver(b"", client) == [ConnectionClosed()]
    assert client.state is ConnectionState.CLOSED


def test_server_answers_requests_that_cross_its_shutdown() -> None:
    client, server = open_pair()
    data = client.send(Ping(id=7))
    server.send(Shutdown())
    assert deliver(data, server) == [Ping(id=7)]
    unavailable = Error(id=7, code=ErrorCode.UNAVAILABLE.value, retry_after=1.0)
    server.send(unavailable)
    assert server.in_flight == frozenset()


# ------------------------------------------------------------------ versions


def test_server_picks_the_highest_common_version() -> None:
    server = Connection(Side.SERVER, versions=(1, 2, 3))
    deliver(frame(encode_body(Hello(versions=[4, 2, 3], channel="cli"))), server)
    assert server.version == 3
    with pytest.raises(LocalProtocolError, match="negotiated version 3"):
        server.send(Welcome(version=2, server="s", connection_id="c", max_frame=1024))
    assert server.state is ConnectionState.HANDSHAKE
    server.send(Welcome(version=3, server="s", connection_id="c", max_frame=1024))
    assert server.state is ConnectionState.OPEN


def test_no_common_version_is_fatal_and_can_be_said_once() -> None:
    client = Connection(Side.CLIENT, versions=(2, 3))
    server = Connection(Side.SERVER)
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(client.send(Hello(versions=[2, 3], channel="cli")), server)
    exc = caught.value
    assert (exc.code, exc.fatal, exc.request_id) == (ErrorCode.UNSUPPORTED_VERSION, True, None)
    assert server.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(Welcome(version=1, server="s", connection_id="c", max_frame=1024))
    refusal = Error(code=exc.code.value, message=exc.message)
    assert deliver(server.send(refusal), client) == [refusal]
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=1))


def test_client_refuses_a_version_it_does_not_speak() -> None:
    client = Connection(Side.CLIENT)
    client.send(Hello(versions=[1], channel="cli"))
    welcome = Welcome(version=2, server="s", connection_id="c", max_frame=1024)
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(frame(encode_body(welcome)), client)
    assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert caught.value.fatal
    assert client.state is ConnectionState.CLOSED


def test_client_refused_during_the_handshake() -> None:
    client = Connection(Side.CLIENT)
    client.send(Hello(versions=[1], channel="cli", credential="wrong"))
    refusal = Error(code=ErrorCode.UNAUTHORIZED.value, message="bad credential")
    assert deliver(frame(encode_body(refusal)), client) == [refusal]
    assert client.state is ConnectionState.CLOSED


# -------------------------------------------------------- out-of-state traffic


def test_request_before_hello_is_fatal() -> None:
    server = Connection(Side.SERVER)
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(frame(encode_body(Ping(id=1))), server)
    exc = caught.value
    # Fatal, so it answers no request: the server can only say why and close.
    assert (exc.code, exc.fatal, exc.request_id) == (ErrorCode.BAD_REQUEST, True, None)
    assert server.state is ConnectionState.CLOSED
    server.send(Error(code=exc.code.value, message=exc.message))
    # Whatever else arrives is dropped, not buffered.
    server.receive_data(frame(encode_body(Ping(id=2))) * 100)
    assert server.buffered == 0
    assert server.next_event() is NEED_DATA


def test_client_cannot_send_before_the_handshake_completes() -> None:
    client = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=1))
    client.send(Hello(versions=[1], channel="cli"))
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=1))
    assert client.in_flight == frozenset()


def test_reply_to_an_unknown_request_is_refused_but_not_fatal() -> None:
    client, server = open_pair()
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(frame(encode_body(Pong(id=99))), client)
    assert not caught.value.fatal
    assert client.state is ConnectionState.OPEN
    deliver(client.send(Ping(id=1)), server)
    assert deliver(server.send(Pong(id=1)), client) == [Pong(id=1)]


def test_server_cannot_answer_a_request_it_did_not_receive() -> None:
    _, server = open_pair()
    with pytest.raises(LocalProtocolError):
        server.send(Pong(id=3))


def test_duplicate_in_flight_id() -> None:
    client, server = open_pair()
    first = client.send(Ping(id=5))
    with pytest.raises(LocalProtocolError, match="already in flight"):
        client.send(Ping(id=5))
    assert deliver(first, server) == [Ping(id=5)]
    # A peer that does it anyway: the second request cannot be answered by id.
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(first, server)
    assert (caught.value.fatal, caught.value.request_id) == (False, None)
    assert server.in_flight == {5}
    # Once answered, the id may be used again.
    assert deliver(server.send(Pong(id=5)), client) == [Pong(id=5)]
    assert deliver(client.send(Ping(id=5)), server) == [Ping(id=5)]


def test_bad_request_is_answered_by_id() -> None:
    client, server = open_pair()
    body = frame(encode_body(Ping(id=4))).replace(b"ping", b"pang")
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(body, server)
    assert (caught.value.fatal, caught.value.request_id) == (False, 4)
    assert server.in_flight == {4}
    client.send(Ping(id=4))  # the client's side of the same request
    error = Error(id=4, code=caught.value.code.value, message=caught.value.message)
    assert deliver(server.send(error), client) == [error]
    assert server.in_flight == client.in_flight == frozenset()


# ------------------------------------------------------------------- sending


@pytest.mark.parametrize("message", [
    Set(id=1, session_id=SID, key="", value=1),
    Set(id=1, session_id=SID, key="k" * 257, value=1),
    Set(id=1, session_id=SID, key="k", value={1: "a"}),
    Set(id=1, session_id=SID, key="k", value=2**64),
    Set(id=1, session_id="\ud800", key="k", value=1),
    Ping(id=-1),
    Create(id=1, ttl=float("nan")),
], ids=["empty key", "long key", "int map key", "int beyond 64 bits", "lone surrogate",
        "negative id", "nan"])
def test_send_refuses_an_invalid_message(message: Set | Ping | Create) -> None:
    client, _ = open_pair()
    with pytest.raises(LocalProtocolError):
        client.send(message)
    assert client.in_flight == frozenset()
    client.send(Ping(id=1))  # nothing of the failed send remains


def test_send_refuses_a_message_larger_than_a_frame() -> None:
    limits = Limits(max_frame=200)
    client, server = open_pair(limits=limits)
    with pytest.raises(LocalProtocolError) as caught:
        client.send(Set(id=1, session_id=SID, key="k", value="x" * 200))
    assert caught.value.code is ErrorCode.TOO_LARGE
    assert client.in_flight == frozenset()
    small = Set(id=1, session_id=SID, key="k", value="x" * 20)
    assert deliver(client.send(small), server) == [small]


def test_send_encoded_frames_an_event_once_encoded() -> None:
    client, server = open_pair()
    change = Change(session_id=SID, seq=1, op="renew", ts=TS, channel="api", writer="c-2",
                    value={"expires_at": TS + 60})
    body = encode_body(change)
    assert server.send_encoded(body) == frame(body)
    assert deliver(server.send_encoded(body), client) == [change]
    with pytest.raises(LocalProtocolError):
        client.send_encoded(body)  # clients send no events
    with pytest.raises(LocalProtocolError):
        Connection(Side.SERVER).send_encoded(body)  # nor does a server before welcome
    with pytest.raises(LocalProtocolError) as caught:
        open_pair(limits=Limits(max_frame=100))[1].send_encoded(b"\x80" * 101)
    assert caught.value.code is ErrorCode.TOO_LARGE


# ------------------------------------------------------------------- framing


def test_message_framing() -> None:
    client, server = open_pair(framing=Framing.MESSAGE)
    data = client.send(Ping(id=1))
    assert data == encode_body(Ping(id=1))  # no length prefix
    assert deliver(data, server) == [Ping(id=1)]
    server.send_encoded(encode_body(Snapshot(session_id=SID, seq=0, entries={}, context={},
                                             recovered=True)))
    assert server.send(Pong(id=1)) == encode_body(Pong(id=1))


def test_message_framing_refuses_an_oversized_message_without_keeping_it() -> None:
    _, server = open_pair(framing=Framing.MESSAGE, limits=Limits(max_frame=100))
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_data(b"\x80" * 101)
    assert (caught.value.code, caught.value.fatal) == (ErrorCode.TOO_LARGE, True)
    assert server.buffered == 0
    assert server.state is ConnectionState.CLOSED


def test_message_framing_takes_a_message_of_exactly_max_frame() -> None:
    _, server = open_pair(framing=Framing.MESSAGE, limits=Limits(max_frame=100))
    # A ping padded with an unknown key to exactly 100 bytes.
    bodies = (msgpack.packb({"t": "ping", "id": 1, "pad": "y" * n}) for n in range(100))
    padded = next(b for b in bodies if len(b) == 100)
    assert deliver(padded, server) == [Ping(id=1)]


def test_stream_refuses_an_oversized_frame_from_its_prefix() -> None:
    _, server = open_pair(limits=Limits(max_frame=100))
    server.receive_data((101).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError) as caught:
        server.next_event()
    assert (caught.value.code, caught.value.fatal) == (ErrorCode.TOO_LARGE, True)
    assert server.buffered == 0
    server.receive_data(b"\x00" * 1000)  # the rest of it, or anything else, is dropped
    assert server.buffered == 0


def test_eof_inside_a_frame() -> None:
    _, server = open_pair()
    data = frame(encode_body(Ping(id=1)))
    server.receive_data(data[:-1])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as caught:
        server.next_event()
    assert (caught.value.code, caught.value.fatal) == (ErrorCode.BAD_REQUEST, True)
    assert server.state is ConnectionState.CLOSED
    assert isinstance(server.next_event(), ConnectionClosed)


def test_eof_between_frames() -> None:
    _, server = open_pair()
    server.receive_data(frame(encode_body(Ping(id=1))))
    server.receive_data(b"")
    assert drain(server) == [Ping(id=1), ConnectionClosed()]
    assert server.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
