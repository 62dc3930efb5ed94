"""Encoding and decoding of message bodies, and the stream framing.

A body is one msgpack map (see `_messages`). On stream transports each body is
preceded by its length as a 4-byte big-endian unsigned integer; on message
transports (WebSocket) one binary message is one body.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any, Final

import attrs
import msgpack

from ._errors import ErrorCode, RemoteProtocolError
from ._limits import DEFAULT_LIMITS, Limits
from ._messages import MESSAGE_TYPES, Kind, Message

__all__ = ["FRAME_HEADER", "decode_body", "encode_body", "frame", "validate"]

FRAME_HEADER: Final = struct.Struct(">I")

_MISSING: Final = object()

# The value kinds where nil is a legitimate value rather than "absent".
_NIL_IS_VALUE: Final = frozenset({Kind.VALUE})


def _bad(message: str, request_id: int | None = None) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.BAD_REQUEST, request_id=request_id)


def _check_depth(value: Any, limit: int) -> None:
    """Raises ValueError if `value` nests deeper than `limit`, or holds a
    type outside the msgpack core (extension types) or a non-string map key."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth >= limit:
                raise ValueError(f"nesting deeper than {limit}")
            for k, v in item.items():
                if type(k) is not str:
                    raise ValueError("map keys must be strings")
                if type(v) in _CONTAINERS:
                    stack.append((v, depth + 1))
                elif type(v) not in _SCALARS:
                    raise ValueError(f"unsupported value type {type(v).__name__}")
        elif kind is list:
            if depth >= limit:
                raise ValueError(f"nesting deeper than {limit}")
            for v in item:
                if type(v) in _CONTAINERS:
                    stack.append((v, depth + 1))
                elif type(v) not in _SCALARS:
                    raise ValueError(f"unsupported value type {type(v).__name__}")
        elif kind not in _SCALARS:
            raise ValueError(f"unsupported value type {kind.__name__}")


_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
_CONTAINERS: Final = frozenset({dict, list})


def _check_key(v: Any, limits: Limits) -> str:
    if type(v) is not str or not v:
        raise ValueError("must be a non-empty string")
    if len(v) * 4 > limits.max_key and len(v.encode()) > limits.max_key:
        raise ValueError(f"longer than {limits.max_key} bytes")
    return v


def _check(kind: Kind, v: Any, limits: Limits) -> Any:
    """Returns `v` as the field holds it, or raises ValueError saying why not."""
    t = type(v)
    if kind is Kind.STR:
        if t is not str:
            raise ValueError("must be a string")
    elif kind is Kind.UINT:
        if t is not int or v < 0:
            raise ValueError("must be a non-negative integer")
    elif kind is Kind.KEY:
        _check_key(v, limits)
    elif kind is Kind.FLOAT:
        if t is int:
            return float(v)
        if t is not float or not math.isfinite(v):
            raise ValueError("must be a finite number")
    elif kind is Kind.BOOL:
        if t is not bool:
            raise ValueError("must be a boolean")
    elif kind is Kind.VALUE:
        if t not in _SCALARS:
            _check_depth(v, limits.max_depth)
    elif kind is Kind.MAP:
        if t is not dict:
            raise ValueError("must be a map")
        _check_depth(v, limits.max_depth)
    elif kind is Kind.LIST:
        if t is not list:
            raise ValueError("must be an array")
        _check_depth(v, limits.max_depth)
    elif kind is Kind.UINTS:
        if t is not list or any(type(x) is not int or x < 0 for x in v):
            raise ValueError("must be an array of non-negative integers")
    elif kind is Kind.KEYS:
        if t is not list:
            raise ValueError("must be an array of keys")
        if len(v) > limits.max_patch:
            raise ValueError(f"more than {limits.max_patch} keys")
        for k in v:
            _check_key(k, limits)
    elif kind is Kind.ENTRIES:
        if t is not dict:
            raise ValueError("must be a map of keys to values")
        if len(v) > limits.max_patch:
            raise ValueError(f"more than {limits.max_patch} keys")
        for k in v:
            _check_key(k, limits)
        _check_depth(v, limits.max_depth)
    elif kind is Kind.VERSIONS:
        if t is not dict:
            raise ValueError("must be a map of keys to versions")
        if len(v) > limits.max_patch:
            raise ValueError(f"more than {limits.max_patch} keys")
        for k, n in v.items():
            _check_key(k, limits)
            if type(n) is not int or n < 0:
                raise ValueError("versions must be non-negative integers")
    return v


@attrs.frozen
class _FieldSpec:
    name: str
    kind: Kind
    required: bool


def _specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    return tuple(
        _FieldSpec(f.name, f.metadata["kind"], f.default is attrs.NOTHING)
        for f in attrs.fields(cls)  # type: ignore[arg-type]
    )


_SPECS: Final = {cls: _specs(cls) for cls in MESSAGE_TYPES.values()}

# Kinds whose wire form needs no checking beyond its Python type; the decoder
# tests these inline, which keeps the common frames cheap.
_PLAIN: Final = {Kind.STR: str, Kind.UINT: int, Kind.BOOL: bool}


def _make_encoder(cls: type[Message]) -> Callable[[Message], dict[str, Any]]:
    # A dict display compiled once per class is several times faster than a
    # loop over fields; attrs builds its __init__ the same way.
    items = ", ".join(f"{s.name!r}: m.{s.name}" for s in _SPECS[cls])
    source = f"def to_wire(m):\n    return {{'t': {cls.TAG!r}, {items}}}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["to_wire"]  # type: ignore[no-any-return]


_ENCODERS: Final = {cls: _make_encoder(cls) for cls in MESSAGE_TYPES.values()}
_packb: Final = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode_body(message: Message) -> bytes:
    """The msgpack body of `message`. Optional fields that are None go as nil.

    Raises:
        TypeError: a field holds something msgpack cannot encode.
    """
    return _packb(_ENCODERS[type(message)](message))


def frame(body: bytes) -> bytes:
    """`body` with its 4-byte length prefix, for stream transports."""
    return FRAME_HEADER.pack(len(body)) + body


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def decode_body(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decodes and checks one body.

    Raises:
        RemoteProtocolError: `too_large` if the body exceeds the frame limit,
            `bad_request` for anything else wrong; `request_id` is set when the
            body was a readable request.
    """
    if len(body) > limits.max_frame:
        raise RemoteProtocolError(
            f"frame of {len(body)} bytes exceeds the limit of {limits.max_frame}",
            ErrorCode.TOO_LARGE, fatal=True,
        )
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=False, ext_hook=_reject_ext,
            timestamp=0, use_list=True,
        )
    except UnicodeDecodeError:
        raise _bad("invalid UTF-8 in a string") from None
    except msgpack.ExtraData:
        raise _bad("trailing bytes after the msgpack body") from None
    except msgpack.StackError:
        raise _bad("nesting too deep") from None
    except ValueError as exc:
        raise _bad(f"malformed msgpack: {exc}") from None
    except Exception:
        raise _bad("malformed msgpack") from None
    if type(obj) is not dict:
        raise _bad("a body must be a msgpack map")
    tag = obj.get("t")
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    request_id = obj.get("id")
    if type(request_id) is not int or request_id < 0:
        request_id = None
    if cls is None:
        if tag is None:
            raise _bad("missing message type 't'", request_id)
        raise _bad(f"unknown message type {tag!r}", request_id)
    kwargs: dict[str, Any] = {}
    for spec in _SPECS[cls]:
        name = spec.name
        v = obj.get(name, _MISSING)
        if v is _MISSING or (v is None and spec.kind not in _NIL_IS_VALUE):
            if spec.required:
                raise _bad(f"{tag}: missing field {name!r}", request_id)
            continue
        plain = _PLAIN.get(spec.kind)
        if plain is not None and type(v) is plain and (plain is not int or v >= 0):
            kwargs[name] = v
            continue
        try:
            kwargs[name] = _check(spec.kind, v, limits)
        except ValueError as exc:
            raise _bad(f"{tag}: field {name!r} {exc}", request_id) from None
    return cls(**kwargs)


def validate(message: Message, limits: Limits = DEFAULT_LIMITS) -> None:
    """Checks that `message` is one a peer would accept.

    Raises:
        ValueError: naming the field at fault.
    """
    for spec in _SPECS[type(message)]:
        v = getattr(message, spec.name)
        if v is None and spec.kind not in _NIL_IS_VALUE:
            if spec.required:
                raise ValueError(f"{message.TAG}: field {spec.name!r} is required")
            continue
        try:
            _check(spec.kind, v, limits)
        except ValueError as exc:
            raise ValueError(f"{message.TAG}: field {spec.name!r} {exc}") from None
