"""`Nexus`: a blocking facade over `AsyncClient`, with the guide's method names.

A background thread runs ``trio.run``; every call crosses into it with
``trio.from_thread.run`` and blocks the calling thread until the answer. Any
number of threads may call one `Nexus` concurrently; their requests share the
one connection.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio
from nexus_protocol import Expired, Invalidated, Message

from ._async_client import DEFAULT_CLIENT_NAME, AsyncClient, start_channel
from ._backoff import Backoff
from ._credentials import CredentialStore
from ._errors import SessionExpired, SessionNotFound
from ._transport import Target
from ._types import Entry, SessionState
from ._worker import Worker

__all__ = ["Nexus"]

_T = TypeVar("_T")

# Context keys of the guide's `update_session_context`, and the names its
# stored context uses for them.
_CONTEXT_KEYS = {
    "preferences": "preferences", "user_preferences": "preferences",
    "history": "history", "workflow_history": "history",
    "metrics": "metrics", "performance_metrics": "metrics",
}


@attrs.frozen
class _Failure:
    exc: BaseException


class Nexus:
    """Blocking client mirroring the Session Management Guide::

        with Nexus() as app:
            session_id = app.create_session(channel="api")
            app.set_session_data(session_id, "theme", "dark")
            state = app.sync_session(session_id, "mcp")

    Args:
        target: Unix socket path, ``ws://``/``wss://`` URL, or None for the
            daemon ``nexus`` would use: $NEXUS_SOCKET, else $NEXUS_URL, else
            its default socket (`default_target`); or a list of them, tried in
            order at each (re)connection (`endpoint` says which is in use).
        channel: the channel label of this client (default "api").
        tokens: session id -> token for sessions created elsewhere.
        credentials: where to look up tokens of sessions this object did not
            create: a `CredentialStore`, a path, True for the default
            credentials file (what ``nexus session create`` fills), or False.
        save_credentials: also store the tokens of sessions created here in
            the credentials file, so that the CLI can continue them. Off by
            default: a library should not write secrets to disk unasked.
        timeout: seconds each call may take (including waiting for a
            reconnection) before raising `Timeout`; None for no limit.
        Other arguments are passed to `AsyncClient`.

    Raises:
        CannotConnect: the daemon is not reachable.
    """

    def __init__(self, target: str | Target | Sequence[str | Target] | None = None, *,
                 channel: str = "api",
                 client_name: str = DEFAULT_CLIENT_NAME,
                 tokens: Mapping[str, str] | None = None,
                 credentials: CredentialStore | str | os.PathLike[str] | bool = True,
                 save_credentials: bool = False, admin_key: str | None = None,
                 reconnect: bool | Backoff = True, ssl_context: ssl.SSLContext | None = None,
                 timeout: float | None = 30.0, connect_timeout: float = 10.0) -> None:
        if credentials is True:
            self._store: CredentialStore | None = CredentialStore()
        elif credentials is False:
            self._store = None
        elif isinstance(credentials, CredentialStore):
            self._store = credentials
        else:
            self._store = CredentialStore(credentials)
        self._save = save_credentials and self._store is not None
        self._client = AsyncClient(target, channel=channel, client_name=client_name,
                                   tokens=tokens, admin_key=admin_key, reconnect=reconnect,
                                   ssl_context=ssl_context, connect_timeout=connect_timeout,
                                   request_timeout=timeout)
        self._closed = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._worker = Worker()
        self._serving = False
        self._thread = threading.Thread(target=self._thread_main, name="nexus-client",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._closed = True
            raise self._startup_error

    # ------------------------------------------------------------- plumbing

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the constructor, or lost with the thread
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()

    async def _main(self) -> None:
        async with self._client, trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stop = trio.Event()
            self._trio_token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _call(self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise trio.ClosedResourceError("this Nexus client is closed")

        async def call() -> _T:
            return await fn(*args, **kwargs)

        try:
            return trio.from_thread.run(call, trio_token=self._trio_token)
        except trio.RunFinishedError:
            raise trio.ClosedResourceError("this Nexus client is closed") from None

    def _need_token(self, session_id: str) -> None:
        """Looks up a token the client lacks in the credentials file (file I/O
        in the calling thread, not in the client's)."""
        if self._closed or self._store is None or self._client.token_for(session_id):
            return
        token = self._store.get(session_id)
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._client.set_token, session_id, token,
                                          trio_token=self._trio_token)

    def close(self) -> None:
        """Closes the connection and stops the background thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        stop = self._stop
        if stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=self._trio_token)
        self._thread.join()

    def __enter__(self) -> Nexus:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def client(self) -> AsyncClient:
        """The underlying `AsyncClient` (use it only from the client's own thread)."""
        return self._client

    def token_for(self, session_id: str) -> str | None:
        """The token held for `session_id` (from create_session, `tokens` or
        the credentials file), or None."""
        self._need_token(session_id)
        return self._client.token_for(session_id)

    # ------------------------------------------------------- the guide's API

    def create_session(self, channel: str = "api", *, user_id: str | None = None,
                       ttl: float | None = None, idle_timeout: float | None = None,
                       metadata: dict[str, Any] | None = None) -> str:
        """Creates a session on `channel` and returns its id (the token is kept)."""
        info = self._call(self._client.create_session, channel, user_id=user_id, ttl=ttl,
                          idle_timeout=idle_timeout, metadata=metadata)
        if self._save:
            assert self._store is not None
            self._store.put(info.session_id, info.token, expires_at=info.expires_at,
                            channel=channel, target=str(self._client.target))
        return info.session_id

    def sync_session(self, session_id: str, channel: str) -> dict[str, Any]:
        """The session as seen from `channel` (recording that channel's activity):
        ``{"session_id", "channel", "seq", "data", "entries", "context", ...}``."""
        self._need_token(session_id)
        state = self._call(self._client.sync, session_id, channel)
        return {**state.to_dict(), "channel": channel}

    def set_session_data(self, session_id: str, key: str, value: Any, *,
                         expect: int | None = None) -> int:
        """Stores `value` under `key`; returns the key's new version."""
        self._need_token(session_id)
        result = self._call(self._client.set, session_id, key, value, expect=expect)
        assert result.version is not None
        return result.version

    def get_session_data(self, session_id: str, key: str | None = None) -> Any:
        """The value of `key` (None if absent), or ``{key: value}`` of the whole
        session when `key` is None.

        Raises:
            SessionNotFound, SessionExpired: the session does not exist (the
                guide's toy returned None; a missing session is an error here).
        """
        self._need_token(session_id)
        if key is None:
            return self._call(self._get_state, session_id).values
        entry = self._call(self._get_entry, session_id, key)
        return entry.value if entry.exists else None

    async def _get_state(self, session_id: str) -> SessionState:
        return await self._client.get(session_id)

    async def _get_entry(self, session_id: str, key: str) -> Entry:
        return await self._client.get(session_id, key)

    def delete_session_data(self, session_id: str, key: str) -> int:
        """Deletes `key`; returns the seq of the change."""
        self._need_token(session_id)
        return self._call(self._client.delete, session_id, key).seq

    def update_session_context(self, session_id: str, channel: str,
                               context: Mapping[str, Any]) -> int:
        """Updates the context from `channel`: ``preferences``, ``history`` and
        ``metrics`` (or the guide's stored names ``user_preferences``,
        ``workflow_history``, ``performance_metrics``) replace those parts;
        any other key is a free-form context key (None removes it), within
        the daemon's bounds on their number and size. Parts not given are
        kept. Returns the seq.

        Raises:
            BadRequest: over the daemon's bounds, or a key the daemon keeps
                itself (``current_channel``, ``updated_at``).
        """
        self._need_token(session_id)
        parts: dict[str, Any] = {}
        free: dict[str, Any] = {}
        for name, value in context.items():
            field = _CONTEXT_KEYS.get(name)
            if field is None:
                free[name] = value
            else:
                parts[field] = value
        if free:
            result = self._call(self._client.merge_context, session_id, {**parts, **free},
                                channel=channel)
        else:
            result = self._call(self._client.update_context, session_id, channel=channel,
                                **parts)
        return result.seq

    def initiate_channel_switch(self, session_id: str, from_channel: str | None,
                                to_channel: str,
                                context: Mapping[str, Any] | None = None) -> str:
        """Begins a transition; returns its transition id. ``context["reason"]``
        becomes the recorded reason. `from_channel`, if not None, must be the
        session's current channel (`Conflict` otherwise)."""
        self._need_token(session_id)
        ctx = dict(context or {})
        reason = ctx.get("reason")
        transition = self._call(self._client.switch_channel, session_id, to_channel,
                                from_channel=from_channel,
                                reason=str(reason) if reason is not None else None,
                                context=ctx or None)
        return transition.transition_id

    def complete_channel_switch(self, session_id: str, transition_id: str,
                                success: bool = True) -> int:
        """Completes a transition; returns the seq of the change."""
        self._need_token(session_id)
        return self._call(self._client.complete_switch, session_id, transition_id,
                          success=success).seq

    def renew_session(self, session_id: str, ttl: float | None = None) -> float:
        """Extends the session; returns its new absolute expiry (epoch seconds)."""
        self._need_token(session_id)
        return self._call(self._client.renew, session_id, ttl).expires_at

    def invalidate_session(self, session_id: str, reason: str | None = None) -> None:
        """Ends the session now (and forgets its stored token)."""
        self._need_token(session_id)
        self._call(self._client.invalidate, session_id, reason=reason)
        if self._save:
            assert self._store is not None
            self._store.remove(session_id)

    def get_session_summary(self, session_id: str) -> dict[str, Any]:
        """The session's analytics summary."""
        self._need_token(session_id)
        return self._call(self._client.summary, session_id)

    # ------------------------------------------ the guide's analytics API

    def track_session_event(self, session_id: str, event_type: str,
                            event_data: Any = None) -> int:
        """Journals a custom event; returns its seq. ``workflow_executed``
        (``workflow_name``, ``execution_time``) counts as a workflow run and
        ``channel_switch`` (``to_channel``) as a switch, as in the guide.

        Raises:
            BadRequest: the data is over the daemon's size bound.
            Busy: the session's tracking rate is spent (`retry_after` says when).
        """
        self._need_token(session_id)
        return self._call(self._client.track, session_id, event_type, event_data).seq

    def get_channel_analytics(self) -> dict[str, Any]:
        """Admin: the guide's channel analytics across every session:
        ``total_channel_switches``, ``channel_distribution``, ``most_popular_channel``."""
        report = self.get_analytics()
        return {k: report[k] for k in ("total_channel_switches", "channel_distribution",
                                       "most_popular_channel")}

    def get_performance_analytics(self) -> dict[str, Any]:
        """Admin: workflow runs by name across every session (count, success
        rate, mean, min, p50, p95, max, total, trend)."""
        return dict(self.get_analytics()["performance"])

    def get_transition_analytics(self, session_id: str | None = None) -> dict[str, Any]:
        """Channel switches by from -> to pair (count, successes, mean
        duration): the session's, or across every session (admin) when None."""
        if session_id is None:
            return dict(self.get_analytics()["transition_analytics"])
        return dict(self.get_session_summary(session_id)["transition_analytics"])

    def generate_insights(self, session_id: str | None = None) -> list[str]:
        """The insights, as sentences that say what was seen: the session's,
        or daemon-wide (admin) when None. `insights` gives the rules and figures."""
        return [i["message"] for i in self.insights(session_id)]

    def insights(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """The insights as ``{"rule", "message", "figures"}``."""
        if session_id is None:
            return list(self.get_analytics()["insights"])
        self._need_token(session_id)
        return self._call(self._client.insights, session_id)

    def get_recommended_channel(self, session_id: str, task_type: str = "general",
                                experience_level: str | None = None) -> str:
        """The channel to use for `task_type` in the session (see `recommend`)."""
        return str(self.recommend(session_id, task_type, experience_level)["channel"])

    def recommend(self, session_id: str, task_type: str = "general",
                  experience_level: str | None = None) -> dict[str, Any]:
        """The recommended channel with the rule that chose it and why."""
        self._need_token(session_id)
        return self._call(self._client.recommend, session_id, task_type,
                          experience=experience_level)

    def validate_session(self, session_id: str) -> bool:
        """True if the session exists and has not expired (a read: it counts
        as activity); False if it is gone.

        Raises:
            Unauthorized: no token for it is held (or the token is refused).
        """
        self._need_token(session_id)
        try:
            self._call(self._client.summary, session_id)
        except (SessionNotFound, SessionExpired):
            return False
        return True

    def cleanup_expired_sessions(self) -> int:
        """The daemon expires sessions itself (its reaper, at each deadline),
        so nothing is deleted here: this forgets what the client holds of
        sessions past their expiry (tokens in the credentials file; states
        kept for `continue_session` stay, so an expired session can still be
        continued). Returns how many it forgot."""
        if self._store is None:
            return 0
        return self._store.prune()

    def create_optimal_session(self, user_context: Mapping[str, Any]) -> str:
        """Creates a session on the guide's optimal starting channel for
        ``task_type`` and ``experience_level`` (cli for an expert's
        data_analysis, mcp for ai_interaction, else api), for ``user_id``;
        the rest of `user_context` is kept as the session's metadata."""
        channel = start_channel(user_context.get("task_type", "general"),
                                user_context.get("experience_level", "intermediate"))
        user_id = user_context.get("user_id")
        metadata = {k: v for k, v in user_context.items() if k != "user_id"}
        return self.create_session(channel, user_id=user_id if isinstance(user_id, str)
                                   else None, metadata=metadata)

    def continue_session(self, session_id: str, keys: Collection[str] = (), *,
                         channel: str | None = None) -> str:
        """A new session carrying on an expired or invalidated one: its
        context and the entries `keys` names, from what this client last
        synced of it (`sync_session`, `get_session_data` of the whole
        session). Returns the new session's id.

        Raises:
            LookupError: this client never synced that session.
        """
        info = self._call(self._client.continue_session, session_id, keys=keys,
                          channel=channel)
        if self._save:
            assert self._store is not None
            self._store.put(info.session_id, info.token, expires_at=info.expires_at,
                            channel=channel, target=str(self._client.target))
        return info.session_id

    @property
    def endpoint(self) -> str:
        """The endpoint in use (or last tried), among those given."""
        return str(self._client.target)

    def get_analytics(self) -> dict[str, Any]:
        """Admin: channel usage and workflow performance across sessions."""
        return self._call(self._client.analytics)

    def stats(self) -> dict[str, Any]:
        """Admin: daemon health."""
        return self._call(self._client.stats)

    def list_sessions(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Admin: every session (all pages, `limit` per request)."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self._call(self._client.list_sessions, limit=limit, after=after)
            out.extend(page.sessions)
            if page.after is None:
                return out
            after = page.after

    def run(self, workflow: str, session_id: str, inputs: dict[str, Any] | None = None, *,
            resume: bool = False) -> str:
        """Starts a workflow in the session (a worker serving it runs it);
        returns the run id at once. `execute` waits for the outcome.

        Raises:
            SessionNotFound: no such session, or no worker ever served `workflow`.
            Unavailable: the daemon does not run workflows.
        """
        self._need_token(session_id)
        return self._call(self._client.run, session_id, workflow, inputs, resume=resume)

    def execute(self, workflow: str, session_id: str, inputs: dict[str, Any] | None = None,
                *, resume: bool = False) -> dict[str, Any]:
        """Runs a workflow in the session and waits for it: returns
        ``{"run_id", "state", "progress", "result"}`` (`state`: completed,
        failed or cancelled; `progress`: the last reported, 0.0 … 1.0)."""
        self._need_token(session_id)
        last = [0.0]

        def on_progress(event: Any) -> None:
            last[0] = event.progress

        result = self._call(self._client.run_and_wait, session_id, workflow, inputs,
                            resume=resume, on_progress=on_progress)
        progress = 1.0 if result.status == "completed" else last[0]
        return {"run_id": result.run_id, "state": result.status, "progress": progress,
                "result": result.result}

    def register(self, name: str, fn: Callable[..., Any], *, concurrency: int = 1) -> None:
        """Serves workflow `name` from this process: `fn(ctx, inputs)` runs in
        the client's thread if it is async, in a worker thread if not (see
        `Worker`). The first call starts serving; later ones add names."""
        self._worker.register(name, fn)
        self._call(self._serve_workflows, concurrency)

    async def _serve_workflows(self, concurrency: int) -> None:
        if self._serving:
            await self._client.register_worker(self._worker.names, concurrency=concurrency)
            return
        assert self._nursery is not None
        self._serving = True
        await self._nursery.start(
            lambda task_status: self._worker.serve(self._client, concurrency=concurrency,
                                                   task_status=task_status))

    def ping(self) -> float:
        """Round trip to the daemon, in seconds."""
        return self._call(self._client.ping)

    def watch(self, session_id: str, *, since: int | None = None,
              channel: str | None = None) -> Generator[Message, None, None]:
        """The session's events as a plain generator (see `Watch` for what it
        yields and its guarantees). It ends after `Expired`/`Invalidated`;
        close it (``break`` out of the loop) to detach.

        Raises:
            SessionNotFound, Unauthorized, ...: when attaching, at the first
                ``next()``.
        """
        self._need_token(session_id)
        recv, scope, done = self._call(self._start_pump, session_id, since, channel)
        try:
            while True:
                try:
                    item = trio.from_thread.run(recv.receive, trio_token=self._trio_token)
                except trio.EndOfChannel:
                    return
                except trio.RunFinishedError:
                    raise trio.ClosedResourceError("this Nexus client is closed") from None
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
                if isinstance(item, Expired | Invalidated):
                    return
        finally:
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=self._trio_token)
                trio.from_thread.run(done.wait, trio_token=self._trio_token)
            except trio.RunFinishedError:
                pass

    async def _start_pump(self, session_id: str, since: int | None, channel: str | None
                          ) -> tuple[trio.MemoryReceiveChannel[Any], trio.CancelScope,
                                     trio.Event]:
        assert self._nursery is not None
        result: tuple[trio.MemoryReceiveChannel[Any], trio.CancelScope, trio.Event]
        result = await self._nursery.start(self._pump, session_id, since, channel)
        return result

    async def _pump(self, session_id: str, since: int | None, channel: str | None, *,
                    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[Any](0)
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with self._client.watch(session_id, since=since,
                                              channel=channel) as events, send:
                    task_status.started((recv, scope, done))
                    try:
                        async for event in events:
                            await send.send(event)
                    except Exception as exc:  # handed to the consuming thread
                        with contextlib.suppress(trio.BrokenResourceError):
                            await send.send(_Failure(exc))
        finally:
            done.set()
