"""The JSON encoding of bodies (SPEC section 2.4), for the `nexus.v1.json`
WebSocket subprotocol: the same messages as JSON objects, so that a web page
needs no msgpack library.

The mapping from msgpack values: maps are objects, arrays arrays, strings,
booleans and nil as themselves, integers as numbers without a fraction, floats
as numbers with one (NaN and the infinities, which JSON cannot carry, as null),
and bin as ``{"$bytes": "<base64>"}``. So that no map of the user's can be
taken for bytes, a map key that begins with ``$`` is written with one more
``$`` in front, and every other key beginning with ``$`` is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Final

import msgpack

from ._codec import _DECODERS, _ENCODERS, _bad, _check_patch, _request_id, frame_too_large
from ._limits import DEFAULT_LIMITS, Limits
from ._messages import Message, Patch

__all__ = ["decode_json", "encode_json", "json_from_body"]

_BYTES: Final = "$bytes"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_loads: Final = json.JSONDecoder(parse_constant=_reject_constant).decode


def _no_default(value: Any) -> Any:
    raise TypeError(type(value).__name__)


_dumps: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                                 default=_no_default).encode


def _to_json(value: Any) -> Any:
    """`value` with bin as {"$bytes": ...}, "$" keys escaped, non-finite floats nil."""
    kind = type(value)
    if kind is dict:
        return {("$" + k if k[:1] == "$" else k): _to_json(v) for k, v in value.items()}
    if kind is list:
        return [_to_json(v) for v in value]
    if kind is bytes:
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if kind is float and not math.isfinite(value):
        return None
    return value


def _dump(obj: dict[str, Any]) -> bytes:
    try:
        text = _dumps(obj)
    except (TypeError, ValueError):  # bin or a non-finite float somewhere
        text = None
    # '"$' appears in the text iff some string (a key, or a value) begins
    # with "$": only then may a key need escaping. Most bodies skip the walk.
    if text is None or '"$' in text:
        text = _dumps(_to_json(obj))
    return text.encode()


def _from_json(value: Any, room: int) -> Any:
    """`value` as the msgpack codec holds it: {"$bytes": ...} as bytes, "$$"
    keys unescaped. ValueError for a reserved key, bad base64, or nesting
    past `room`."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    if room <= 0:
        raise ValueError("nesting too deep")
    room -= 1
    if kind is list:
        return [_from_json(v, room) for v in value]
    out = {}
    for k, v in value.items():
        if k[:1] == "$":
            if k == _BYTES and len(value) == 1 and type(v) is str:
                try:
                    return base64.b64decode(v, validate=True)
                except binascii.Error:
                    raise ValueError("'$bytes' is not base64") from None
            if k[:2] != "$$":
                raise ValueError(f"the key {k!r} is reserved: write '${k}' for a key "
                                 f"beginning with '$'")
            k = k[1:]
        out[k] = _from_json(v, room)
    return out


def encode_json(message: Message) -> bytes:
    """The JSON body of `message`, UTF-8: the canonical form (every field,
    in the order of the message's table, nil for those not given).

    Raises:
        TypeError: a field holds something JSON cannot encode.
    """
    return _dump(_ENCODERS[type(message)](message))


#: The last body `json_from_body` converted, and its JSON: fan-out hands the
#: same event body to every subscriber, so it is converted once per event.
_last: list[Any] = [None, b""]


def json_from_body(body: bytes) -> bytes:
    """The JSON body of a message already encoded as msgpack (by this side:
    it is not checked again)."""
    last = _last
    if body is last[0]:
        return last[1]  # type: ignore[no-any-return]
    text = _dump(msgpack.unpackb(body, strict_map_key=False))
    last[0], last[1] = body, text
    return text


def decode_json(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decodes and checks one JSON body (UTF-8), with the checks of `decode_body`.

    Raises:
        RemoteProtocolError: `too_large` if the body exceeds the frame limit,
            `bad_request` for anything else wrong; `request_id` is set when the
            body was a readable request.
    """
    if len(data) > limits.max_frame:
        raise frame_too_large(len(data), limits)
    try:
        text = data.decode()
        obj = _loads(text)
    except UnicodeDecodeError:
        raise _bad("invalid UTF-8 in a JSON body") from None
    except RecursionError:
        raise _bad("nesting too deep") from None
    except ValueError as exc:
        raise _bad(f"malformed JSON: {exc}") from None
    if type(obj) is not dict:
        raise _bad("a body must be a JSON object")
    if '"$' in text:
        try:
            obj = _from_json(obj, limits.max_depth + 1)
        except ValueError as exc:
            raise _bad(str(exc), _request_id(obj)) from None
        if type(obj) is not dict:
            raise _bad("a body must be a JSON object")
    tag = obj.get("t")
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        if tag is None:
            raise _bad("missing message type 't'", _request_id(obj))
        raise _bad(f"unknown message type {tag!r}", _request_id(obj))
    # Every map key in JSON is a string, and bytes come only from "$bytes":
    # the nesting alone decides whether values need a walk.
    shallow = data.count(b"{") + data.count(b"[") <= limits.max_depth
    message = decoder(obj, limits, shallow)
    if type(message) is Patch:
        try:
            _check_patch(message, limits)
        except ValueError as exc:
            raise _bad(str(exc), _request_id(obj)) from None
    return message
