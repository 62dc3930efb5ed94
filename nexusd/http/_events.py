"""``GET /sessions/{id}/events``: the session's changes as Server-Sent Events.

The stream attaches like any watcher (`SessionService.subscribe`), resuming
after `Last-Event-ID` (or ``?since=``), the `seq` of the last change the
client saw. A refused attach (no token, no session, ...) is answered with
the usual JSON error before the stream starts; once it has started, the
stream is written by `EventStream.respond` and ends as `_sse` says.
"""

from __future__ import annotations

from nexus_protocol import Attached
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._errors import RequestError
from .._principal import Principal
from .._service import SessionService
from ._app import ChannelParts, Exchange, parse_uint
from ._mapping import HttpError
from ._sse import EventStream

__all__ = ["events"]

_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


class _StreamResponse(Response):
    """Writes an attached `EventStream`; detaches it however it ends."""

    def __init__(self, parts: ChannelParts, service: SessionService, principal: Principal,
                 stream: EventStream, attached: Attached) -> None:
        super().__init__(status_code=200)
        self._parts = parts
        self._service = service
        self._principal = principal
        self._stream = stream
        self._attached = attached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = self._parts
        parts.streams += 1
        try:
            await self._stream.respond(
                self._attached, scope, receive, send, stopping=parts.stopping,
                abort=lambda: parts.abort_client(scope.get("client")), headers=_HEADERS)
        finally:
            parts.streams -= 1
            self._stream.close()
            await self._service.disconnect(self._principal)


async def events(x: Exchange) -> Response:
    last = x.request.headers.get("last-event-id")
    since = parse_uint(last if last is not None else x.query.get("since"),
                       "Last-Event-ID" if last is not None else "since")
    settings = x.parts.settings
    stream = EventStream(max_events=settings.sse_queue, max_bytes=settings.sse_queue_bytes,
                         heartbeat=settings.sse_heartbeat,
                         write_timeout=settings.write_timeout)
    principal = x.principal()
    service = x.parts.service
    try:
        attached = await service.subscribe(principal, x.path["session_id"], stream,
                                           since=since, channel=principal.channel,
                                           token=x.token)
    except RequestError as exc:
        stream.close()
        await service.disconnect(principal)
        raise HttpError(exc.code, exc.message, retry_after=exc.retry_after) from None
    return _StreamResponse(x.parts, service, principal, stream, attached)
