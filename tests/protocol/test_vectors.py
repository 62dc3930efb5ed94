"""The golden vectors (protocol/vectors/*.json) against the Python implementation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nexus_protocol import (
    MESSAGE_TYPES,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Error,
    ErrorCode,
    Framing,
    Hello,
    Message,
    Ping,
    RemoteProtocolError,
    Role,
    Side,
    decode_body,
    encode_body,
)

from .helpers import chunks, drain, from_json, open_pair, same

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    doc = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert doc["version"] == 1
    vectors: list[dict[str, Any]] = doc["vectors"]
    return vectors


VALID = load("valid.json")
INVALID = load("invalid.json")


def meaning(vector: dict[str, Any]) -> Message:
    """The message a valid vector's JSON says its bytes mean."""
    fields = {k: from_json(v) for k, v in vector["message"].items() if k != "t"}
    return MESSAGE_TYPES[vector["message"]["t"]](**fields)


def receiver_for(message: Message, framing: Framing = Framing.STREAM) -> Connection:
    """A connection in the state where `message` may arrive (vectors README)."""
    if message.ROLE is Role.HELLO:
        return Connection(Side.SERVER, framing=framing)
    if message.ROLE is Role.WELCOME:
        client = Connection(Side.CLIENT, framing=framing)
        client.send(Hello(versions=[1], channel="cli"))
        return client
    client, server = open_pair(framing=framing)
    if message.ROLE is Role.REQUEST:
        return server
    rid = getattr(message, "id", None)
    if message.ROLE is Role.REPLY and rid is not None:
        client.send(Ping(id=rid))
    return client


valid = pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
invalid = pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
feeding = pytest.mark.parametrize("piece", [0, 1], ids=["whole", "byte-by-byte"])


@valid
def test_valid_vector_decodes_to_its_meaning(vector: dict[str, Any]) -> None:
    decoded = decode_body(bytes.fromhex(vector["hex"]))
    expected = meaning(vector)
    assert decoded == expected
    assert same(decoded, expected), "same values, but not the same types (int vs float?)"


@valid
def test_valid_vector_meaning_encodes_to_its_bytes(vector: dict[str, Any]) -> None:
    expected = vector.get("canonical_hex", vector["hex"])
    assert encode_body(meaning(vector)).hex() == expected


@valid
def test_valid_vector_is_framed(vector: dict[str, Any]) -> None:
    body = bytes.fromhex(vector["hex"])
    framed = bytes.fromhex(vector["framed_hex"])
    assert framed == len(body).to_bytes(4, "big") + body


@valid
@feeding
def test_valid_framed_vector_fed_to_a_connection(vector: dict[str, Any], piece: int) -> None:
    expected = meaning(vector)
    conn = receiver_for(expected)
    events: list[Message | ConnectionClosed] = []
    for part in chunks(bytes.fromhex(vector["framed_hex"]), [piece]):
        conn.receive_data(part)
        events += drain(conn)
    assert events == [expected]
    assert conn.buffered == 0


@valid
def test_valid_vector_as_one_websocket_message(vector: dict[str, Any]) -> None:
    expected = meaning(vector)
    conn = receiver_for(expected, Framing.MESSAGE)
    conn.receive_data(bytes.fromhex(vector["hex"]))
    assert drain(conn) == [expected]


@invalid
@feeding
def test_invalid_vector_is_refused(vector: dict[str, Any], piece: int) -> None:
    _, server = open_pair()
    tags: list[str] = []
    with pytest.raises(RemoteProtocolError) as caught:
        for part in chunks(bytes.fromhex(vector["hex"]), [piece]):
            server.receive_data(part)
            while isinstance(event := server.next_event(), Message):
                tags.append(event.TAG)
        if vector.get("eof"):
            server.receive_data(b"")
            server.next_event()
    exc = caught.value
    assert tags == vector.get("before", [])
    assert (exc.code, exc.fatal, exc.request_id) == (
        ErrorCode(vector["error"]), vector["fatal"], vector["request_id"])
    if exc.fatal:
        assert server.state is ConnectionState.CLOSED
        assert server.buffered == 0
    else:
        assert server.state is ConnectionState.OPEN


@invalid
def test_invalid_vector_error_can_be_answered(vector: dict[str, Any]) -> None:
    """What the daemon does with each refusal is allowed by the state machine:
    an error to the request, or one nil-id error for the connection."""
    client, server = open_pair()
    if vector.get("before"):
        client.send(Ping(id=5))  # the vector's first, valid, ping
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_data(bytes.fromhex(vector["hex"]))
        drain(server)
        if vector.get("eof"):
            server.receive_data(b"")
            drain(server)
    exc = caught.value
    if exc.fatal or exc.request_id is None:
        reply = Error(code=exc.code.value, message=exc.message)
    else:
        reply = Error(id=exc.request_id, code=exc.code.value, message=exc.message)
        client.send(Ping(id=exc.request_id))  # the client's view of that request
    client.receive_data(server.send(reply))
    assert drain(client) == [reply]


def test_every_message_type_has_a_valid_vector() -> None:
    assert {v["message"]["t"] for v in VALID} == set(MESSAGE_TYPES)


def test_vector_names_are_unique() -> None:
    names = [v["name"] for v in VALID + INVALID]
    assert len(names) == len(set(names))


def test_invalid_vectors_use_known_codes() -> None:
    assert {v["error"] for v in INVALID} <= {c.value for c in ErrorCode}
