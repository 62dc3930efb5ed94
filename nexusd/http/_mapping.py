"""JSON <-> protocol messages, in one place.

A request's JSON body (and its path, query and headers, which the routes
pick) becomes a `nexus_protocol` request, checked by the protocol's own
`validate` against the daemon's limits; a reply becomes the JSON of its
fields; an `error` reply becomes the one error shape of the HTTP channel,
``{"error": {"code": ..., "message": ...}}``, with the HTTP status its code
maps to. Events (for the event stream) become JSON the same way as replies.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs
from nexus_protocol import Error, ErrorCode, Limits, Message, Report, validate

__all__ = [
    "STATUS",
    "HttpError",
    "build",
    "dumps",
    "error_body",
    "message_json",
    "parse_json",
    "parse_version",
    "reply_json",
]

#: The HTTP status of each protocol error code. `conflict` is 409, or 412
#: when the request carried a precondition (`If-Match`) that failed.
STATUS: Final[Mapping[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.EXPIRED: 410,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 429,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

# msgpack's integers: what a value may hold and still be stored.
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1


class HttpError(Exception):
    """A request the HTTP channel answers with an error; changes nothing.

    `status` defaults to the code's (`STATUS`); `retry_after` becomes the
    `Retry-After` header.
    """

    def __init__(self, code: ErrorCode, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS.get(code, 500) if status is None else status
        self.retry_after = retry_after

    @classmethod
    def from_reply(cls, reply: Error, *, precondition: bool = False) -> HttpError:
        """The error an `error` reply becomes; `precondition`: the request
        carried `If-Match`, so a conflict is 412."""
        try:
            code = ErrorCode(reply.code)
        except ValueError:
            code = ErrorCode.INTERNAL  # as the protocol says clients treat it
        status = 412 if precondition and code is ErrorCode.CONFLICT else None
        return cls(code, reply.message or code.value, status=status,
                   retry_after=reply.retry_after)

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="nexusd"'
        return headers


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# ----------------------------------------------------------------- JSON in


def _parse_int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"the integer {text[:40]} does not fit in 64 bits")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_json(body: bytes) -> Any:
    """The JSON document in `body` (UTF-8).

    Raises:
        HttpError: `bad_request`, saying what is wrong with it.
    """
    if not body.strip():
        raise HttpError(ErrorCode.BAD_REQUEST, "the request needs a JSON body")
    try:
        return json.loads(body, parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise HttpError(ErrorCode.BAD_REQUEST, "the JSON body nests too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(ErrorCode.BAD_REQUEST, f"the body is not JSON: {exc}") from None


M = TypeVar("M", bound=Message)


def build(cls: type[M], limits: Limits, body: Mapping[str, Any] | None = None,
          allowed: tuple[str, ...] = (), **fields: Any) -> M:
    """A `cls` request made of `fields` and, from the JSON object `body`, the
    fields named in `allowed`; checked as the protocol checks one off the wire.

    Raises:
        HttpError: `bad_request` naming the field at fault (a field of `body`
            not in `allowed` is at fault too), or `too_large` for a patch of
            too many keys.
    """
    if body is not None:
        if not isinstance(body, dict):
            raise HttpError(ErrorCode.BAD_REQUEST, "the JSON body must be an object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            expected = ", ".join(allowed) or "none"
            raise HttpError(ErrorCode.BAD_REQUEST,
                            f"unknown field {unknown[0]!r} (expected: {expected})")
        fields = {**{k: v for k, v in body.items() if v is not None}, **fields}
    message = cls(id=0, **fields)  # type: ignore[call-arg]  # every request has an id
    try:
        validate(message, limits)
    except ValueError as exc:
        text = str(exc).removeprefix(f"{cls.TAG}: ")
        raise HttpError(ErrorCode.BAD_REQUEST, text) from None
    return message


def parse_version(header: str) -> int:
    """The version in an `If-Match` header: ``"3"`` (an ETag) or ``3``.

    Raises:
        HttpError: `bad_request` for anything else (a list, a weak tag, ``*``).
    """
    text = header.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        text = text[1:-1]
    if not text.isdigit() or len(text) > 19:
        raise HttpError(ErrorCode.BAD_REQUEST,
                        f"If-Match must be one version as the ETag gives it (\"3\"), "
                        f"not {header[:40]!r}")
    return int(text)


# ---------------------------------------------------------------- JSON out


def _default(value: Any) -> Any:
    # Values written by msgpack clients may hold binary strings: base64 here.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(document: Any) -> bytes:
    """`document` as compact UTF-8 JSON (binary strings as base64)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False,
                      default=_default).encode()


def message_json(message: Message) -> dict[str, Any]:
    """The fields of a reply or an event, by their protocol names (no `id`)."""
    fields = attrs.asdict(message, recurse=False)  # type: ignore[arg-type]
    fields.pop("id", None)
    return fields


def reply_json(reply: Message, *, precondition: bool = False) -> dict[str, Any]:
    """The JSON of a successful reply (a `report` is its report alone).

    Raises:
        HttpError: `reply` is an `error` reply.
    """
    if type(reply) is Error:
        raise HttpError.from_reply(reply, precondition=precondition)
    if type(reply) is Report:
        return reply.report
    return message_json(reply)
