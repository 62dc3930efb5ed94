"""One MCP session's hold on nexusd: its backend, its tokens, its subscriptions.

A `Backend` is how the MCP server reaches the daemon: `call` serves one
protocol request and returns its reply (an `error` reply when it failed,
never an exception), and `watch` follows one session's events. The daemon
implements it over its session service; the stdio bridge over a
`nexus_client` connection.

A `Binding` lives as long as its MCP session. It keeps the tokens proven
so far (the `token` argument of a tool, the HTTP `Authorization` header,
the bridge's credentials), so that a token passes once and never again
through the model, and runs one watcher per subscribed session, which
sends `notifications/resources/updated` for the subscribed resources that
a change touches.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio
from nexus_protocol import Change, Error, Expired, Invalidated, Lagged, Message, Run, Snapshot

__all__ = ["Backend", "Binding", "WatchRefused", "data_uri", "session_uri"]

log = logging.getLogger("nexus_mcp")

Notify = Callable[[str], Awaitable[None]]


class WatchRefused(Exception):
    """A watch the daemon refused; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Backend(Protocol):
    """How the MCP server reaches the daemon (see the module's docstring)."""

    async def call(self, request: Message) -> Message:
        """The reply to `request` (its `id` is the backend's to set); an
        `error` reply if it failed."""

    def run(self, request: Run) -> AbstractAsyncContextManager[AsyncIterator[Message]]:
        """Starts a workflow run: its reply (`run_started`, or an `error`),
        then the run's `progress` events and its `result`."""

    def watch(self, session_id: str, token: str | None
              ) -> AbstractAsyncContextManager[AsyncIterator[Message]]:
        """The session's events from now on (a `snapshot` first, then each
        `change`), until `expired`, `invalidated` or `lagged`.

        Raises:
            WatchRefused: on entering, the daemon refused the attach.
        """


def session_uri(session_id: str) -> str:
    return f"nexus://sessions/{session_id}"


def data_uri(session_id: str, key: str) -> str:
    return f"nexus://sessions/{session_id}/data/{key}"


@attrs.define(eq=False)
class _Watcher:
    uris: set[str]
    scope: trio.CancelScope
    notify: Notify


class Binding:
    """See the module's docstring. Watchers run in `nursery`; `close` ends them.

    `default_token` is used for a session the binding holds no token of
    (the bridge's ``--session`` token, an HTTP bearer token); `tokens` maps
    session ids to tokens already known.
    """

    def __init__(self, backend: Backend, nursery: trio.Nursery, *,
                 default_token: str | None = None,
                 tokens: dict[str, str] | None = None) -> None:
        self.backend = backend
        self.default_token = default_token
        self.tokens: dict[str, str] = dict(tokens or {})
        self._nursery = nursery
        self._watchers: dict[str, _Watcher] = {}
        self.closed = False

    def token(self, session_id: str, given: str | None = None) -> str | None:
        """The token to show for `session_id`: `given`, else the one proven
        before, else the default."""
        if given:
            return given
        return self.tokens.get(session_id, self.default_token)

    async def call(self, request: Message, *, session_id: str | None = None,
                   token: str | None = None) -> Message:
        """The backend's reply to `request`; a token given explicitly that
        the daemon accepted is remembered for the session."""
        reply = await self.backend.call(request)
        if session_id is not None and token and not isinstance(reply, Error):
            self.tokens[session_id] = token
        return reply

    # ---------------------------------------------------------- subscriptions

    def subscribed(self, session_id: str) -> set[str]:
        watcher = self._watchers.get(session_id)
        return set(watcher.uris) if watcher else set()

    async def subscribe(self, session_id: str, uri: str, notify: Notify) -> None:
        """Sends `notify(uri)` whenever another channel changes what `uri`
        shows, until `unsubscribe` or `close`.

        Raises:
            WatchRefused: the session cannot be watched with the token held.
        """
        watcher = self._watchers.get(session_id)
        if watcher is not None:
            watcher.uris.add(uri)
            watcher.notify = notify
            return
        watcher = _Watcher({uri}, trio.CancelScope(), notify)
        # Attached before answering, so that a refusal is the subscribe's answer.
        await self._nursery.start(self._follow, session_id, watcher)
        self._watchers[session_id] = watcher

    def unsubscribe(self, uri: str) -> None:
        for session_id, watcher in list(self._watchers.items()):
            watcher.uris.discard(uri)
            if not watcher.uris:
                watcher.scope.cancel()
                del self._watchers[session_id]

    def close(self) -> None:
        """The MCP session is over: every watcher ends."""
        self.closed = True
        for watcher in self._watchers.values():
            watcher.scope.cancel()
        self._watchers.clear()

    async def _follow(self, session_id: str, watcher: _Watcher, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        prefix = data_uri(session_id, "")
        started = False
        try:
            with watcher.scope:
                while True:
                    async with self.backend.watch(session_id, self.token(session_id)) as events:
                        if not started:
                            task_status.started()
                            started = True
                        async for event in events:
                            for uri in sorted(_touched(event, session_id, prefix, watcher.uris)):
                                await watcher.notify(uri)
                            if isinstance(event, Expired | Invalidated):
                                return
                            if isinstance(event, Lagged):
                                break
                    # Lagged: the changes it missed are notified above; follow on from now.
        except WatchRefused as exc:
            if not started:
                raise
            log.info("stopped following %s: %s", session_id, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the MCP session went away
        finally:
            if self._watchers.get(session_id) is watcher:
                del self._watchers[session_id]


def _touched(event: Message, session_id: str, prefix: str, uris: set[str]) -> set[str]:
    """The subscribed URIs whose content `event` changes."""
    if isinstance(event, Snapshot):
        return set()  # the state as of the subscription: nothing new
    if isinstance(event, Change):
        whole = {session_uri(session_id)} & uris
        if event.key is not None:
            return whole | ({data_uri(session_id, event.key)} & uris)
        if event.op == "patch":
            return whole | {u for u in uris if u.startswith(prefix)}
        return whole
    if isinstance(event, Expired | Invalidated | Lagged):
        return set(uris)
    return set()
