"""The JSON encoding (SPEC section 2.4): its golden vectors (json.json), made
from the msgpack ones, and round trips of every message."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import assume, given, settings
from nexus_protocol import (
    MESSAGE_TYPES,
    Connection,
    Encoding,
    ErrorCode,
    Framing,
    Hello,
    Message,
    Ping,
    RemoteProtocolError,
    Role,
    Side,
    Welcome,
    decode_body,
    decode_json,
    encode_body,
    encode_json,
    json_from_body,
)

from . import strategies as nst
from .helpers import PROFILE, drain, from_json, same

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
DOC = json.loads((VECTORS / "json.json").read_text(encoding="utf-8"))
VALID = DOC["valid"]
INVALID = DOC["invalid"]
MSGPACK = {v["name"]: v for v in
           json.loads((VECTORS / "valid.json").read_text(encoding="utf-8"))["vectors"]}

valid = pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
invalid = pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])


def meaning(vector: dict[str, Any]) -> Message:
    fields = {k: from_json(v) for k, v in vector["message"].items() if k != "t"}
    return MESSAGE_TYPES[vector["message"]["t"]](**fields)


def json_pair() -> tuple[Connection, Connection]:
    """A client and a server speaking JSON, past the handshake."""
    client = Connection(Side.CLIENT, framing=Framing.MESSAGE, encoding=Encoding.JSON)
    server = Connection(Side.SERVER, framing=Framing.MESSAGE, encoding=Encoding.JSON)
    server.receive_data(client.send(Hello(versions=[1], channel="web")))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send(Welcome(version=1, server="t", connection_id="c",
                                            max_frame=1 << 20)))
    assert isinstance(client.next_event(), Welcome)
    return client, server


def test_every_msgpack_vector_has_its_json_twin() -> None:
    assert [v["name"] for v in VALID] == list(MSGPACK)
    assert {v["message"]["t"] for v in VALID} == set(MESSAGE_TYPES)


@valid
def test_json_vector_decodes_to_its_meaning(vector: dict[str, Any]) -> None:
    decoded = decode_json(vector["json"].encode())
    assert decoded == meaning(vector)
    assert same(decoded, meaning(vector)), "same values, not the same types"


@valid
def test_json_vector_is_the_canonical_encoding(vector: dict[str, Any]) -> None:
    assert encode_json(meaning(vector)).decode() == vector["json"]


@valid
def test_msgpack_body_converts_to_the_json_vector(vector: dict[str, Any]) -> None:
    """What fan-out does: an event encoded once as msgpack, sent as JSON."""
    body = bytes.fromhex(MSGPACK[vector["name"]].get("canonical_hex")
                         or MSGPACK[vector["name"]]["hex"])
    assert json_from_body(body).decode() == vector["json"]


@valid
def test_json_vector_crosses_a_connection(vector: dict[str, Any]) -> None:
    message = meaning(vector)
    if message.ROLE in (Role.HELLO, Role.WELCOME):
        return  # the handshake itself: json_pair
    client, server = json_pair()
    receiver = server if message.ROLE is Role.REQUEST else client
    rid = getattr(message, "id", None)
    if message.ROLE is Role.REPLY and rid is not None:
        client.send(Ping(id=rid))
    receiver.receive_data(vector["json"].encode())
    assert drain(receiver) == [message]


@invalid
def test_invalid_json_vector_is_refused(vector: dict[str, Any]) -> None:
    _client, server = json_pair()
    server.receive_data(vector["json"].encode())
    with pytest.raises(RemoteProtocolError) as caught:
        server.next_event()
    assert caught.value.code is ErrorCode(vector["error"])
    assert caught.value.fatal is vector["fatal"]
    assert caught.value.request_id == vector["request_id"]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@settings(PROFILE, max_examples=400)
@given(nst.messages())
def test_messages_round_trip_through_json(message: Message) -> None:
    assume(all(_finite(getattr(message, f.name))
               for f in attrs.fields(type(message))))  # type: ignore[arg-type]
    text = encode_json(message)
    json.loads(text)  # plain JSON, readable by any parser
    decoded = decode_json(text)
    assert decoded == message and same(decoded, message)
    assert json_from_body(encode_body(message)) == text
    assert decode_body(encode_body(decoded)) == message


def test_non_finite_floats_travel_as_null() -> None:
    body = encode_body(MESSAGE_TYPES["value"](id=1, key="k", value=[math.inf, -math.inf],
                                                version=1))
    assert json.loads(json_from_body(body))["value"] == [None, None]


def test_json_needs_message_framing() -> None:
    with pytest.raises(ValueError, match="message framing"):
        Connection(Side.SERVER, encoding=Encoding.JSON)
