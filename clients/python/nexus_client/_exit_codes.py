"""The ``nexus`` CLI's exit codes: one table, for scripts to rely on."""

from __future__ import annotations

import enum
import textwrap
from typing import Final

import trio

from ._errors import (
    BadRequest,
    Busy,
    Conflict,
    ConnectionLost,
    NexusError,
    ProtocolError,
    SessionExpired,
    SessionNotFound,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedVersion,
)

__all__ = ["EXIT_CODE_DESCRIPTIONS", "ExitCode", "exit_code_for", "exit_code_table"]


class ExitCode(enum.IntEnum):
    """Exit status of ``nexus``; see `EXIT_CODE_DESCRIPTIONS`."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    EXPIRED = 4
    UNAUTHORIZED = 5
    CONFLICT = 6
    UNAVAILABLE = 7
    CONNECTION = 8
    PROTOCOL = 9
    INVALIDATED = 10
    INTERRUPTED = 130


EXIT_CODE_DESCRIPTIONS: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "success (also: `watch` stopped with Ctrl-C)",
    ExitCode.FAILURE: "internal error in the daemon or the CLI",
    ExitCode.USAGE: "bad command line, or a request the daemon rejected as malformed "
                    "(bad_request, too_large)",
    ExitCode.NOT_FOUND: "session (or key) not found",
    ExitCode.EXPIRED: "session expired (`watch`: it expired while watched)",
    ExitCode.UNAUTHORIZED: "missing or invalid token or admin key; scope too narrow",
    ExitCode.CONFLICT: "version conflict (--expect did not match)",
    ExitCode.UNAVAILABLE: "busy, unavailable or timed out: retry later (also `run` "
                          "on protocol v1 daemons, which do not execute workflows)",
    ExitCode.CONNECTION: "cannot connect to the daemon, or the connection was lost",
    ExitCode.PROTOCOL: "protocol error or no common protocol version",
    ExitCode.INVALIDATED: "`watch`: the session was invalidated while watched",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) outside `watch`",
}

# Most specific first: Forbidden is an Unauthorized, CannotConnect a ConnectionLost.
_BY_CLASS: Final[tuple[tuple[type[NexusError], ExitCode], ...]] = (
    (SessionNotFound, ExitCode.NOT_FOUND),
    (SessionExpired, ExitCode.EXPIRED),
    (Unauthorized, ExitCode.UNAUTHORIZED),
    (Conflict, ExitCode.CONFLICT),
    (Busy, ExitCode.UNAVAILABLE),
    (Unavailable, ExitCode.UNAVAILABLE),
    (Timeout, ExitCode.UNAVAILABLE),
    (ConnectionLost, ExitCode.CONNECTION),
    (ProtocolError, ExitCode.PROTOCOL),
    (UnsupportedVersion, ExitCode.PROTOCOL),
    (BadRequest, ExitCode.USAGE),
    (TooLarge, ExitCode.USAGE),
)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an exception that ends a command."""
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, trio.ClosedResourceError | trio.BrokenResourceError):
        return ExitCode.CONNECTION
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILURE


def exit_code_table(width: int = 79) -> str:
    """The table as shown in ``nexus --help``."""
    return "\n".join(
        textwrap.fill(text, width, initial_indent=f"  {int(code):>3}  ",
                      subsequent_indent=" " * 7)
        for code, text in EXIT_CODE_DESCRIPTIONS.items())
