"""`AsyncClient`: the session API of the trio client.

Every method is one request and its reply; the connection, reconnects and the
delivery rules live in `_core` (see its docstring).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, overload

import trio
from nexus_protocol import (
    Analytics,
    CancelRun,
    Create,
    Created,
    Delete,
    Get,
    Grant,
    Granted,
    Heartbeat,
    Insights,
    Invalidate,
    ListSessions,
    MergeContext,
    Ok,
    Patch,
    Ping,
    Pong,
    Progress,
    Recommend,
    Register,
    Registered,
    Renew,
    Renewed,
    Report,
    Result,
    Run,
    RunComplete,
    RunFail,
    RunProgress,
    RunStarted,
    Sessions,
    Set,
    StateReply,
    Stats,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Switched,
    Sync,
    Track,
    UpdateContext,
    Value,
    Written,
)

from ._core import DEFAULT_CLIENT_NAME, _ClientCore
from ._transport import Target
from ._types import (
    Entry,
    Renewal,
    SessionInfo,
    SessionPage,
    SessionState,
    Transition,
    WriteResult,
)
from ._watch import Watch

__all__ = ["DEFAULT_CLIENT_NAME", "AsyncClient", "open_client"]


#: Sessions whose last synced state a client keeps for `continue_session`.
LAST_SYNCED: Final = 256
#: Context keys the daemon keeps itself; a continued session gets its own.
_DAEMON_KEYS: Final = frozenset({"current_channel", "updated_at"})


def start_channel(task_type: str | None, experience_level: str | None = None) -> str:
    """The guide's optimal starting channel for a task type and experience
    level: cli for an expert's data analysis, mcp for AI interaction, else api."""
    if task_type == "data_analysis" and experience_level == "expert":
        return "cli"
    if task_type == "ai_interaction":
        return "mcp"
    return "api"


class AsyncClient(_ClientCore):
    """A trio client of a nexusd daemon. Use it as an async context manager::

        async with nexus_client.open_client() as client:
            info = await client.create_session("api")
            await client.set(info.session_id, "theme", "dark")
            async with client.watch(info.session_id) as events:
                async for event in events:
                    ...

    Args:
        target: a Unix socket path, a ``ws://`` or ``wss://`` URL, or None for
            the daemon ``nexus`` would use: $NEXUS_SOCKET, else $NEXUS_URL,
            else its default socket (`default_target`). A list of them is
            tried in order at each (re)connection; `target` is the one in use.
        channel: the channel label this client declares (api, cli, mcp, ...);
            sessions record it in their history and analytics.
        client_name: how the client introduces itself (shown in presence).
        tokens: session id -> token, for sessions created elsewhere. Tokens of
            sessions created through this client are remembered automatically.
        admin_key: the daemon's admin credential (needed over WebSocket for
            stats, list_sessions, analytics; the Unix socket's owner is admin).
        reconnect: True for the default `Backoff`, a `Backoff` to tune it, or
            False to fail on the first drop.
        ssl_context: for ``wss://`` (default: the system's trust store).
        connect_timeout: seconds for connecting plus the handshake.
        request_timeout: seconds a request may take, including waiting for a
            reconnection; None for no limit. Exceeding it raises `Timeout`.
        watch_buffer: events a `Watch` buffers before it counts as overflowed.
        limits: the protocol limits this side enforces.
    """


    @classmethod
    def connect(cls, target: str | Target | Sequence[str | Target] | None = None,
                **kwargs: Any) -> AsyncClient:
        """Same as the constructor: ``async with AsyncClient.connect(...) as c``."""
        return cls(target, **kwargs)


    async def ping(self) -> float:
        """Round trip to the daemon, in seconds."""
        start = trio.current_time()
        await self._request(lambda rid: Ping(id=rid), Pong)
        return trio.current_time() - start

    async def create_session(self, channel: str | None = None, *, user_id: str | None = None,
                             ttl: float | None = None, idle_timeout: float | None = None,
                             metadata: dict[str, Any] | None = None) -> SessionInfo:
        """Creates a session; the client remembers its token.

        Args:
            channel: the channel it is created on (default: this client's).
            user_id: who it belongs to, for the daemon's records.
            ttl: seconds until it expires (default: the daemon's).
            idle_timeout: seconds of inactivity after which it expires.
            metadata: free-form data kept with the session.
        """
        reply = await self._request(
            lambda rid: Create(id=rid, channel=channel, user_id=user_id, ttl=ttl,
                               idle_timeout=idle_timeout, metadata=metadata), Created)
        self._tokens[reply.session_id] = reply.token
        return SessionInfo.from_reply(reply)

    @overload
    async def get(self, session_id: str, key: str, *, token: str | None = None) -> Entry: ...

    @overload
    async def get(self, session_id: str, key: None = None, *,
                  token: str | None = None) -> SessionState: ...

    async def get(self, session_id: str, key: str | None = None, *,
                  token: str | None = None) -> Entry | SessionState:
        """One entry (`key` given; version 0 and value None if never written),
        or the whole session state (`key` None)."""
        tok = self._token(session_id, token)
        if key is None:
            state = await self._request(
                lambda rid: Get(id=rid, session_id=session_id, token=tok), StateReply,
                session_id=session_id)
            return self._synced(SessionState.from_reply(state))
        value = await self._request(
            lambda rid: Get(id=rid, session_id=session_id, key=key, token=tok), Value,
            session_id=session_id)
        return Entry.from_reply(value)

    async def set(self, session_id: str, key: str, value: Any, *, expect: int | None = None,
                  token: str | None = None) -> WriteResult:
        """Writes `key`. `expect`: the version the caller last saw (0: the key
        must not exist); a mismatch raises `Conflict` and changes nothing."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Set(id=rid, session_id=session_id, key=key, value=value, expect=expect,
                            token=tok), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def delete(self, session_id: str, key: str, *, expect: int | None = None,
                     token: str | None = None) -> WriteResult:
        """Deletes `key` (`SessionNotFound` if it does not exist)."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Delete(id=rid, session_id=session_id, key=key, expect=expect,
                               token=tok), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def patch(self, session_id: str, set: Mapping[str, Any] | None = None,
                    delete: list[str] | None = None, *, expect: Mapping[str, int] | None = None,
                    token: str | None = None) -> WriteResult:
        """Sets and deletes several keys as one change, all or nothing."""
        tok = self._token(session_id, token)
        entries = dict(set or {})
        keys = list(delete or [])
        versions = dict(expect) if expect is not None else None
        reply = await self._request(
            lambda rid: Patch(id=rid, session_id=session_id, set=entries, delete=keys,
                              expect=versions, token=tok), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def update_context(self, session_id: str, *, channel: str | None = None,
                             preferences: dict[str, Any] | None = None,
                             history: list[Any] | None = None,
                             metrics: dict[str, Any] | None = None,
                             token: str | None = None) -> WriteResult:
        """Replaces the parts of the session context that are given, and makes
        `channel` (default: this client's) the current channel."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: UpdateContext(id=rid, session_id=session_id, channel=channel,
                                      preferences=preferences, history=history,
                                      metrics=metrics, token=tok),
            Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def switch_channel(self, session_id: str, to_channel: str, *,
                             from_channel: str | None = None, reason: str | None = None,
                             context: dict[str, Any] | None = None,
                             token: str | None = None) -> Transition:
        """Begins a channel transition; finish it with `complete_switch`.
        `from_channel`, if given, must be the session's current channel
        (`Conflict` otherwise)."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: SwitchBegin(id=rid, session_id=session_id, to_channel=to_channel,
                                    from_channel=from_channel, reason=reason, context=context,
                                    token=tok), Switched, session_id=session_id)
        return Transition.from_reply(reply)

    async def complete_switch(self, session_id: str, transition_id: str, *,
                              success: bool = True, token: str | None = None) -> Transition:
        """Completes a transition; on success its target becomes the current channel."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: SwitchComplete(id=rid, session_id=session_id,
                                       transition_id=transition_id, success=success,
                                       token=tok), Switched, session_id=session_id)
        return Transition.from_reply(reply)

    async def renew(self, session_id: str, ttl: float | None = None, *,
                    token: str | None = None) -> Renewal:
        """Moves the absolute expiry to now + `ttl` (default: the session's ttl)."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Renew(id=rid, session_id=session_id, ttl=ttl, token=tok), Renewed,
            session_id=session_id)
        return Renewal.from_reply(reply)

    async def invalidate(self, session_id: str, *, reason: str | None = None,
                         token: str | None = None) -> None:
        """Ends the session now; its data becomes unrecoverable."""
        tok = self._token(session_id, token)
        await self._request(
            lambda rid: Invalidate(id=rid, session_id=session_id, reason=reason, token=tok), Ok,
            session_id=session_id)
        self._tokens.pop(session_id, None)

    async def sync(self, session_id: str, channel: str, *,
                   token: str | None = None) -> SessionState:
        """The session as seen from `channel`; records that channel's activity."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Sync(id=rid, session_id=session_id, channel=channel, token=tok),
            StateReply, session_id=session_id)
        return self._synced(SessionState.from_reply(reply))

    async def summary(self, session_id: str, *, token: str | None = None) -> dict[str, Any]:
        """The session's analytics: duration, events by kind, channels, transitions."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Summary(id=rid, session_id=session_id, token=tok), Report,
            session_id=session_id)
        return dict(reply.report)

    async def grant(self, session_id: str, scope: str, *, token: str | None = None) -> str:
        """Mints another token for the session with `scope` (read, write, admin)."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Grant(id=rid, session_id=session_id, scope=scope, token=tok), Granted,
            session_id=session_id)
        return str(reply.token)

    async def run(self, session_id: str, workflow: str, inputs: dict[str, Any] | None = None,
                  *, resume: bool = False, token: str | None = None) -> str:
        """Starts `workflow` in the session (a worker serving it runs it);
        returns its run id. `resume`: join the run of `workflow` in flight, or
        start one that continues from the step the session records.

        Raises:
            SessionNotFound: no such session, or no worker ever registered
                `workflow` (`message` says which).
            Unavailable: the daemon does not run workflows.
        """
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Run(id=rid, session_id=session_id, workflow=workflow, inputs=inputs,
                            resume=resume, token=tok), RunStarted, session_id=session_id)
        return str(reply.run_id)

    @asynccontextmanager
    async def follow_runs(self, session_id: str, buffer: int = 1024
                          ) -> AsyncIterator[trio.MemoryReceiveChannel[Progress | Result]]:
        """The `progress` and `result` events of the runs this client starts
        in the session while the context is open (enter it before `run`, so
        that no event is missed). Events are not replayed across reconnects:
        the session's `run` changes (a `watch`) are the durable record."""
        send, receive = trio.open_memory_channel[Progress | Result](buffer)

        def listener(message: Any) -> None:
            # A slow reader misses progress; the session's journal has it.
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(message)

        listeners = self._run_events.setdefault(session_id, [])
        listeners.append(listener)
        try:
            yield receive
        finally:
            listeners.remove(listener)
            if not listeners:
                del self._run_events[session_id]

    async def run_and_wait(self, session_id: str, workflow: str,
                           inputs: dict[str, Any] | None = None, *, resume: bool = False,
                           token: str | None = None,
                           on_progress: Any = None) -> Result:
        """Runs `workflow` and returns its `Result` (status completed, failed
        or cancelled); `on_progress(event)` is called with each `Progress`."""
        async with self.follow_runs(session_id) as events:
            run_id = await self.run(session_id, workflow, inputs, resume=resume, token=token)
            async for event in events:
                if event.run_id != run_id:
                    continue
                if isinstance(event, Result):
                    return event
                if on_progress is not None:
                    on_progress(event)
        raise AssertionError("unreachable")  # pragma: no cover

    async def cancel_run(self, session_id: str, run_id: str, *,
                         token: str | None = None) -> WriteResult:
        """Cancels a run in flight."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: CancelRun(id=rid, session_id=session_id, run_id=run_id, token=tok),
            Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    # -------------------------------------------------------- worker requests

    async def register_worker(self, workflows: list[str], *, concurrency: int = 1
                              ) -> Registered:
        """Makes this connection a worker of `workflows` (see `Worker`)."""
        return await self._request(
            lambda rid: Register(id=rid, workflows=list(workflows), concurrency=concurrency),
            Registered)

    async def heartbeat(self) -> None:
        """Renews the leases of the runs this worker holds."""
        await self._request(lambda rid: Heartbeat(id=rid), Ok)

    async def report_progress(self, session_id: str, run_id: str, step: int, total: int,
                              message: str = "", data: Any = None) -> WriteResult:
        reply = await self._request(
            lambda rid: RunProgress(id=rid, session_id=session_id, run_id=run_id, step=step,
                                    total=total, message=message, data=data),
            Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def complete_run(self, session_id: str, run_id: str, result: Any = None
                           ) -> WriteResult:
        reply = await self._request(
            lambda rid: RunComplete(id=rid, session_id=session_id, run_id=run_id,
                                    result=result), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def fail_run(self, session_id: str, run_id: str, error: str, *,
                       retry: bool = False) -> WriteResult:
        reply = await self._request(
            lambda rid: RunFail(id=rid, session_id=session_id, run_id=run_id, error=error,
                                retry=retry), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def merge_context(self, session_id: str, values: Mapping[str, Any], *,
                            channel: str | None = None,
                            token: str | None = None) -> WriteResult:
        """Sets free-form context keys (None removes one); the others are kept.
        The daemon bounds their number and size (`BadRequest` beyond)."""
        tok = self._token(session_id, token)
        given = dict(values)
        reply = await self._request(
            lambda rid: MergeContext(id=rid, session_id=session_id, values=given,
                                     channel=channel, token=tok),
            Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def track(self, session_id: str, event_type: str, data: Any = None, *,
                    token: str | None = None) -> WriteResult:
        """Journals a custom analytics event (the guide's `track_session_event`).

        Raises:
            BadRequest: `data` is larger than the daemon allows.
            Busy: the session tracked as many events this minute as allowed.
        """
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Track(id=rid, session_id=session_id, event_type=event_type, data=data,
                              token=tok), Written, session_id=session_id)
        return WriteResult.from_reply(reply)

    async def insights(self, session_id: str, *,
                       token: str | None = None) -> list[dict[str, Any]]:
        """The session's insights: ``{"rule", "message", "figures"}`` each."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Insights(id=rid, session_id=session_id, token=tok), Report,
            session_id=session_id)
        return list(reply.report["insights"])

    async def recommend(self, session_id: str, task_type: str | None = None, *,
                        experience: str | None = None,
                        token: str | None = None) -> dict[str, Any]:
        """The channel recommended for `task_type` in the session:
        ``{"channel", "rule", "reason", "default", "avoided", ...}``."""
        tok = self._token(session_id, token)
        reply = await self._request(
            lambda rid: Recommend(id=rid, session_id=session_id, task_type=task_type,
                                  experience=experience, token=tok), Report,
            session_id=session_id)
        return dict(reply.report)

    # ------------------------------------------------- expired -> continue

    def _synced(self, state: SessionState) -> SessionState:
        cache = self._last_synced
        cache[state.session_id] = state
        cache.move_to_end(state.session_id)
        while len(cache) > LAST_SYNCED:
            cache.popitem(last=False)
        return state

    def last_synced(self, session_id: str) -> SessionState | None:
        """The session's state as this client last read it (`get` of the whole
        session, `sync`), or None; kept for the last LAST_SYNCED sessions."""
        return self._last_synced.get(session_id)

    async def continue_session(self, session_id: str, *, keys: Collection[str] = (),
                               state: SessionState | None = None,
                               channel: str | None = None, ttl: float | None = None,
                               idle_timeout: float | None = None) -> SessionInfo:
        """A new session carrying on an expired or invalidated one: its
        context (but for what the daemon keeps itself) and the entries
        `keys` names, taken from `state` or else from what this client last
        synced of it. The daemon keeps nothing of an ended session, so the
        carry-over is the client's copy: keys it never read are not carried.

        Raises:
            LookupError: no state of `session_id` given or synced here.
        """
        last = state if state is not None else self.last_synced(session_id)
        if last is None:
            raise LookupError(f"nothing of session {session_id} was synced by this client; "
                              "sync it (or get it whole) while it lives to continue it later")
        info = await self.create_session(
            channel or last.context.get("current_channel") or None, ttl=ttl,
            idle_timeout=idle_timeout, metadata={"continues": session_id})
        carried = {k: v for k, v in last.context.items() if k not in _DAEMON_KEYS}
        if carried:
            await self.merge_context(info.session_id, carried)
        values = {k: last.entries[k].value for k in keys if k in last.entries}
        if values:
            await self.patch(info.session_id, set=values)
        return info

    async def stats(self) -> dict[str, Any]:
        """Admin: daemon health, counts and uptime."""
        reply = await self._request(lambda rid: Stats(id=rid), Report)
        return dict(reply.report)

    async def analytics(self) -> dict[str, Any]:
        """Admin: channel usage and workflow performance across sessions."""
        reply = await self._request(lambda rid: Analytics(id=rid), Report)
        return dict(reply.report)

    async def list_sessions(self, *, limit: int | None = None,
                            after: str | None = None) -> SessionPage:
        """Admin: one page of sessions in id order, after the id `after`."""
        reply = await self._request(
            lambda rid: ListSessions(id=rid, limit=limit, after=after), Sessions)
        return SessionPage(sessions=[dict(s) for s in reply.sessions], after=reply.after)

    def watch(self, session_id: str, *, since: int | None = None, token: str | None = None,
              channel: str | None = None, scope: str = "read",
              buffer: int | None = None) -> Watch:
        """The session's events, as an async context manager and iterator.

        See `Watch` for what it yields and how it survives reconnects. At most
        one watch per session per client is active at a time.

        Args:
            since: resume after this seq (the changes after it are replayed, or
                a `Snapshot` with ``recovered=False`` says they could not be);
                None starts with a `Snapshot` of the current state.
            channel: the channel label shown in presence (default: the client's).
            scope: "read" or "write".
            buffer: events buffered before the watch counts as overflowed.
        """
        return Watch(self, session_id, since=since, token=token, channel=channel, scope=scope,
                     buffer=buffer or self._watch_buffer)



def open_client(target: str | Target | Sequence[str | Target] | None = None,
                **kwargs: Any) -> AsyncClient:
    """An `AsyncClient` to use with ``async with``; arguments as its constructor."""
    return AsyncClient(target, **kwargs)
