"""``/mcp``: the MCP channel over streamable HTTP, on the HTTP listener.

The server is `nexus_mcp`'s (the one the stdio bridge serves too); here its
backend is the session service. The SDK's `StreamableHTTPSessionManager`
runs the MCP sessions in the daemon's services nursery (`McpChannel.run`);
each MCP session gets one `Principal` (channel ``mcp``; its peer, for the
limits, the client's address) and one `Binding`, made at its first request
after `initialize` and ended with it (closed by the client, idle past the
SDK's timeout, or the daemon stopping). A request of the 2026-07-28
protocol, which has no sessions, is bound alone. A bearer token on the request that
makes the binding is the session token it uses (the admin key or the create
key count as they do on the rest of the listener). Requests pass the
listener's browser rules (`BrowserRules`: `Host`, and `Origin` on every
request) before the SDK sees them.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from nexus_mcp import Binding, WatchRefused, build_server
from nexus_protocol import (
    Detach,
    ErrorCode,
    Limits,
    Message,
    Progress,
    Result,
    Run,
    RunStarted,
    decode_body,
)
from starlette.types import Receive, Scope, Send

from .._errors import RequestError
from .._limits import peer_of_address
from .._origins import BrowserRules
from .._principal import Principal
from .._service import SessionService
from .._version import __version__
from ._app import HttpSettings, error_response
from ._mapping import HttpError

__all__ = ["McpChannel"]

log = logging.getLogger("nexusd.mcp")

_ids = itertools.count(1)

#: Events a subscription holds for a notifier that has not sent them yet;
#: past it the subscription lags, and follows on (every subscribed resource
#: is notified once).
FOLLOW_QUEUE: Final = 256

# Events were checked when written: decoding them must not refuse any.
_EVENT_LIMITS: Final = Limits(max_frame=0xFFFF_FFFF, max_key=1 << 20, max_depth=1 << 16,
                              max_patch=1 << 30)


class _Follower:
    """The `EventSink` of one MCP subscription: a bounded queue of events."""

    def __init__(self) -> None:
        self._queue: deque[bytes | Message] = deque()
        self._wake = trio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def push_event(self, body: bytes) -> bool:
        if len(self._queue) >= FOLLOW_QUEUE:
            return False
        self._put(body)
        return True

    def reply_event(self, body: bytes) -> None:
        self._put(body)

    def reply(self, message: Message) -> None:
        self._put(message)

    def _put(self, item: bytes | Message) -> None:
        self._queue.append(item)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def events(self) -> AsyncIterator[Message]:
        while not self._closed:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            yield decode_body(item, _EVENT_LIMITS) if isinstance(item, bytes) else item


class _RunFollower:
    """The sink of a run started over MCP: its reply, then its progress and
    result (progress past `FOLLOW_QUEUE` waiting is dropped: the session's
    journal keeps it)."""

    def __init__(self) -> None:
        self._queue: deque[Message] = deque()
        self._wake = trio.Event()

    def reply(self, message: Message) -> None:
        if isinstance(message, Progress) and len(self._queue) >= FOLLOW_QUEUE:
            return
        self._queue.append(message)
        self._wake.set()

    def reply_event(self, body: bytes) -> None:
        pass  # a run's events come as replies

    async def events(self) -> AsyncIterator[Message]:
        while True:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            message = self._queue.popleft()
            yield message
            if isinstance(message, Result) or not isinstance(message, RunStarted | Progress):
                return


class ServiceBackend:
    """`nexus_mcp.Backend` over the session service, for one principal."""

    def __init__(self, service: SessionService, principal: Principal) -> None:
        self.service = service
        self.principal = principal

    async def call(self, request: Message) -> Message:
        return await self.service.call(self.principal, request)

    @asynccontextmanager
    async def run(self, request: Run) -> AsyncIterator[AsyncIterator[Message]]:
        follower = _RunFollower()
        await self.service.submit(self.principal, request, follower)
        yield follower.events()

    @asynccontextmanager
    async def watch(self, session_id: str, token: str | None
                    ) -> AsyncIterator[AsyncIterator[Message]]:
        follower = _Follower()
        try:
            await self.service.subscribe(self.principal, session_id, follower,
                                         channel="mcp", token=token)
        except RequestError as exc:
            raise WatchRefused(exc.code.value, exc.message) from None
        try:
            yield follower.events()
        finally:
            follower.close()
            with trio.move_on_after(5, shield=True):
                await self.service.call(self.principal, Detach(id=0, session_id=session_id))


class _SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, telling the channel when an MCP session ends."""

    channel: McpChannel

    async def _discard_session(self, session_id: str, transport: Any) -> None:
        await super()._discard_session(session_id, transport)
        await self.channel.end(session_id)


class McpChannel:
    """The ``/mcp`` endpoint (`app`, an ASGI app) and its MCP sessions."""

    def __init__(self, service: SessionService, settings: HttpSettings, browser: BrowserRules,
                 stopping: trio.Event, *, max_sessions: int, idle_timeout: float) -> None:
        self.service = service
        self.settings = settings
        self.browser = browser
        self.stopping = stopping
        self.server = build_server(self._binding, version=__version__)
        self.manager = _SessionManager(self.server, max_request_body_size=settings.max_body,
                                       max_sessions=max_sessions,
                                       session_idle_timeout=idle_timeout)
        self.manager.channel = self
        self._bindings: dict[str, Binding] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def sessions(self) -> int:
        """MCP sessions bound to the daemon."""
        return len(self._bindings)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Runs the MCP sessions until cancelled; when the daemon starts
        draining (`stopping`), the MCP sessions end."""
        async with trio.open_nursery() as nursery, self.manager.run():
            self._nursery = nursery
            task_status.started()
            await self.stopping.wait()
            for session_id, transport in list(self.manager._server_instances.items()):
                await self.manager._discard_session(session_id, transport)
            await trio.sleep_forever()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of ``/mcp``."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if self.stopping.is_set() or self._nursery is None:
                raise HttpError(ErrorCode.UNAVAILABLE, "the MCP channel is not serving "
                                "(the daemon is starting or shutting down)", retry_after=1.0)
            # Every request, reads included: MCP asks servers to check the
            # `Origin` of each (its GET stream carries the session's changes).
            refused = self.browser.check(headers.get("origin"), headers.get("host"))
            if refused is not None:
                raise HttpError(ErrorCode.FORBIDDEN, refused)
        except HttpError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)

    def _binding(self, ctx: ServerRequestContext[Any, Any]) -> Binding:
        request = ctx.request
        if request is None:
            raise RuntimeError("an MCP request without its HTTP request")
        session_id = request.headers.get("mcp-session-id")
        if session_id is None:
            # The 2026-07-28 protocol has no sessions: each request carries
            # its credential, and is bound alone.
            return self._bind(request)
        binding = self._bindings.get(session_id)
        if binding is None:
            binding = self._bindings[session_id] = self._bind(request)
        return binding

    def _bind(self, request: Any) -> Binding:
        settings = self.settings
        admin = create = False
        token = None
        authorization = request.headers.get("authorization")
        if authorization:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() == "bearer" and credential:
                if settings.check_admin_key(credential):
                    admin = True
                elif settings.check_create_key(credential):
                    create = True
                else:
                    token = credential
        address = request.scope.get("client")
        peer = peer_of_address(address[0] if address else "?")
        may_create = admin or create or not (settings.require_create_key and peer.network)
        principal = Principal(f"m{next(_ids)}", "mcp", "mcp-http", admin, peer=peer,
                              may_create=may_create)
        assert self._nursery is not None
        return Binding(ServiceBackend(self.service, principal), self._nursery,
                       default_token=token)

    async def end(self, session_id: str) -> None:
        """The MCP session `session_id` is over: its binding goes."""
        binding = self._bindings.pop(session_id, None)
        if binding is not None:
            binding.close()
            backend = binding.backend
            assert isinstance(backend, ServiceBackend)
            await self.service.disconnect(backend.principal)
