"""The HTTP channel: a Starlette app over the session service.

Routes are declared once, in `_routes`, with what the OpenAPI document says
of them; this module serves them. Every answer is JSON, errors included,
whatever fails: never a traceback, never an HTML page (the inspector's
page, at `/`, aside: `_inspector`). Before any route, a request is checked
against the browser rules (`BrowserRules`: its `Host` must be a name the
daemon answers to, and a write, anything but GET, HEAD and OPTIONS, must
come from no page or an allowed one) and refused while the daemon drains.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from nexus_protocol import ErrorCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._origins import BrowserRules
from .._service import SessionService
from ._app import ChannelParts, Exchange, HttpSettings, error_response
from ._mapping import HttpError
from ._metrics import Metrics
from ._routes import ROUTES

__all__ = ["HttpChannel"]

log = logging.getLogger("nexusd.http")

Handler = Callable[[Exchange], Awaitable[Response]]

#: Methods that change nothing: a page of any origin may send them (the
#: browser keeps their answers from it unless CORS allows, and nexusd's
#: never do).
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class HttpChannel:
    """The HTTP channel of one daemon: the Starlette app (`app`), its
    listener's shutdown hooks, and `stopping`, set when the daemon drains."""

    def __init__(self, service: SessionService, settings: HttpSettings, metrics: Metrics,
                 browser: BrowserRules, figures: Callable[[], Awaitable[dict[str, Any]]],
                 abort_client: Callable[[tuple[str, int] | None], None], *,
                 mcp: bool = True, mcp_max_sessions: int = 1000,
                 mcp_idle_timeout: float = 1800.0) -> None:
        self.parts = ChannelParts(service, settings, metrics, figures, abort_client)
        self.metrics = metrics
        self.browser = browser
        # One Starlette route per path, so that a method it lacks is answered
        # 405 with every method it has.
        by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
        for endpoint in ROUTES:
            by_path.setdefault(endpoint.starlette_path, {})[endpoint.method] = \
                self._endpoint(endpoint.handler, endpoint.path)
        routes = [Route(path, _by_method(methods), methods=list(methods))
                  for path, methods in by_path.items()]
        # `/mcp`: the MCP channel, served by the SDK behind the same browser rules.
        # Imported here: the SDK takes seconds to import, which a daemon
        # without its HTTP listener should not wait for at start.
        from ._mcp import McpChannel

        self.mcp = McpChannel(service, settings, browser, self.parts.stopping,
                              max_sessions=mcp_max_sessions,
                              idle_timeout=mcp_idle_timeout) if mcp else None
        if self.mcp is not None:
            routes.append(Route("/mcp", _Asgi(self.mcp.app),
                                methods=["GET", "POST", "DELETE"]))
        self.app = Starlette(routes=routes, exception_handlers={
            HTTPException: self._routing_error, Exception: self._internal_error})

    def _endpoint(self, handler: Handler, template: str) -> Callable[[Request],
                                                                     Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            method = request.method
            try:
                if self.parts.stopping.is_set():
                    raise HttpError(ErrorCode.UNAVAILABLE, "the daemon is shutting down",
                                    retry_after=1.0)
                origin = request.headers.get("origin")
                refused = self.browser.check(None if method in _SAFE_METHODS else origin,
                                             request.headers.get("host"))
                if refused is not None:
                    raise HttpError(ErrorCode.FORBIDDEN, refused)
                response = await handler(Exchange(self.parts, request))
                code = None
            except HttpError as exc:
                response, code = error_response(exc), exc.code.value
            except ClientDisconnect:
                response, code = Response(status_code=400), "bad_request"
            except Exception:
                log.exception("HTTP %s %s failed", method, template)
                response = error_response(HttpError(
                    ErrorCode.INTERNAL, "internal error; see the daemon's log"))
                code = ErrorCode.INTERNAL.value
            self.metrics.request(method, template, response.status_code, code)
            return response

        return endpoint

    async def _routing_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            error = HttpError(ErrorCode.BAD_REQUEST, f"{request.method} is not allowed on "
                              f"{request.url.path}", status=405)
        elif exc.status_code == 404:
            error = HttpError(ErrorCode.NOT_FOUND, f"no route {request.url.path} "
                              "(see /openapi.json)")
        else:
            error = HttpError(ErrorCode.BAD_REQUEST, str(exc.detail), status=exc.status_code)
        self.metrics.request(request.method, "(unrouted)", error.status, error.code.value)
        response = error_response(error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(HttpError(ErrorCode.INTERNAL,
                                        "internal error; see the daemon's log"))

    def shutdown(self) -> None:
        """New requests are refused `unavailable`; event streams end with a
        `shutdown` event."""
        self.parts.stopping.set()

    @property
    def stopping(self) -> trio.Event:
        return self.parts.stopping




class _Asgi:
    """An ASGI app as a Starlette route's endpoint (a plain function would be
    taken for a request handler)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _by_method(endpoints: dict[str, Callable[[Request], Awaitable[Response]]]
               ) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        # HEAD is served as GET (Starlette allows it wherever GET is).
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return dispatch
