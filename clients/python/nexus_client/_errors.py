"""The client's exceptions, one class per meaning.

Every error the daemon answers with (`Error(code, message, retry_after)`) is
raised as the `NexusError` subclass for its code (see `ERROR_CLASSES`); an
unknown code becomes `InternalError`, as the protocol asks. Problems found on
this side of the wire have their own classes and client-side codes:
`ConnectionLost` / `CannotConnect` ("connection_lost" / "cannot_connect"),
`ProtocolError` ("protocol_error") and `Timeout` ("timeout").

`Forbidden` is a subclass of `Unauthorized`: both mean "this credential may not
do that", so ``except Unauthorized`` covers a bad token and a token whose scope
is too narrow; catch `Forbidden` first to tell them apart.
"""

from __future__ import annotations

from typing import Final

from nexus_protocol import Error, ErrorCode

__all__ = [
    "ERROR_CLASSES",
    "BadRequest",
    "Busy",
    "CannotConnect",
    "Conflict",
    "ConnectionLost",
    "Forbidden",
    "InternalError",
    "NexusError",
    "ProtocolError",
    "SessionExpired",
    "SessionNotFound",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedVersion",
    "error_from_reply",
]


class NexusError(Exception):
    """Base class of every error this package raises.

    Attributes:
        code: the protocol error code (`nexus_protocol.ErrorCode` values) or a
            client-side code ("connection_lost", "cannot_connect",
            "protocol_error", "timeout").
        message: what the daemon (or the client) said about it.
        retry_after: seconds the daemon asks to wait before retrying, if any.
        session_id: the session the failed request was about, if any.
    """

    default_code: str = ErrorCode.INTERNAL.value
    default_message: str = "request failed"

    def __init__(self, message: str = "", *, code: str | None = None,
                 retry_after: float | None = None, session_id: str | None = None) -> None:
        self.message = message or self.default_message
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.session_id = session_id
        super().__init__(self.message)

    def __repr__(self) -> str:
        extra = f", retry_after={self.retry_after!r}" if self.retry_after is not None else ""
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}{extra})"


class BadRequest(NexusError):
    """The request was malformed or not allowed as sent (``bad_request``).

    Also raised, before anything is sent, when the protocol codec rejects the
    request locally (a key too long, a value msgpack cannot carry).
    """

    default_code = ErrorCode.BAD_REQUEST.value
    default_message = "bad request"


class Unauthorized(NexusError):
    """The token (or admin key) is missing or not valid (``unauthorized``)."""

    default_code = ErrorCode.UNAUTHORIZED.value
    default_message = "not authorized"


class Forbidden(Unauthorized):
    """The credential is valid but its scope does not allow this (``forbidden``)."""

    default_code = ErrorCode.FORBIDDEN.value
    default_message = "forbidden"


class SessionNotFound(NexusError):
    """No such session, or no such key for a delete (``not_found``)."""

    default_code = ErrorCode.NOT_FOUND.value
    default_message = "not found"


class SessionExpired(NexusError):
    """The session expired or was invalidated; its data is gone (``expired``)."""

    default_code = ErrorCode.EXPIRED.value
    default_message = "session expired"


class Conflict(NexusError):
    """A write's `expect` did not match the current version (``conflict``)."""

    default_code = ErrorCode.CONFLICT.value
    default_message = "version conflict"


class Busy(NexusError):
    """The daemon or the session is overloaded; retry after `retry_after` (``busy``)."""

    default_code = ErrorCode.BUSY.value
    default_message = "busy; retry later"


class TooLarge(NexusError):
    """A frame exceeded the size limit (``too_large``)."""

    default_code = ErrorCode.TOO_LARGE.value
    default_message = "message too large"


class UnsupportedVersion(NexusError):
    """Client and daemon share no protocol version (``unsupported_version``)."""

    default_code = ErrorCode.UNSUPPORTED_VERSION.value
    default_message = "no common protocol version"


class Unavailable(NexusError):
    """The daemon cannot serve this now (``unavailable``): it is shutting down,
    or the feature (workflow runs in protocol v1) is not offered."""

    default_code = ErrorCode.UNAVAILABLE.value
    default_message = "unavailable"


class InternalError(NexusError):
    """The daemon failed (``internal``), or answered with a code this client
    does not know (`code` keeps the original)."""

    default_code = ErrorCode.INTERNAL.value
    default_message = "internal error in the daemon"


class ConnectionLost(NexusError):
    """The connection dropped, or could not be re-established.

    A request in flight when the connection drops fails with this error and is
    never re-sent: the daemon may or may not have applied it.
    """

    default_code = "connection_lost"
    default_message = "connection to the daemon lost"


class CannotConnect(ConnectionLost):
    """The daemon could not be reached at all (nothing listening, refused,
    handshake timed out). A `ConnectionLost`, so one ``except`` covers both."""

    default_code = "cannot_connect"
    default_message = "cannot connect to the daemon"


class ProtocolError(NexusError):
    """The daemon sent something the protocol does not allow."""

    default_code = "protocol_error"
    default_message = "protocol violation by the daemon"


class Timeout(NexusError):
    """No answer within the configured request timeout."""

    default_code = "timeout"
    default_message = "timed out waiting for the daemon"


#: Protocol error code -> exception class.
ERROR_CLASSES: Final[dict[str, type[NexusError]]] = {
    ErrorCode.BAD_REQUEST.value: BadRequest,
    ErrorCode.UNAUTHORIZED.value: Unauthorized,
    ErrorCode.FORBIDDEN.value: Forbidden,
    ErrorCode.NOT_FOUND.value: SessionNotFound,
    ErrorCode.EXPIRED.value: SessionExpired,
    ErrorCode.CONFLICT.value: Conflict,
    ErrorCode.BUSY.value: Busy,
    ErrorCode.TOO_LARGE.value: TooLarge,
    ErrorCode.UNSUPPORTED_VERSION.value: UnsupportedVersion,
    ErrorCode.UNAVAILABLE.value: Unavailable,
    ErrorCode.INTERNAL.value: InternalError,
}


def error_from_reply(reply: Error, session_id: str | None = None) -> NexusError:
    """The exception for an `Error` reply; unknown codes become `InternalError`."""
    cls = ERROR_CLASSES.get(reply.code, InternalError)
    return cls(reply.message, code=reply.code, retry_after=reply.retry_after,
               session_id=session_id)
