"""The inspector: a page at `/` that shows sessions live, in a browser.

Its files are built from `clients/js/inspector/` (``npm run build`` in
`clients/js/`) into this package's `static/` directory and served as they
are: nothing is fetched from elsewhere and nothing is built at run time.
The page signs in with a session token or the admin key, kept in the page's
memory and sent as ``Authorization: Bearer`` to the JSON API and the event
stream of this same listener; it never puts a secret in a URL.

Every file goes out with headers that hold the page to that: a
Content-Security-Policy that runs only this origin's scripts (no inline
script, no `eval`), connects only to this origin and lets no other page
frame it, and `nosniff`, `no-referrer`, `no-store`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files
from typing import Final

from starlette.responses import Response

from ._app import Exchange

__all__ = ["SECURITY_HEADERS", "inspector_file"]

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}



@cache
def _read(name: str) -> bytes:
    return files(__package__).joinpath("static", name).read_bytes()


def inspector_file(name: str, media: str) -> Callable[[Exchange], Awaitable[Response]]:
    """The route handler that serves the file `name` of `static/` as `media`."""

    async def inspector(x: Exchange) -> Response:
        return Response(_read(name), media_type=media, headers=SECURITY_HEADERS)

    inspector.__name__ = f"inspector_{name.partition('.')[0]}"
    return inspector
