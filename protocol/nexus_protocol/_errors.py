"""Error codes of the wire protocol and the two exception families.

A `RemoteProtocolError` means the peer broke the rules; it carries the code to
answer with. A `LocalProtocolError` means this side tried to break them.
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ErrorCode(enum.StrEnum):
    """Stable error codes; `protocol/SPEC.md` says what a client does on each."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    CONFLICT = "conflict"
    BUSY = "busy"
    TOO_LARGE = "too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


#: Codes after which the sender closes the connection.
FATAL_CODES = frozenset(
    {ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_VERSION}
)


class ProtocolError(Exception):
    """Base class of protocol violations.

    Attributes:
        code: the `ErrorCode` to answer with.
        fatal: True when the connection cannot continue (the byte stream is no
            longer in sync, or the handshake failed).
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST,
                 *, fatal: bool = False, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fatal = fatal
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.value!r})"


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    `request_id` is set when the offending frame was a request whose id could be
    read, so the error can be answered to that request.
    """
