"""The session actor: one task per active session, the only code that touches
that session's state.

Requests arrive in a small bounded mailbox. The actor takes what is waiting,
applies consecutive writes to its state, journals them in one store append,
and only once the store returns fans each change out and acknowledges it:
acknowledged means durable. Anything other than a write first flushes the
writes before it, so no reader ever sees a change that is not yet durable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from nexus_protocol import (
    Attach,
    Attached,
    Change,
    Delete,
    Detach,
    ErrorCode,
    Expired,
    Get,
    Grant,
    Granted,
    Invalidate,
    Invalidated,
    Lagged,
    Limits,
    Message,
    Ok,
    Patch,
    Presence,
    Renew,
    Renewed,
    Report,
    Set,
    Snapshot,
    StateReply,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Switched,
    Sync,
    UpdateContext,
    Value,
    Written,
    check_value,
    decode_body,
    encode_body,
)

from ._auth import hash_token, new_token, scope_allows, verify_token
from ._errors import RequestError
from ._state import MAX_HISTORY, SessionState, count_label
from ._store import IDLE_LAG, SessionMeta, StoredEvent

if TYPE_CHECKING:
    from ._outbox import Outbox
    from ._registry import Registry

__all__ = [
    "ActorConfig",
    "Ask",
    "Caller",
    "CheckExpiry",
    "Disconnect",
    "Envelope",
    "Quiet",
    "SessionActor",
    "meta_of",
    "replay_events",
]

log = logging.getLogger("nexusd.actor")

#: Sessions whose proven scope one connection remembers; beyond that the
#: least recently proven must show their token again.
MAX_GRANTS: Final = 10_000

WRITES: Final = (Set, Delete, Patch, UpdateContext, SwitchBegin, SwitchComplete, Renew)


@attrs.define(eq=False)
class Caller:
    """A connection as the actors see it. `grants` caches, per session, the
    scope a token has already proven on this connection."""

    connection_id: str
    channel: str
    client: str
    admin: bool
    outbox: Outbox
    grants: dict[str, str] = attrs.Factory(dict)
    subscriptions: set[str] = attrs.Factory(set)

    @property
    def writer(self) -> str:
        return self.client or self.connection_id

    def remember(self, session_id: str, scope: str) -> None:
        """Caches a proven scope; the oldest entries go past MAX_GRANTS."""
        grants = self.grants
        grants.pop(session_id, None)
        grants[session_id] = scope
        while len(grants) > MAX_GRANTS:
            del grants[next(iter(grants))]


@attrs.define(eq=False)
class Ask:
    """A request from inside the daemon, answered through an event."""

    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: RequestError | None = None

    def resolve(self, result: Any = None, error: RequestError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    async def wait(self) -> Any:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


@attrs.frozen
class CheckExpiry:
    """From the reaper: expire if due, else persist the true deadline."""


@attrs.frozen
class Quiet:
    """From the registry: no traffic for `hibernate_after`; hibernate if unwatched."""


@attrs.frozen
class Disconnect:
    """A connection closed: forget its subscription, announce it left."""

    connection_id: str


@attrs.define(eq=False)
class Envelope:
    """One mailbox item: a protocol request from a connection, or an internal
    command with an `Ask` to answer."""

    request: Message | CheckExpiry | Disconnect | Quiet
    caller: Caller | None = None
    ask: Ask | None = None


@attrs.define(eq=False)
class _Subscriber:
    caller: Caller
    channel: str
    scope: str


@attrs.frozen
class ActorConfig:
    mailbox_size: int = 64
    max_batch: int = 256
    hibernate_after: float = 60.0
    retention: int = 1000
    snapshot_every: int = 1000
    max_keys: int = 10_000
    max_ttl: float = 30 * 86400.0


class SessionActor:
    """Owns one session while it is active.

    The registry makes it (`activate`) and runs `run` in its nursery; the actor
    ends by hibernating (state handed to the store), by expiring, or with the
    daemon, and in every case fails whatever is left in its mailbox.
    """

    def __init__(self, registry: Registry, state: SessionState, tokens: dict[str, str],
                 history: list[tuple[int, bytes]], config: ActorConfig, *,
                 stored_lag: float = 0.0) -> None:
        """`stored_lag` is the `idle_lag` of the metadata stored for `state`
        (a state restored from the store has that lag in its last activity
        already: 0)."""
        self.registry = registry
        self.store = registry.store
        self.clock = registry.clock
        self.config = config
        self.state = state
        self.tokens = tokens
        self.session_id = state.session_id
        self._send, self._inbox = trio.open_memory_channel[Envelope](config.mailbox_size)
        self._history: deque[tuple[int, bytes]] = deque(history, maxlen=config.retention)
        self._subscribers: dict[str, _Subscriber] = {}
        self._pending: list[tuple[Change, bytes]] = []
        self._pending_replies: list[tuple[Envelope, Message]] = []
        # Taken from the mailbox, not yet handled: failed with the rest if the
        # actor ends part-way through a batch.
        self._batch: deque[Envelope] = deque()
        # The events an attach's reply is followed by (replayed changes, or a
        # snapshot), prepared before the subscriber is added.
        self._catch_up: list[bytes] = []
        self._since_snapshot = 0
        self._published_seq = state.seq
        # The latest activity a recovery would grant the session from what
        # the store holds: activity past it is stored before its replies leave.
        self._covered = state.last_activity + stored_lag
        self.last_traffic = trio.current_time()  # the registry's hibernator reads it
        self.ended = False

    # ------------------------------------------------------------ outside API

    @property
    def deadline(self) -> float:
        return self.state.deadline

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def may_hibernate(self) -> bool:
        """Whether a `Quiet` could make a difference: the session is
        unwatched, or a watcher's connection closed without its goodbye
        reaching the mailbox. Watched sessions are not woken for nothing."""
        return not self._subscribers or any(
            sub.caller.outbox.closed for sub in self._subscribers.values())

    async def send(self, envelope: Envelope, patience: float) -> None:
        """Queues `envelope`, waiting at most `patience` seconds for mailbox room.

        Raises:
            RequestError: `busy` when the mailbox stays full.
            trio.ClosedResourceError: the actor has ended; activate anew.
        """
        try:
            self._send.send_nowait(envelope)
            return
        except trio.WouldBlock:
            pass
        with trio.move_on_after(patience):
            await self._send.send(envelope)
            return
        raise RequestError(ErrorCode.BUSY, f"session {self.session_id} is busy",
                           retry_after=min(patience, 1.0))

    def close(self) -> None:
        """No new requests: the actor serves what its mailbox holds, writes
        its snapshot and ends."""
        self._send.close()

    def send_nowait(self, envelope: Envelope) -> bool:
        try:
            self._send.send_nowait(envelope)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    # -------------------------------------------------------------- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            await self._loop()
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("session %s: actor failed; it will be reactivated from the store",
                          self.session_id)
            # Watchers resume from what they last saw, which reactivates the
            # session from its durable state.
            for sub in self._subscribers.values():
                sub.caller.subscriptions.discard(self.session_id)
                sub.caller.outbox.reply(Lagged(session_id=self.session_id,
                                               seq=self._published_seq))
            self._forget_subscribers()
        finally:
            self._end(ErrorCode.UNAVAILABLE, "the session was reloading; retry")

    async def _loop(self) -> None:
        while True:
            try:
                envelope = await self._inbox.receive()
            except trio.EndOfChannel:
                await self._hibernate()
                return
            batch = [envelope]
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self._inbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break  # after a close, the next receive ends the loop
            if len(batch) > 1 or type(envelope.request) is not Quiet:
                self.last_traffic = trio.current_time()
            self._batch.extend(batch)
            # The batch's replies and events leave together, on release.
            self.registry.flusher.hold()
            try:
                while self._batch:
                    if not await self._handle(self._batch.popleft()):
                        return
                await self._flush()
                if self.state.idle_timeout is not None \
                        and self.state.last_activity > self._covered:
                    # Reads moved the idle deadline past what a recovery
                    # would grant: store it (once per IDLE_LAG at most).
                    await self._store_meta()
            finally:
                self.registry.flusher.release()

    async def _hibernate(self) -> None:
        self._close_mailbox()
        with self.registry.saving(), trio.move_on_after(30, shield=True):
            # The exact deadline: no actor lags it any more.
            await self.store.save_snapshot(meta_of(self.state, self.tokens), self.state.seq,
                                           self.state.to_snapshot())
        log.debug("session %s hibernated at seq %d", self.session_id, self.state.seq)

    def _close_mailbox(self) -> None:
        self.registry.forget(self)
        self._send.close()

    def _end(self, code: ErrorCode, message: str) -> None:
        """Fails every request still in the mailbox; called once, at the end."""
        if self.ended:
            return
        self.ended = True
        self._forget_subscribers()
        self._close_mailbox()
        while True:
            try:
                env = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._fail(env, RequestError(code, message))
        for env, _reply in self._pending_replies:
            self._fail(env, RequestError(code, message))
        self._pending_replies.clear()
        while self._batch:
            self._fail(self._batch.popleft(), RequestError(code, message))
        self._inbox.close()

    def _forget_subscribers(self) -> None:
        self.registry.subscribers -= len(self._subscribers)
        self._subscribers.clear()

    def _fail(self, env: Envelope, error: RequestError) -> None:
        if env.ask is not None:
            env.ask.resolve(error=error)
        elif env.caller is not None:
            env.caller.outbox.reply(error.reply(getattr(env.request, "id", None)))

    def meta(self) -> SessionMeta:
        """The metadata to store while the session is active: its idle
        deadline may lag by IDLE_LAG (see `_covered`)."""
        return meta_of(self.state, self.tokens, IDLE_LAG)

    async def _store_meta(self) -> None:
        """Stores the metadata as it is now (an append without events)."""
        meta = self.meta()
        await self.store.append(meta, [])
        self._stored(meta)

    def _stored(self, meta: SessionMeta) -> None:
        """Notes that the store holds `meta` (or later)."""
        if meta.idle_expires_at is not None and meta.idle_timeout is not None:
            self._covered = max(self._covered,
                                meta.idle_expires_at - meta.idle_timeout + meta.idle_lag)

    # ---------------------------------------------------------- dispatching

    async def _handle(self, env: Envelope) -> bool:
        """Handles one envelope. False when the actor has ended."""
        req = env.request
        now = self.clock.now()
        reason = self.state.expiry_reason(now)
        if reason is not None and not isinstance(req, Disconnect):
            await self._flush()
            await self._expire(reason)
            self._fail(env, RequestError(ErrorCode.EXPIRED,
                                         f"session {self.session_id} has expired"))
            return False
        if isinstance(req, CheckExpiry):
            await self._flush()
            with trio.move_on_after(30, shield=True):
                await self._store_meta()
            self.registry.reaper.schedule(self.session_id, self.state.deadline)
            assert env.ask is not None
            env.ask.resolve()
            return True
        if isinstance(req, Disconnect):
            self._unsubscribe(req.connection_id)
            return True
        if isinstance(req, Quiet):
            # Connections that closed without their goodbye reaching us (a
            # full mailbox) no longer count.
            for cid, sub in list(self._subscribers.items()):
                if sub.caller.outbox.closed:
                    self._unsubscribe(cid)
            quiet = trio.current_time() - self.last_traffic >= self.config.hibernate_after
            if quiet and not self._subscribers and not self._batch and not self._pending \
                    and self._inbox.statistics().current_buffer_used == 0:
                await self._hibernate()
                return False
            return True
        if isinstance(req, Invalidate):
            await self._flush()
            try:
                self._authorize(env, "admin")
            except RequestError as exc:
                self._fail(env, exc)
                return True
            await self._invalidate(req.reason or "")
            self._deliver(env, Ok(id=req.id))
            return False
        if isinstance(req, Grant):
            # Not a change, but the new token must be durable before it is shown.
            await self._flush()
            try:
                granted = self._grant(env, req)
            except RequestError as exc:
                self._fail(env, exc)
                return True
            await self._store_meta()
            self._deliver(env, granted)
            return True
        write = isinstance(req, WRITES)
        if not write:
            await self._flush()
        reply: Message
        try:
            reply = self._serve(env, now)
        except RequestError as exc:
            reply = exc.reply(getattr(req, "id", None))
        if write:
            self._pending_replies.append((env, reply))
        else:
            self._deliver(env, reply)
            if isinstance(reply, Attached):
                outbox = env.caller.outbox  # type: ignore[union-attr]
                for body in self._catch_up:
                    outbox.reply_event(body)
                self._catch_up = []
        return True

    def _deliver(self, env: Envelope, reply: Message) -> None:
        if env.ask is not None:
            env.ask.resolve(reply)
        elif env.caller is not None:
            env.caller.outbox.reply(reply)

    def _authorize(self, env: Envelope, needed: str) -> None:
        caller = env.caller
        if caller is None:
            return
        sid = self.session_id
        granted = caller.grants.get(sid)
        token = getattr(env.request, "token", None)
        if token is not None:
            # Checked even when the connection has proven a scope already: a
            # request that carries a wrong token is refused, not served on the
            # strength of an earlier one (a gateway may multiplex many users).
            scope = verify_token(token, self.tokens)
            if scope is None:
                raise RequestError(ErrorCode.UNAUTHORIZED,
                                   f"the token is not valid for session {sid}")
            if granted is None or scope_allows(scope, granted):
                caller.remember(sid, scope)
                granted = scope
        if granted is None:
            if needed == "admin" and caller.admin:
                return
            raise RequestError(ErrorCode.UNAUTHORIZED, f"session {sid} needs a token")
        if not scope_allows(granted, needed):
            if needed == "admin" and caller.admin:
                return
            raise RequestError(ErrorCode.FORBIDDEN,
                               f"this token's scope is {granted!r}; the request needs {needed!r}")

    def _serve(self, env: Envelope, now: float) -> Message:
        req = env.request
        caller = env.caller
        assert caller is not None
        state = self.state
        if isinstance(req, Set):
            self._authorize(env, "write")
            self._expect(req.key, req.expect)
            self._check_stored("the value", req.value)
            if req.key not in state.entries and len(state.entries) >= self.config.max_keys:
                raise self._full()
            version = state.version_of(req.key) + 1
            seq = self._change(caller, now, "set", key=req.key, value=req.value, version=version)
            return Written(id=req.id, seq=seq, version=version)
        if isinstance(req, Delete):
            self._authorize(env, "write")
            self._expect(req.key, req.expect)
            if req.key not in state.entries:
                raise RequestError(ErrorCode.NOT_FOUND, f"no key {req.key!r} in the session")
            version = state.version_of(req.key) + 1
            seq = self._change(caller, now, "delete", key=req.key, version=version)
            return Written(id=req.id, seq=seq, version=version)
        if isinstance(req, Patch):
            return self._patch(env, req, now)
        if isinstance(req, Get):
            self._authorize(env, "read")
            state.touch(caller.channel, now, read=True)
            if req.key is None:
                return self._state_reply(req.id)
            entry = state.entries.get(req.key)
            if entry is None:
                return Value(id=req.id, key=req.key, value=None,
                             version=state.version_of(req.key))
            return Value(id=req.id, key=req.key, value=entry.value, version=entry.version,
                         updated_at=entry.updated_at, channel=entry.channel)
        if isinstance(req, Sync):
            self._authorize(env, "read")
            state.touch(req.channel, now, read=True)
            return self._state_reply(req.id)
        if isinstance(req, Attach):
            return self._attach(env, req, now)
        if isinstance(req, Detach):
            self._unsubscribe(caller.connection_id)
            return Ok(id=req.id)
        if isinstance(req, UpdateContext):
            self._authorize(env, "write")
            for part in ("preferences", "history", "metrics"):
                self._check_stored(part, getattr(req, part), room=1)
            ctx = dict(state.context)
            ctx["current_channel"] = req.channel or caller.channel
            if req.preferences is not None:
                ctx["preferences"] = req.preferences
            if req.history is not None:
                ctx["history"] = req.history[-MAX_HISTORY:]
            if req.metrics is not None:
                ctx["metrics"] = req.metrics
            ctx["updated_at"] = now
            seq = self._change(caller, now, "context", value=ctx)
            return Written(id=req.id, seq=seq)
        if isinstance(req, SwitchBegin):
            self._authorize(env, "write")
            current = state.context.get("current_channel")
            if req.from_channel is not None and req.from_channel != current:
                # A switch begins where the session is; a client that thinks
                # otherwise has missed a change.
                raise RequestError(
                    ErrorCode.CONFLICT, f"the session's current channel is {current!r}, "
                                        f"not {req.from_channel!r}: cannot switch from it")
            self._check_stored("context", req.context, room=1)
            transition_id = new_token()[4:20]
            transition = {
                "transition_id": transition_id,
                "from_channel": current,
                "to_channel": req.to_channel,
                "reason": req.reason or "user_requested",
                "context": req.context or {},
                "started_at": now, "completed_at": None, "success": None,
            }
            seq = self._change(caller, now, "switch_begin", value=transition)
            return Switched(id=req.id, seq=seq, transition_id=transition_id)
        if isinstance(req, SwitchComplete):
            self._authorize(env, "write")
            for t in state.transitions:
                if t["transition_id"] == req.transition_id:
                    break
            else:
                raise RequestError(ErrorCode.NOT_FOUND,
                                   f"no transition {req.transition_id!r} in the session")
            if t["completed_at"] is not None:
                raise RequestError(ErrorCode.CONFLICT,
                                   f"transition {req.transition_id!r} is already complete")
            done = {**t, "completed_at": now, "success": req.success,
                    "duration": now - t["started_at"]}
            seq = self._change(caller, now, "switch_complete", value=done)
            return Switched(id=req.id, seq=seq, transition_id=req.transition_id)
        if isinstance(req, Renew):
            self._authorize(env, "write")
            ttl = state.ttl if req.ttl is None else req.ttl
            if not 0 < ttl <= self.config.max_ttl:
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"ttl must be in (0, {self.config.max_ttl:g}] seconds")
            expires_at = now + ttl
            seq = self._change(caller, now, "renew", value={"expires_at": expires_at})
            self.registry.reaper.schedule(self.session_id, state.deadline)
            return Renewed(id=req.id, seq=seq, expires_at=expires_at)
        if isinstance(req, Summary):
            self._authorize(env, "read")
            return Report(id=req.id, report=state.summary(now))
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"{type(req).__name__} is not a session request")

    def _grant(self, env: Envelope, req: Grant) -> Granted:
        self._authorize(env, "admin")
        if req.scope not in ("read", "write", "admin"):
            raise RequestError(ErrorCode.BAD_REQUEST, "scope must be one of read, write, admin")
        token = new_token()
        self.tokens = {**self.tokens, hash_token(token): req.scope}
        return Granted(id=req.id, token=token, scope=req.scope)

    def _check_stored(self, name: str, value: Any, room: int = 2) -> None:
        """A stored value travels again inside `state`, `snapshot` and
        `change` messages, up to `room` levels deeper than it arrived; it
        must still fit the depth limit there."""
        limit = self.registry.limits.max_depth - room
        try:
            check_value(value, limit)
        except ValueError:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"{name} nests deeper than {limit} levels, the most a "
                               "session can hold") from None

    def _full(self) -> RequestError:
        return RequestError(ErrorCode.BAD_REQUEST,
                            f"the session already holds the maximum of {self.config.max_keys} keys")

    def _expect(self, key: str, expect: int | None) -> None:
        if expect is None:
            return
        current = self.state.version_of(key)
        exists = key in self.state.entries
        if expect == 0 and not exists:
            return
        if not exists:
            deleted = f" (deleted at version {current})" if current else ""
            raise RequestError(ErrorCode.CONFLICT,
                               f"key {key!r} does not exist{deleted}; expected version "
                               f"{expect}")
        if expect != current:
            raise RequestError(ErrorCode.CONFLICT,
                               f"key {key!r} is at version {current}, not {expect}")

    def _patch(self, env: Envelope, req: Patch, now: float) -> Message:
        self._authorize(env, "write")
        state = self.state
        both = set(req.set) & set(req.delete)
        if both:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"keys both set and deleted: {sorted(both)}")
        if not req.set and not req.delete:
            raise RequestError(ErrorCode.BAD_REQUEST, "an empty patch")
        if len(req.set) + len(req.delete) > self.registry.limits.max_patch:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"more than {self.registry.limits.max_patch} keys in one patch")
        for key, expect in (req.expect or {}).items():
            self._expect(key, expect)
        for key, v in req.set.items():
            self._check_stored(f"the value of {key!r}", v)
        missing = [k for k in req.delete if k not in state.entries]
        if missing:
            raise RequestError(ErrorCode.NOT_FOUND, f"no keys {missing} in the session")
        new = sum(1 for k in req.set if k not in state.entries) - len(req.delete)
        if len(state.entries) + new > self.config.max_keys:
            raise self._full()
        versions = {k: state.version_of(k) + 1 for k in (*req.set, *req.delete)}
        value = {"set": req.set, "delete": req.delete, "versions": versions}
        assert env.caller is not None
        seq = self._change(env.caller, now, "patch", value=value)
        return Written(id=req.id, seq=seq, versions=versions)

    def _state_reply(self, request_id: int) -> StateReply:
        s = self.state
        return StateReply(id=request_id, session_id=s.session_id, seq=s.seq,
                          entries=s.wire_entries(), context=s.context,
                          created_at=s.created_at, expires_at=s.expires_at,
                          idle_expires_at=s.idle_expires_at)

    # ------------------------------------------------------- changes, fan-out

    def _change(self, caller: Caller, now: float, op: str, *, key: str | None = None,
                value: Any = None, version: int | None = None) -> int:
        change = Change(session_id=self.session_id, seq=self.state.seq + 1, op=op, ts=now,
                        channel=caller.channel, writer=caller.writer, key=key, value=value,
                        version=version)
        body = encode_body(change)
        if len(body) > self.registry.limits.max_frame:
            raise RequestError(ErrorCode.TOO_LARGE,
                               "the change would exceed the frame limit for subscribers")
        self.state.apply(change)
        self._pending.append((change, body))
        seq: int = change.seq
        return seq

    async def _flush(self) -> None:
        """Journals pending changes, then fans them out and acknowledges them.

        If the store fails, the exception ends the actor: the changes were
        never acknowledged, and the session reactivates from what is durable.
        """
        if not self._pending:
            for env, reply in self._pending_replies:
                self._deliver(env, reply)
            self._pending_replies.clear()
            return
        pending, self._pending = self._pending, []
        events = [StoredEvent(c.seq, c.ts, body) for c, body in pending]
        await self.store.append(self.meta(), events)
        # The journal holds these times, and a recovery adds IDLE_LAG to them.
        self._covered = max(self._covered, events[-1].ts + IDLE_LAG)
        for change, body in pending:
            self._history.append((change.seq, body))
            self._published_seq = change.seq
            self._fan_out(body, change.seq)
            count_label(self.registry.changes_on, change.channel)
            if change.op == "switch_complete" and change.value["success"]:
                count_label(self.registry.switches_to, change.value["to_channel"])
        replies, self._pending_replies = self._pending_replies, []
        for env, reply in replies:
            self._deliver(env, reply)
        self._since_snapshot += len(pending)
        if self._since_snapshot >= self.config.snapshot_every:
            self._since_snapshot = 0
            meta = self.meta()
            await self.store.save_snapshot(meta, self.state.seq, self.state.to_snapshot())
            self._stored(meta)

    def _fan_out(self, body: bytes, seq: int) -> None:
        lagging = [sub for sub in self._subscribers.values()
                   if not sub.caller.outbox.push_event(body)]
        for sub in lagging:
            cid = sub.caller.connection_id
            del self._subscribers[cid]
            self.registry.subscribers -= 1
            sub.caller.subscriptions.discard(self.session_id)
            sub.caller.outbox.reply(Lagged(session_id=self.session_id, seq=seq - 1))
            self._presence("leave", sub)

    def _broadcast(self, message: Message) -> None:
        body = encode_body(message)
        for sub in list(self._subscribers.values()):
            sub.caller.outbox.push_event(body)

    def _presence(self, action: str, sub: _Subscriber) -> None:
        if not self._subscribers:
            return
        self._broadcast(Presence(session_id=self.session_id, action=action,
                                 connection_id=sub.caller.connection_id,
                                 channel=sub.channel, client=sub.caller.client))

    def _attach(self, env: Envelope, req: Attach, now: float) -> Attached:
        if req.scope not in ("read", "write"):
            raise RequestError(ErrorCode.BAD_REQUEST, "scope must be read or write")
        self._authorize(env, req.scope)
        caller = env.caller
        assert caller is not None
        recovered = self._can_replay(req.since)
        if recovered:
            assert req.since is not None
            catch_up = [body for seq, body in self._history if seq > req.since]
        else:
            s = self.state
            body = encode_body(Snapshot(
                session_id=s.session_id, seq=s.seq, entries=s.wire_entries(),
                context=s.context, recovered=req.since is None))
            if len(body) > self.registry.limits.max_frame:
                raise RequestError(
                    ErrorCode.TOO_LARGE,
                    f"the session's snapshot ({len(body)} bytes) exceeds the frame limit "
                    f"of {self.registry.limits.max_frame}; read it key by key")
            catch_up = [body]
        self.state.touch(req.channel or caller.channel, now, read=True)
        sub = _Subscriber(caller, req.channel or caller.channel, req.scope)
        old = self._subscribers.pop(caller.connection_id, None)
        if old is None:
            self._presence("join", sub)  # to the others; the joiner gets the list
            self.registry.subscribers += 1
        self._subscribers[caller.connection_id] = sub
        caller.subscriptions.add(self.session_id)
        presence = [{"connection_id": s.caller.connection_id, "channel": s.channel,
                     "client": s.caller.client} for s in self._subscribers.values()]
        self._catch_up = catch_up
        return Attached(id=req.id, session_id=self.session_id, seq=self.state.seq,
                        recovered=recovered, scope=req.scope, presence=presence)

    def _can_replay(self, since: int | None) -> bool:
        if since is None or since > self.state.seq:
            return False
        if since == self.state.seq:
            return True
        return bool(self._history) and self._history[0][0] <= since + 1

    def _unsubscribe(self, connection_id: str) -> None:
        sub = self._subscribers.pop(connection_id, None)
        if sub is not None:
            self.registry.subscribers -= 1
            sub.caller.subscriptions.discard(self.session_id)
            self._presence("leave", sub)

    # -------------------------------------------------------------- endings

    async def _expire(self, reason: str) -> None:
        self._broadcast(Expired(session_id=self.session_id, reason=reason))
        await self._remove(f"session {self.session_id} has expired", ErrorCode.EXPIRED,
                           reason)

    async def _invalidate(self, reason: str) -> None:
        self._broadcast(Invalidated(session_id=self.session_id, reason=reason))
        await self._remove(f"session {self.session_id} was invalidated", ErrorCode.EXPIRED,
                           "invalidated")

    async def _remove(self, message: str, code: ErrorCode, reason: str) -> None:
        for sub in self._subscribers.values():
            sub.caller.subscriptions.discard(self.session_id)
        self._forget_subscribers()
        self.registry.tombstone(self.session_id, reason)
        self._end(code, message)
        with trio.move_on_after(30, shield=True):
            await self.store.delete(self.session_id)
        log.info("session %s ended (%s)", self.session_id, reason)


# Journaled changes were checked when they were written; replay must not
# reject them because the daemon now runs with tighter limits.
_REPLAY_LIMITS: Final = Limits(max_frame=0xFFFF_FFFF, max_key=1 << 20, max_depth=1 << 16,
                               max_patch=1 << 30)


def meta_of(s: SessionState, tokens: dict[str, str], idle_lag: float = 0.0) -> SessionMeta:
    """What the store indexes about the session in state `s`."""
    return SessionMeta(s.session_id, s.created_at, s.ttl, s.expires_at, s.idle_timeout,
                       s.idle_expires_at, tokens, idle_lag)


def replay_events(state: SessionState, events: Iterable[StoredEvent]) -> None:
    """Applies journaled events to a state loaded from its snapshot."""
    for event in events:
        change = decode_body(event.payload, _REPLAY_LIMITS)
        assert isinstance(change, Change)
        state.apply(change)

