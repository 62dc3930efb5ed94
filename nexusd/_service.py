"""The session service: the one entry every channel adapter calls.

An adapter (the msgpack connection handler today; HTTP, MCP and a browser
channel next) turns its medium into a `Principal` and requests, and hands
each request here with a sink for its reply:

- `submit(principal, request, sink)` routes by the request's type: a session
  request goes to the session's actor (activating it if it is dormant) and is
  answered into `sink` when the actor has served it, with no task switch and
  no wait here beyond room in the actor's mailbox; a daemon-wide request is
  answered at once. Every failure becomes an `error` reply in `sink`.
- `await call(principal, request)` does the same and returns the reply.
- `await subscribe(principal, session_id, subscriber, since=...)` attaches
  `subscriber`: the changes after `since` (or a snapshot), then every change
  live, bounded by the subscriber itself (`push_event` returning False means
  lagging: it is sent `lagged` and dropped, and resumes from its `seq`).
- `disconnect(principal)` ends the principal's subscriptions when its
  channel goes away (and, for a worker, hands its runs back).

Workflow requests (`run`, `cancel_run`, and a worker's `register`,
`heartbeat` and reports) go to the `Workflows` engine, which journals each
step of a run through the session's actor (SPEC section 15).

Creating sessions is where an unauthenticated client could cost the daemon
the most, so the service checks it for every channel alike: a principal from
the network must have shown the create key if the daemon asks for one, and
takes a token from its peer's create bucket (`PeerLimits`); the registry
then applies the bounds on sessions themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from nexus_protocol import (
    Analytics,
    Attach,
    Attached,
    Create,
    Error,
    ErrorCode,
    ListSessions,
    Message,
    Ping,
    Pong,
    Report,
    SessionRequest,
    Sessions,
    Stats,
)

from ._errors import RequestError
from ._limits import PeerLimits
from ._principal import EventSink, Principal, ReplySink
from ._registry import Registry
from .session._analytics import ChannelAnalytics
from .session._mailbox import Disconnect, Envelope
from .store import Store, StoreError
from .workflows import Workflows

__all__ = ["Call", "SessionService"]

log = logging.getLogger("nexusd.service")

#: Sessions told per turn of the event loop that a closing channel no longer
#: watches them: each wakes its actor, and one connection may watch thousands.
DETACH_PER_TURN = 64

#: At most one line per this many seconds says that requests fail because
#: the store does (each such request is answered `unavailable`).
STORE_FAILURE_LOG_EVERY = 10.0

#: Requests only a daemon with workflows serves.
_WORKFLOW_TAGS = frozenset({"run", "cancel_run", "register", "heartbeat", "run_progress",
                            "run_complete", "run_fail"})

_DaemonRequest = Callable[[Principal, Any], Awaitable[Message]]


class Call:
    """A sink whose one reply a task awaits."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._reply: Message | None = None

    def reply(self, message: Message) -> None:
        if self._reply is None:
            self._reply = message
            self._done.set()

    def reply_event(self, body: bytes) -> None:
        pass  # a call never attaches: the actor refuses it a subscription

    @property
    def answered(self) -> bool:
        return self._reply is not None

    async def wait(self) -> Message:
        """The reply, once given (an `error` reply for a request that failed)."""
        await self._done.wait()
        assert self._reply is not None
        return self._reply


class _Subscription:
    """The sink of an attach made through `subscribe`: its first reply
    answers the attach; everything after goes to the subscriber."""

    def __init__(self, subscriber: EventSink) -> None:
        self.subscriber = subscriber
        self.answer = Call()

    @property
    def closed(self) -> bool:
        return self.subscriber.closed

    def reply(self, message: Message) -> None:
        if not self.answer.answered:
            self.answer.reply(message)
        else:
            self.subscriber.reply(message)

    def reply_event(self, body: bytes) -> None:
        self.subscriber.reply_event(body)

    def push_event(self, body: bytes) -> bool:
        return self.subscriber.push_event(body)


class SessionService:
    """Serves requests for principals; see the module's docstring.

    `stats()` makes the daemon's `stats` report; `busy_timeout` is how long a
    request waits for room in a session's mailbox before `busy`.
    """

    def __init__(self, *, registry: Registry, store: Store, analytics: ChannelAnalytics,
                 stats: Callable[[], Awaitable[dict[str, Any]]],
                 busy_timeout: float, limits: PeerLimits, max_page: int = 1000,
                 workflows: Callable[[SessionService], Workflows] | None = None) -> None:
        """`workflows` makes the engine that serves runs (given this service,
        through which it journals); without it `run` is `unavailable`.
        `max_page` bounds a page of `ListSessions`."""
        self._registry = registry
        self._limits = limits
        self._store = store
        self._analytics = analytics
        self._stats = stats
        self._busy_timeout = busy_timeout
        self._store_failed_logged = -STORE_FAILURE_LOG_EVERY
        self._max_page = max_page
        # Daemon-wide requests: type -> (needs the admin credential, serve).
        self._daemon_requests: dict[type[Message], tuple[bool, _DaemonRequest]] = {
            Ping: (False, self._ping),
            Create: (False, self._create),
            Stats: (True, self._report_stats),
            Analytics: (True, self._report_analytics),
            ListSessions: (True, self._list_sessions),
        }
        self.workflows = workflows(self) if workflows is not None else None
        self._workflow_requests = (self.workflows.requests if self.workflows is not None
                                   else frozenset())

    # ------------------------------------------------------------ requests

    async def submit(self, principal: Principal, request: Message, sink: ReplySink) -> None:
        """Serves `request`; its reply goes into `sink`, now or once the
        session's actor has served it. A request that fails is answered with
        an `error` reply; nothing is raised."""
        try:
            if type(request) in self._workflow_requests:
                assert self.workflows is not None
                sink.reply(await self.workflows.serve(principal, request, sink))
                return
            row = self._daemon_requests.get(type(request))
            if row is None:
                if request.TAG in _WORKFLOW_TAGS:
                    raise RequestError(ErrorCode.UNAVAILABLE,
                                       "workflow execution is not available in this daemon")
                # `run`, `cancel_run` and a worker's reports name a session
                # too, but the engine answers them: it is looked up first.
                if isinstance(request, SessionRequest):
                    await self._registry.submit(request.session_id,
                                                Envelope(request, principal, sink),
                                                self._busy_timeout)
                    return
                raise RequestError(ErrorCode.BAD_REQUEST, f"unexpected {request.TAG!r}")
            admin_only, serve = row
            if admin_only and not principal.admin:
                raise RequestError(ErrorCode.FORBIDDEN,
                                   f"{request.TAG!r} needs the admin credential")
            sink.reply(await serve(principal, request))
        except RequestError as exc:
            sink.reply(exc.reply(getattr(request, "id", None)))
        except StoreError as exc:  # the store is unreachable (Redis restarting, say)
            now = trio.current_time()
            if now - self._store_failed_logged >= STORE_FAILURE_LOG_EVERY:
                self._store_failed_logged = now
                log.warning("requests fail while the store fails: %s", exc)
            sink.reply(Error(id=getattr(request, "id", None),
                             code=ErrorCode.UNAVAILABLE.value,
                             message=f"the store is unavailable ({exc}); retry",
                             retry_after=1.0))
        except Exception:
            log.exception("%s: request %s failed", principal.connection_id, request.TAG)
            sink.reply(Error(id=getattr(request, "id", None), code=ErrorCode.INTERNAL.value,
                             message="internal error; see the daemon's log"))

    async def call(self, principal: Principal, request: Message) -> Message:
        """Serves `request` and returns its reply (an `error` reply if it failed)."""
        sink = Call()
        await self.submit(principal, request, sink)
        return await sink.wait()

    async def subscribe(self, principal: Principal, session_id: str, subscriber: EventSink,
                        *, since: int | None = None, scope: str = "read",
                        channel: str | None = None, token: str | None = None) -> Attached:
        """Attaches `subscriber` to the session: it receives the changes after
        `since` (or, if they cannot all be replayed, a snapshot) through
        `reply_event`, then each change as it commits through `push_event`.

        Raises:
            RequestError: the attach was refused (not found, expired,
                unauthorized, ...).
        """
        sink = _Subscription(subscriber)
        await self.submit(principal, Attach(id=1, session_id=session_id, token=token,
                                            since=since, scope=scope, channel=channel), sink)
        reply = await sink.answer.wait()
        if isinstance(reply, Error):
            raise RequestError(ErrorCode(reply.code), reply.message,
                               retry_after=reply.retry_after)
        assert isinstance(reply, Attached)
        return reply

    async def disconnect(self, principal: Principal) -> None:
        """The principal's channel is gone: its subscriptions end (and the
        other watchers hear that it left). The sessions are told
        `DETACH_PER_TURN` per turn of the event loop, shielded: it runs on
        a channel's way out, cancelled or not."""
        with trio.CancelScope(shield=True):
            for n, session_id in enumerate(list(principal.subscriptions), 1):
                actor = self._registry.active(session_id)
                if actor is not None:
                    actor.send_nowait(Disconnect(principal.connection_id))
                if n % DETACH_PER_TURN == 0:
                    await trio.lowlevel.checkpoint()
        principal.subscriptions.clear()
        self._registry.disconnect(principal)
        if self.workflows is not None:
            self.workflows.disconnect(principal)

    # ------------------------------------------------- daemon-wide requests

    async def _ping(self, principal: Principal, req: Ping) -> Message:
        return Pong(id=req.id)

    async def _create(self, principal: Principal, req: Create) -> Message:
        peer = principal.peer
        if not principal.may_create and not principal.admin:
            raise RequestError(ErrorCode.FORBIDDEN,
                               "creating sessions over the network needs the daemon's create "
                               "key (as the hello credential)")
        if not principal.admin and not self._limits.allow_create(peer):
            raise RequestError(ErrorCode.BUSY,
                               f"{peer.name} creates sessions faster than the daemon allows",
                               retry_after=self._limits.create_retry_after(peer))
        return await self._registry.create(principal, req)

    async def _report_stats(self, principal: Principal, req: Stats) -> Message:
        return Report(id=req.id, report=await self._stats())

    async def _report_analytics(self, principal: Principal, req: Analytics) -> Message:
        return Report(id=req.id, report=self._analytics.report())

    async def _list_sessions(self, principal: Principal, req: ListSessions) -> Message:
        limit = min(req.limit or 100, self._max_page)
        metas = await self._store.list_sessions(req.after, limit + 1)
        page = metas[:limit]
        sessions = [{"session_id": m.session_id, "created_at": m.created_at,
                     "expires_at": m.expires_at, "idle_expires_at": m.idle_expires_at,
                     "active": self._registry.active(m.session_id) is not None}
                    for m in page]
        after = page[-1].session_id if len(metas) > limit else None
        return Sessions(id=req.id, sessions=sessions, after=after)
