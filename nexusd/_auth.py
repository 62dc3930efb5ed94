"""Session tokens and scopes.

A token is 256 random bits, shown once at creation (or grant) and kept only as
its SHA-256 digest. Checking one compares digests with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Final

__all__ = [
    "SCOPES",
    "hash_token",
    "new_session_id",
    "new_token",
    "scope_allows",
    "verify_token",
]

#: Scopes in increasing power; each includes the ones before it.
SCOPES: Final = ("read", "write", "admin")
_RANK: Final = {s: i for i, s in enumerate(SCOPES)}

TOKEN_PREFIX: Final = "nxs_"
ADMIN_KEY_PREFIX: Final = "nxa_"


def new_session_id() -> str:
    """128 random bits as 32 hex digits: unguessable, safe in paths and argv."""
    return secrets.token_hex(16)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_admin_key() -> str:
    """256 random bits behind a prefix: never read as a flag (`-…`) on a
    command line such as `nexus status --admin-key KEY`."""
    return ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def verify_token(token: str, hashes: Mapping[str, str]) -> str | None:
    """The scope `token` grants among `hashes` (digest -> scope), or None.

    Every stored digest is compared, in constant time, whatever matches.
    """
    digest = hash_token(token)
    found = None
    for stored, scope in hashes.items():
        if hmac.compare_digest(stored, digest):
            found = scope
    return found


def scope_allows(granted: str, needed: str) -> bool:
    return _RANK.get(granted, -1) >= _RANK[needed]
