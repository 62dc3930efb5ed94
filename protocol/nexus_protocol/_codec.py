"""Encoding and decoding of message bodies, and the stream framing.

A body is one msgpack map (see `_messages`). On stream transports each body is
preceded by its length as a 4-byte big-endian unsigned integer; on message
transports (WebSocket) one binary message is one body.
"""

from __future__ import annotations

import inspect
import math
import struct
import types
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import msgpack

from ._errors import ErrorCode, RemoteProtocolError
from ._limits import DEFAULT_LIMITS, Limits
from ._messages import MESSAGE_TYPES, Kind, Message, Patch

__all__ = ["FRAME_HEADER", "check_value", "decode_body", "encode_body", "frame", "validate"]

FRAME_HEADER: Final = struct.Struct(">I")

_MISSING: Final = object()

# The value kinds where nil is a legitimate value rather than "absent".
_NIL_IS_VALUE: Final = frozenset({Kind.VALUE})


def _bad(message: str, request_id: int | None = None) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.BAD_REQUEST, request_id=request_id)


def _check_depth(value: Any, limit: int) -> None:
    """Raises ValueError if `value` nests deeper than `limit`, or holds a
    type outside the msgpack core (extension types) or a non-string map key."""
    kind = type(value)
    if kind is dict or kind is list:
        if limit > _RECURSION_LIMIT:
            _check_depth_iteratively(value, limit)
        elif not _walk(value, limit):
            raise ValueError(f"nesting deeper than {limit}")
    elif kind not in _SCALARS:
        raise ValueError(f"unsupported value type {kind.__name__}")


def check_value(value: Any, max_depth: int) -> None:
    """Checks that `value` is a protocol value nested at most `max_depth` deep.

    Raises:
        ValueError: saying what is wrong.
    """
    _check_depth(value, max_depth)


# Values are checked by recursion, which is faster than an explicit
# stack; a limit above this one is checked iteratively so that the check
# itself can never run out of Python stack.
_RECURSION_LIMIT: Final = 200


def _walk(item: Any, room: int) -> bool:
    """False if the container `item` nests more than `room` levels deep;
    ValueError for a non-string key or a type outside the msgpack core."""
    if room <= 0:
        return False
    room -= 1
    if type(item) is dict:
        for k, v in item.items():
            if type(k) is not str:
                raise ValueError("map keys must be strings")
            t = type(v)
            if t in _SCALARS:
                continue
            if t is not dict and t is not list:
                raise ValueError(f"unsupported value type {t.__name__}")
            if not _walk(v, room):
                return False
    else:
        for v in item:
            t = type(v)
            if t in _SCALARS:
                continue
            if t is not dict and t is not list:
                raise ValueError(f"unsupported value type {t.__name__}")
            if not _walk(v, room):
                return False
    return True


def _check_depth_iteratively(value: Any, limit: int) -> None:
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
    default: Any  # a value, an attrs.Factory, or attrs.NOTHING when required


def _specs(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    return tuple(
        _FieldSpec(f.name, f.metadata["kind"], f.default is attrs.NOTHING, f.default)
        for f in attrs.fields(cls)  # type: ignore[arg-type]
    )


_SPECS: Final = {cls: _specs(cls) for cls in MESSAGE_TYPES.values()}


def _make_encoder(cls: type[Message]) -> Callable[[Message], dict[str, Any]]:
    # A dict display compiled once per class is several times faster than a
    # loop over fields; attrs builds its __init__ the same way.
    items = ", ".join(f"{s.name!r}: m.{s.name}" for s in _SPECS[cls])
    source = f"def to_wire(m):\n    return {{'t': {cls.TAG!r}, {items}}}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["to_wire"]  # type: ignore[no-any-return]


_ENCODERS: Final = {cls: _make_encoder(cls) for cls in MESSAGE_TYPES.values()}
_packb: Final[Callable[[Any], bytes]] = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# The unpackb defaults that matter here: raw=False (str as str, bin as bytes),
# use_list=True, timestamp=0.
_unpackb: Final = msgpack.unpackb


def _request_id(obj: dict[Any, Any]) -> int | None:
    rid = obj.get("id")
    return rid if type(rid) is int and rid >= 0 else None


def _missing_field(obj: dict[Any, Any], tag: str, name: str) -> RemoteProtocolError:
    return _bad(f"{tag}: missing field {name!r}", _request_id(obj))


def _decode_field(kind: Kind, v: Any, limits: Limits, obj: dict[Any, Any],
                  tag: str, name: str) -> Any:
    try:
        return _check(kind, v, limits)
    except ValueError as exc:
        raise _bad(f"{tag}: field {name!r} {exc}", _request_id(obj)) from None


def _decode_nested(v: Any, limits: Limits, obj: dict[Any, Any], tag: str, name: str) -> None:
    try:
        _check_depth(v, limits.max_depth)
    except ValueError as exc:
        raise _bad(f"{tag}: field {name!r} {exc}", _request_id(obj)) from None


# For kinds whose usual wire value passes one inline test, that test; a value
# failing it (or of another kind) goes through `_check`, which says why.
# VALUE, MAP and LIST values that pass it still have their content checked.
_FAST: Final = {
    Kind.STR: "type({v}) is str",
    Kind.UINT: "type({v}) is int and {v} >= 0",
    Kind.BOOL: "type({v}) is bool",
    Kind.FLOAT: "type({v}) is float and _isfinite({v})",
    Kind.KEY: "type({v}) is str and 0 < len({v}) <= short_key",
    Kind.MAP: "type({v}) is dict",
    Kind.LIST: "type({v}) is list",
}
_NESTED: Final = frozenset({Kind.VALUE, Kind.MAP, Kind.LIST})


def _slot(cls: type[Message], name: str) -> Any:
    """The descriptor of field `name`, from `cls` or the base declaring it."""
    return inspect.getattr_static(cls, name, None)


def _plain_slots(cls: type[Message]) -> bool:
    """True if attrs' __init__ of `cls` only stores its arguments."""
    return (
        all("__slots__" in vars(c) for c in cls.__mro__[:-1])
        and not hasattr(cls, "__attrs_post_init__")
        and not hasattr(cls, "__attrs_pre_init__")
        and all(f.validator is None and f.converter is None
                for f in attrs.fields(cls))  # type: ignore[arg-type]
        and all(isinstance(_slot(cls, s.name), types.MemberDescriptorType)
                for s in _SPECS[cls])
    )


def _make_decoder(cls: type[Message]) -> Callable[[dict[Any, Any], Limits, bool], Message]:
    # Compiled once per class, like the encoder: a loop over field specs costs
    # more than the msgpack parse of a typical frame. The generated code does
    # exactly what `validate` does, field by field, in declaration order; nil
    # stands for absent except in VALUE fields, where it is a value.
    specs = _SPECS[cls]
    ns: dict[str, Any] = {
        "cls": cls, "TAG": cls.TAG, "_MISSING": _MISSING, "_SCALARS": _SCALARS,
        "_isfinite": math.isfinite, "_field": _decode_field, "_missing": _missing_field,
        "_nested": _decode_nested,
    }
    lines = ["def from_wire(obj, limits, shallow):", "    get = obj.get"]
    if any(s.kind is Kind.KEY for s in specs):
        # len(key) <= max_key // 4 guarantees at most max_key UTF-8 bytes.
        lines.append("    short_key = limits.max_key >> 2")
    for i, s in enumerate(specs):
        v, name = f"v{i}", repr(s.name)
        ns[f"K{i}"] = s.kind
        slow = f"{v} = _field(K{i}, {v}, limits, obj, TAG, {name})"
        nested = f"_nested({v}, limits, obj, TAG, {name})"
        if s.kind is Kind.VALUE:
            if s.required:
                lines += [f"    {v} = get({name}, _MISSING)",
                          f"    if {v} is _MISSING:",
                          f"        raise _missing(obj, TAG, {name})"]
            else:
                assert s.default is None, "optional VALUE fields default to nil"
                lines.append(f"    {v} = get({name})")
            lines += [f"    if not shallow and type({v}) not in _SCALARS:", f"        {nested}"]
            continue
        if s.required:
            absent = f"raise _missing(obj, TAG, {name})"
        elif isinstance(s.default, attrs.Factory):  # type: ignore[arg-type]
            ns[f"D{i}"] = s.default.factory
            absent = f"{v} = D{i}()"
        else:
            ns[f"D{i}"] = s.default
            absent = f"{v} = D{i}"
        lines.append(f"    {v} = get({name})")
        fast = _FAST.get(s.kind)
        indent = "    "
        if fast is not None:
            lines.append(f"    if not ({fast.format(v=v)}):")
            indent = "        "
        lines += [f"{indent}if {v} is None:", f"{indent}    {absent}",
                  f"{indent}else:", f"{indent}    {slow}"]
        if s.kind in _NESTED:
            lines += ["    elif not shallow:", f"        {nested}"]
    if _plain_slots(cls):
        # The checked values go straight into the slots: for these classes
        # attrs' __init__ would do the same, behind a keyword-argument call
        # that costs as much as the checks above.
        lines.append("    m = _new(cls)")
        for i, s in enumerate(specs):
            ns[f"S{i}"] = _slot(cls, s.name).__set__
            lines.append(f"    S{i}(m, v{i})")
        lines.append("    return m")
        ns["_new"] = object.__new__
    else:
        args = ", ".join(f"{s.name}=v{i}" for i, s in enumerate(specs))
        lines.append(f"    return cls({args})")
    exec("\n".join(lines) + "\n", ns)
    return ns["from_wire"]  # type: ignore[no-any-return]


_DECODERS: Final = {tag: _make_decoder(cls) for tag, cls in MESSAGE_TYPES.items()}


def _check_patch(message: Patch, limits: Limits) -> None:
    if len(message.set) + len(message.delete) > limits.max_patch:
        raise ValueError(f"patch: sets and deletes more than {limits.max_patch} keys")


def encode_body(message: Message) -> bytes:
    """The msgpack body of `message`. Optional fields that are None go as nil.

    Raises:
        TypeError: a field holds something msgpack cannot encode.
    """
    return _packb(_ENCODERS[type(message)](message))


def frame(body: bytes) -> bytes:
    """`body` with its 4-byte length prefix, for stream transports."""
    return FRAME_HEADER.pack(len(body)) + body


# Every array or map begins with one of these bytes; so does much else, but
# their count in a body bounds how deep anything in it can nest.
_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
# Binary strings and extension types begin with one of these.
_BIN_EXT_BYTES: Final = bytes([0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8])


def _shallow(body: bytes, limits: Limits) -> bool:
    """True if `body`, parsed with msgpack's defaults (string map keys only),
    can hold no extension type, no binary map key, and nothing nested past
    the limit: then its values need no walk.

    Most frames qualify: few container headers, no binary data.
    """
    return (len(body.translate(None, _BIN_EXT_BYTES)) == len(body)
            and len(body) - len(body.translate(None, _CONTAINER_BYTES)) <= limits.max_depth)


def frame_too_large(size: int, limits: Limits) -> RemoteProtocolError:
    """The (fatal) error for a frame of `size` bytes over the frame limit."""
    return RemoteProtocolError(
        f"frame of {size} bytes exceeds the limit of {limits.max_frame}",
        ErrorCode.TOO_LARGE, fatal=True,
    )


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
        raise frame_too_large(len(body), limits)
    shallow = _shallow(body, limits)
    try:
        if shallow:
            obj = _unpackb(body)
        else:
            # msgpack decodes the timestamp extension (-1) itself, without
            # asking ext_hook; max_ext_len=0 makes it refuse that one too.
            # Non-string map keys are allowed in the envelope (ignored like
            # any unknown key) and refused inside values by the walk.
            obj = _unpackb(body, strict_map_key=False, ext_hook=_reject_ext, max_ext_len=0)
    except Exception as exc:
        if not shallow or "map key" not in str(exc):
            _unpack_failed(exc)
        try:
            obj = _unpackb(body, strict_map_key=False, ext_hook=_reject_ext, max_ext_len=0)
        except Exception as again:
            _unpack_failed(again)
        shallow = False
    if type(obj) is not dict:
        raise _bad("a body must be a msgpack map")
    tag = obj.get("t")
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        if tag is None:
            raise _bad("missing message type 't'", _request_id(obj))
        raise _bad(f"unknown message type {tag!r}", _request_id(obj))
    message = decoder(obj, limits, shallow)
    if type(message) is Patch:
        try:
            _check_patch(message, limits)
        except ValueError as exc:
            raise _bad(str(exc), _request_id(obj)) from None
    return message


def _unpack_failed(exc: BaseException) -> NoReturn:
    """Raises the protocol error for a body msgpack could not parse."""
    if isinstance(exc, UnicodeDecodeError):
        raise _bad("invalid UTF-8 in a string") from None
    if isinstance(exc, msgpack.ExtraData):
        raise _bad("trailing bytes after the msgpack body") from None
    if isinstance(exc, msgpack.StackError):
        raise _bad("nesting too deep") from None
    text = str(exc) if isinstance(exc, ValueError) else ""
    if "max_ext_len" in text or "timestamp" in text:
        raise _bad("msgpack extension types are not allowed") from None
    raise _bad(f"malformed msgpack: {text}" if text else "malformed msgpack") from None


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
    if type(message) is Patch:
        _check_patch(message, limits)
