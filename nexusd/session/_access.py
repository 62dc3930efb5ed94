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
    """Checks that `principal` holds scope `needed` on the session, proving
    `token` (if the request carries one) against the session's `tokens`
    (digest -> scope) and remembering the scope it proves.

    Raises:
        RequestError: `unauthorized` (no token, or a wrong one), or
            `forbidden` (a token of too small a scope).
    """
    granted = principal.grants.get(session_id)
    if token is not None:
        # Checked even when the principal has proven a scope already: a
        # request that carries a wrong token is refused, not served on the
        # strength of an earlier one (a gateway may multiplex many users).
        scope = verify_token(token, tokens)
        if scope is None:
            raise RequestError(ErrorCode.UNAUTHORIZED,
                               f"the token is not valid for session {session_id}")
        if granted is None or scope_allows(scope, granted):
            principal.remember(session_id, scope)
            granted = scope
    if granted is None:
        if needed == "admin" and principal.admin:
            return
        raise RequestError(ErrorCode.UNAUTHORIZED, f"session {session_id} needs a token")
    if not scope_allows(granted, needed):
        if needed == "admin" and principal.admin:
            return
        raise RequestError(ErrorCode.FORBIDDEN,
                           f"this token's scope is {granted!r}; the request needs {needed!r}")
