"""Whether a principal may make a request of a session."""

from __future__ import annotations

from collections.abc import Mapping

from nexus_protocol import ErrorCode

from .._auth import scope_allows, verify_token
from .._errors import RequestError
from .._principal import Principal

__all__ = ["authorize"]


def authorize(principal: Principal, session_id: str, tokens: Mapping[str, str],
              token: str | None, needed: str) -> None:
    """Checks that `principal` holds scope `needed` on the session: the scope
    of `token` if the request carries one (checked against the session's
    `tokens`, digest -> scope, and remembered for requests without one),
    else the scope the principal's last token proved (SPEC section 11).

    Raises:
        RequestError: `unauthorized` (no token, or a wrong one), or
            `forbidden` (a token of too small a scope).
    """
    if token is None:
        granted = principal.grants.get(session_id)
    else:
        # A request that carries a token is served with that token's scope
        # alone: never refused, nor raised, on the strength of an earlier
        # one (a gateway may multiplex many users over one connection).
        granted = verify_token(token, tokens)
        if granted is None:
            raise RequestError(ErrorCode.UNAUTHORIZED,
                               f"the token is not valid for session {session_id}")
        principal.remember(session_id, granted)
    if granted is None:
        if needed == "admin" and principal.admin:
            return
        raise RequestError(ErrorCode.UNAUTHORIZED, f"session {session_id} needs a token")
    if not scope_allows(granted, needed):
        if needed == "admin" and principal.admin:
            return
        raise RequestError(ErrorCode.FORBIDDEN,
                           f"this token's scope is {granted!r}; the request needs {needed!r}")
