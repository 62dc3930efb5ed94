"""What a route of the HTTP channel works with: one request (`Exchange`)
and the channel's shared parts (`ChannelParts`).

Each request becomes a `Principal` of its own (channel from ``?channel=``,
the `X-Nexus-Channel` header or the body's ``channel``, default "api"; its
credential from ``Authorization: Bearer``: a session token, the daemon's
admin key, or its create key; its peer, for the limits, the client's
address) and one protocol request, which `SessionService.call` serves; the
reply becomes JSON (`_mapping`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

import attrs
import trio
from nexus_protocol import ErrorCode, Limits, Message
from starlette.requests import Request
from starlette.responses import Response

from .._limits import peer_of_address
from .._principal import Principal
from .._service import SessionService
from ._mapping import HttpError, dumps, error_body, parse_json
from ._metrics import Metrics

__all__ = ["ChannelParts", "Exchange", "HttpSettings", "error_response", "json_response",
           "parse_uint"]

log = logging.getLogger("nexusd.http")

_ids = itertools.count(1)

#: The longest channel label or client name taken from a request.
MAX_LABEL = 64


@attrs.frozen
class HttpSettings:
    """What the HTTP channel is bounded by (see the daemon's settings)."""

    server_name: str
    limits: Limits
    max_body: int
    read_timeout: float
    sse_heartbeat: float
    sse_queue: int
    sse_queue_bytes: int
    write_timeout: float
    check_admin_key: Callable[[str], bool]
    check_create_key: Callable[[str], bool] = lambda credential: False
    require_create_key: bool = False


@attrs.define(eq=False)
class ChannelParts:
    """What every route may use: the service, the settings, the metrics,
    `figures()` (the daemon's stats report), `abort_client(client)` (cuts a
    client's connection), `stopping` (set when the daemon drains) and the
    count of open event streams."""

    service: SessionService
    settings: HttpSettings
    metrics: Metrics
    figures: Callable[[], Awaitable[dict[str, Any]]]
    abort_client: Callable[[tuple[str, int] | None], None]
    stopping: trio.Event = attrs.Factory(trio.Event)
    streams: int = 0


def json_response(document: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    # A final newline: a shell prompt after `curl` starts on a line of its own.
    return Response(dumps(document) + b"\n", status, headers, media_type="application/json")


def error_response(error: HttpError) -> Response:
    return json_response(error_body(error.code.value, error.message), error.status,
                         error.headers())


def _label(value: str, what: str) -> str:
    if not value or len(value) > MAX_LABEL or not value.isprintable():
        raise HttpError(ErrorCode.BAD_REQUEST,
                        f"{what} must be 1 to {MAX_LABEL} printable characters")
    return value


class Exchange:
    """One HTTP request as a route sees it: its principal, credential and
    body, and `call` to have the service serve a protocol request."""

    def __init__(self, parts: ChannelParts, request: Request) -> None:
        self.parts = parts
        self.request = request
        self.limits = parts.settings.limits
        self.path: Mapping[str, str] = request.path_params
        self.query = request.query_params
        self.token: str | None = None
        admin = create = False
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise HttpError(ErrorCode.UNAUTHORIZED,
                                "Authorization must be 'Bearer <token or admin key>'")
            if parts.settings.check_admin_key(credential):
                admin = True
            elif parts.settings.check_create_key(credential):
                create = True
            else:
                self.token = credential
        self.admin = admin
        self.create_key = create
        self._principal: Principal | None = None

    @property
    def credential_given(self) -> bool:
        return self.admin or self.create_key or self.token is not None

    def principal(self, body_channel: Any = None) -> Principal:
        """The request's principal; its channel label comes from the query,
        the header, then `body_channel`, else "api".

        Raises:
            HttpError: `bad_request` for a label that is not one.
        """
        if self._principal is None:
            headers = self.request.headers
            channel = self.query.get("channel") or headers.get("x-nexus-channel")
            if channel is None and isinstance(body_channel, str):
                channel = body_channel
            client = headers.get("x-nexus-client") or "http"
            address = self.request.scope.get("client")
            peer = peer_of_address(address[0] if address else "?")
            settings = self.parts.settings
            may_create = self.admin or self.create_key or not (
                settings.require_create_key and peer.network)
            self._principal = Principal(f"h{next(_ids)}", _label(channel or "api", "channel"),
                                        _label(client, "X-Nexus-Client"), self.admin,
                                        peer=peer, may_create=may_create)
        return self._principal

    async def body(self) -> bytes:
        """The request body, at most `max_body` bytes, complete within
        `read_timeout`.

        Raises:
            HttpError: `too_large` past the limit, `bad_request` (408) for a
                body that does not come in time.
        """
        settings = self.parts.settings
        limit = settings.max_body
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        with trio.move_on_after(settings.read_timeout):
            async with aclosing(self.request.stream()) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
            return b"".join(chunks)
        raise HttpError(ErrorCode.BAD_REQUEST, "the request body did not come within "
                        f"{settings.read_timeout:g}s (read_timeout)", status=408)

    async def json(self, *, optional: bool = False) -> Any:
        """The JSON body (an empty body is `{}` when `optional`).

        Raises:
            HttpError: `bad_request` (not JSON), `too_large`.
        """
        body = await self.body()
        if optional and not body.strip():
            return {}
        return parse_json(body)

    async def call(self, request: Message, body_channel: Any = None) -> Message:
        """The service's reply to `request`, made by this request's principal."""
        return await self.parts.service.call(self.principal(body_channel), request)


def _too_large(limit: int) -> HttpError:
    return HttpError(ErrorCode.TOO_LARGE, f"the request body exceeds the limit of {limit} "
                                          "bytes (http_max_body)")


def parse_uint(text: str | None, name: str) -> int | None:
    """A non-negative integer from a query parameter or header (None if absent).

    Raises:
        HttpError: `bad_request` for anything else.
    """
    if text is None or text == "":
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 19:
        raise HttpError(ErrorCode.BAD_REQUEST,
                        f"{name} must be a non-negative integer, not {text[:40]!r}")
    return int(text)
