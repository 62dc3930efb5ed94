"""The session actor: one task per active session, the only code that touches
that session's state.

Requests arrive in a small bounded mailbox. The actor takes what is waiting
and decides each request through its row in `COMMANDS`; it applies the
consecutive writes to its state, journals them in one store append, and only
once the store returns publishes each change on the bus and acknowledges it:
acknowledged means durable. Anything other than a write first flushes the
writes before it, so no reader ever sees a change that is not yet durable.

Everything the actor uses is given to it when it is made (`ActorDeps`); it
knows nothing of the registry, the reaper or the transports.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Final, Protocol, cast

import attrs
import trio
from nexus_protocol import (
    Attached,
    Change,
    ErrorCode,
    Expired,
    Invalidated,
    Lagged,
    Limits,
    Message,
    Presence,
    Snapshot,
    decode_body,
    encode_body,
)

from .._bus import Bus
from .._clock import WallClock
from .._errors import RequestError
from .._principal import EventSink, Principal
from ..store import IDLE_LAG, Fenced, SessionMeta, Store, StoredEvent, StoreError
from ._access import authorize
from ._analytics import ChannelAnalytics
from ._commands import (
    COMMANDS,
    AddToken,
    CommandLimits,
    Context,
    Effect,
    End,
    Subscribe,
    Unsubscribe,
)
from ._mailbox import CheckExpiry, Disconnect, Envelope, MailItem, Quiet
from ._state import SessionState

__all__ = ["ActorConfig", "ActorDeps", "BatchScope", "SessionActor", "meta_of",
           "replay_events"]

log = logging.getLogger("nexusd.actor")


class BatchScope(Protocol):
    """Held by an actor while it serves a batch: the replies and events the
    batch produces leave together on release (the transports' `Flusher`)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


@attrs.frozen
class ActorConfig:
    mailbox_size: int = 64
    max_batch: int = 256
    hibernate_after: float = 60.0
    snapshot_every: int = 1000


@attrs.frozen
class ActorDeps:
    """What every actor uses, given by the registry that makes them.

    `forget(actor)` is called as an actor ends, `tombstone(session_id,
    reason)` when its session ends for good, `schedule(session_id, deadline)`
    when its deadline may have come earlier, `resized(delta)` when its
    snapshot's size changes by `delta` bytes; `saving()` is held while the
    actor writes its last snapshot (the hibernator paces itself by it);
    `observe_flush(commit, sync)` (for the metrics) after each batch of
    writes is durable and published: the seconds the store took, and the
    seconds since its oldest change was decided, by the wall clock.
    """

    store: Store
    clock: WallClock
    bus: Bus
    batch: BatchScope
    analytics: ChannelAnalytics
    limits: CommandLimits
    max_frame: int
    schedule: Callable[[str, float], None]
    forget: Callable[[SessionActor], None]
    tombstone: Callable[[str, str], None]
    saving: Callable[[], AbstractContextManager[None]]
    resized: Callable[[int], None] = lambda delta: None
    observe_flush: Callable[[float, float], None] | None = None


class _Watcher:
    """A subscriber of the session's topic: the principal's event sink, with
    the channel and scope it attached with."""

    __slots__ = ("channel", "principal", "push_event", "reply", "scope", "sink")

    def __init__(self, principal: Principal, sink: EventSink, channel: str, scope: str
                 ) -> None:
        self.principal = principal
        self.sink = sink
        self.channel = channel
        self.scope = scope
        # Bound once: the bus calls these for every event.
        self.push_event = sink.push_event
        self.reply = sink.reply

    @property
    def closed(self) -> bool:
        return self.sink.closed


class SessionActor:
    """Owns one session while it is active.

    The registry makes it and runs `run` in its nursery; the actor ends by
    hibernating (state handed to the store), by expiring, or with the daemon,
    and in every case fails whatever is left in its mailbox.
    """

    def __init__(self, state: SessionState, tokens: dict[str, str],
                 history: Iterable[tuple[int, bytes]], config: ActorConfig,
                 deps: ActorDeps, *, stored_lag: float = 0.0, snapshot_bytes: int = 0
                 ) -> None:
        """`stored_lag` is the `idle_lag` of the metadata stored for `state`
        (a state restored from the store has that lag in its last activity
        already: 0); `snapshot_bytes` the size of its latest snapshot."""
        self.config = config
        self.state = state
        self.tokens = tokens
        self.session_id = state.session_id
        self._store = deps.store
        self._clock = deps.clock
        self._batch_scope = deps.batch
        self._analytics = deps.analytics
        self._limits = deps.limits
        self._max_frame = deps.max_frame
        self._schedule = deps.schedule
        self._forget = deps.forget
        self._tombstone = deps.tombstone
        self._resized = deps.resized
        self.snapshot_bytes = snapshot_bytes
        self._saving = deps.saving
        self._observe_flush = deps.observe_flush
        self._topic = deps.bus.open(self.session_id, state.seq, history)
        self._send, self._inbox = trio.open_memory_channel[MailItem](config.mailbox_size)
        self._pending: list[tuple[Change, bytes]] = []
        self._pending_replies: list[tuple[Envelope, Message]] = []
        # Taken from the mailbox, not yet handled: failed with the rest if the
        # actor ends part-way through a batch.
        self._batch: deque[MailItem] = deque()
        self._since_snapshot = 0
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
        return len(self._topic.subscribers)

    @property
    def watched(self) -> bool:
        """A watcher's connection is still open."""
        return any(not w.closed for w in self._watchers.values())

    @property
    def weight(self) -> int:
        """Bytes the session holds in memory, as encoded: its latest
        snapshot and the changes retained for replay."""
        return self.snapshot_bytes + self._topic.history_bytes

    def _attached(self) -> list[str]:
        """The channels watchers are attached on now."""
        return sorted({w.channel for w in self._watchers.values() if not w.closed})

    @property
    def _watchers(self) -> Mapping[str, _Watcher]:
        # Only this actor subscribes to its topic, and only watchers.
        return cast(Mapping[str, _Watcher], self._topic.subscribers)

    def may_hibernate(self) -> bool:
        """Whether a `Quiet` could make a difference: the session is
        unwatched, or a watcher's connection closed without its goodbye
        reaching the mailbox. Watched sessions are not woken for nothing."""
        watchers = self._watchers
        return not watchers or any(w.closed for w in watchers.values())

    async def send(self, item: MailItem, patience: float) -> None:
        """Queues `item`, waiting at most `patience` seconds for mailbox room.

        Raises:
            RequestError: `busy` when the mailbox stays full.
            trio.ClosedResourceError: the actor has ended; activate anew.
        """
        try:
            self._send.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        with trio.move_on_after(patience):
            await self._send.send(item)
            return
        raise RequestError(ErrorCode.BUSY, f"session {self.session_id} is busy",
                           retry_after=min(patience, 1.0))

    def close(self) -> None:
        """No new requests: the actor serves what its mailbox holds, writes
        its snapshot and ends."""
        self._send.close()

    def let_go(self) -> None:
        """Another daemon may own the session now (this daemon's cluster
        lease lapsed): its watchers are told `lagged` and resume wherever it
        is, and the actor ends like `close`, its writes refused if it was
        taken over."""
        self._drop_watchers()
        self._close_mailbox()

    def _drop_watchers(self) -> None:
        """Tells every watcher `lagged` at the session's seq and forgets it:
        each resumes from what it was sent, activating the session anew."""
        lagged = Lagged(session_id=self.session_id, seq=self._topic.seq)
        for cid in list(self._watchers):
            watcher = self._watchers[cid]
            self._topic.unsubscribe(cid)
            watcher.principal.subscriptions.discard(self.session_id)
            watcher.reply(lagged)

    def send_nowait(self, item: MailItem) -> bool:
        """Queues `item` if the mailbox has room; False if not, or if the actor ended."""
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    # -------------------------------------------------------------- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        why = "the session was reloading; retry"
        try:
            await self._loop()
        except trio.Cancelled:
            raise
        except Exception as exc:
            if isinstance(exc, Fenced):  # another daemon of the cluster has the session
                log.warning("session %s: %s; its actor here ends", self.session_id, exc)
            elif isinstance(exc, StoreError):  # not written, or not known to be
                why = f"the store failed ({exc}); the write may not be kept; retry"
                log.warning("session %s: %s; it will be reactivated from the store",
                            self.session_id, exc)
            else:
                log.exception("session %s: actor failed; it will be reactivated from the "
                              "store", self.session_id)
            # Watchers resume from what they last saw, which reactivates the
            # session from its durable state.
            self._drop_watchers()
        finally:
            self._end(ErrorCode.UNAVAILABLE, why)

    async def _loop(self) -> None:
        while True:
            try:
                item = await self._inbox.receive()
            except trio.EndOfChannel:
                await self._hibernate()
                return
            batch = [item]
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self._inbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break  # after a close, the next receive ends the loop
            if len(batch) > 1 or type(item) is not Quiet:
                self.last_traffic = trio.current_time()
            self._batch.extend(batch)
            # The batch's replies and events leave together, on release.
            self._batch_scope.hold()
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
                self._batch_scope.release()

    async def _hibernate(self) -> None:
        self._close_mailbox()
        with self._saving(), trio.move_on_after(30, shield=True):
            # The exact deadline: no actor lags it any more.
            await self._store.save_snapshot(meta_of(self.state, self.tokens), self.state.seq,
                                            self.state.to_snapshot())
        log.debug("session %s hibernated at seq %d", self.session_id, self.state.seq)

    def _close_mailbox(self) -> None:
        self._forget(self)
        self._send.close()

    def _end(self, code: ErrorCode, message: str) -> None:
        """Fails every request still in the mailbox; called once, at the end."""
        if self.ended:
            return
        self.ended = True
        self._close_mailbox()
        while True:
            try:
                item = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._fail(item, RequestError(code, message))
        for env, _reply in self._pending_replies:
            self._fail(env, RequestError(code, message))
        self._pending_replies.clear()
        while self._batch:
            self._fail(self._batch.popleft(), RequestError(code, message))
        self._inbox.close()
        self._topic.close()

    def _fail(self, item: MailItem, error: RequestError) -> None:
        if type(item) is Envelope:
            item.sink.reply(error.reply(item.request.id))
        elif type(item) is CheckExpiry:
            item.ask.resolve(error=error)

    def meta(self) -> SessionMeta:
        """The metadata to store while the session is active: its idle
        deadline may lag by IDLE_LAG (see `_covered`)."""
        return meta_of(self.state, self.tokens, IDLE_LAG)

    async def _store_meta(self) -> None:
        """Stores the metadata as it is now (an append without events)."""
        meta = self.meta()
        await self._store.append(meta, [])
        self._stored(meta)

    def _stored(self, meta: SessionMeta) -> None:
        """Notes that the store holds `meta` (or later)."""
        if meta.idle_expires_at is not None and meta.idle_timeout is not None:
            self._covered = max(self._covered,
                                meta.idle_expires_at - meta.idle_timeout + meta.idle_lag)

    # ---------------------------------------------------------- dispatching

    async def _handle(self, item: MailItem) -> bool:
        """Handles one mailbox item. False when the actor has ended."""
        if type(item) is Disconnect:
            self._unsubscribe(item.connection_id)
            return True
        now = self._clock.now()
        reason = self.state.expiry_reason(now)
        if reason is not None:
            await self._flush()
            await self._expire(reason)
            self._fail(item, RequestError(ErrorCode.EXPIRED,
                                          f"session {self.session_id} has expired"))
            return False
        if type(item) is Envelope:
            return await self._serve(item, now)
        if type(item) is CheckExpiry:
            await self._flush()
            with trio.move_on_after(30, shield=True):
                await self._store_meta()
            self._schedule(self.session_id, self.state.deadline)
            item.ask.resolve()
            return True
        assert type(item) is Quiet
        return not await self._quiet(item.make_room)

    async def _serve(self, env: Envelope, now: float) -> bool:
        """Decides and carries out one request. False when the actor has ended."""
        req = env.request
        command = COMMANDS.get(type(req))
        write = command is not None and command.write
        if not write:
            await self._flush()
        reply: Message | None
        try:
            if command is None:
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"{type(req).__name__} is not a session request")
            principal = env.principal
            scope = command.scope
            if scope is not None:
                authorize(principal, self.session_id, self.tokens,
                          getattr(req, "token", None),
                          scope if type(scope) is str else scope(req))  # type: ignore[operator]
            decision = command.decide(self.state, req, Context(
                now, principal.channel, principal.writer, self._limits, self._attached))
            if decision.change is not None:
                self._commit(decision.change)
                if decision.reschedule:
                    self._schedule(self.session_id, self.state.deadline)
            if decision.touch is not None:
                self.state.touch(decision.touch, now, read=True)
            reply = decision.reply
            if decision.effect is not None:
                return await self._carry_out(env, decision.effect, reply, now)
        except RequestError as exc:
            reply = exc.reply(req.id)
        assert reply is not None
        if write:
            self._pending_replies.append((env, reply))
        else:
            env.sink.reply(reply)
        return True

    async def _carry_out(self, env: Envelope, effect: Effect, reply: Message | None,
                         now: float) -> bool:
        """Carries out a decision's effect, then replies. False when the actor
        has ended.

        Raises:
            RequestError: the effect cannot be carried out; nothing changed.
        """
        kind = type(effect)
        if kind is Subscribe:
            self._subscribe(env, cast(Subscribe, effect), now)
            return True
        assert reply is not None
        if kind is Unsubscribe:
            self._unsubscribe(env.principal.connection_id)
        elif kind is AddToken:
            # Not a change, but the new token must be durable before it is shown.
            token = cast(AddToken, effect)
            self.tokens = {**self.tokens, token.digest: token.scope}
            await self._store_meta()
        elif kind is End:
            await self._invalidate(cast(End, effect).reason)
            env.sink.reply(reply)
            return False
        env.sink.reply(reply)
        return True

    async def _quiet(self, make_room: bool = False) -> bool:
        """Hibernates if quiet (or told to make room) and unwatched; True if it did."""
        # Connections that closed without their goodbye reaching us (a full
        # mailbox) no longer count.
        for cid, watcher in list(self._watchers.items()):
            if watcher.closed:
                self._unsubscribe(cid)
        quiet = make_room or \
            trio.current_time() - self.last_traffic >= self.config.hibernate_after
        if quiet and not self._watchers and not self._batch and not self._pending \
                and self._inbox.statistics().current_buffer_used == 0:
            await self._hibernate()
            return True
        return False

    # ------------------------------------------------------- changes, fan-out

    def _commit(self, change: Change) -> None:
        """Applies a decided change; it is journaled and published by `_flush`.

        Raises:
            RequestError: `too_large`, the change would not fit in a frame.
        """
        body = encode_body(change)
        if len(body) > self._max_frame:
            raise RequestError(ErrorCode.TOO_LARGE,
                               "the change would exceed the frame limit for subscribers")
        self.state.apply(change)
        self._pending.append((change, body))

    async def _flush(self) -> None:
        """Journals pending changes, then publishes and acknowledges them.

        If the store fails, the exception ends the actor: the changes were
        never acknowledged, and the session reactivates from what is durable.
        """
        if not self._pending:
            for env, reply in self._pending_replies:
                env.sink.reply(reply)
            self._pending_replies.clear()
            return
        pending, self._pending = self._pending, []
        events = [StoredEvent(c.seq, c.ts, body) for c, body in pending]
        started = time.perf_counter()
        await self._store.append(self.meta(), events)
        committed_in = time.perf_counter() - started
        # The journal holds these times, and a recovery adds IDLE_LAG to them.
        self._covered = max(self._covered, events[-1].ts + IDLE_LAG)
        publish, committed = self._topic.publish, self._analytics.committed
        for change, body in pending:
            for _cid, watcher in publish(change.seq, body):
                lost = cast(_Watcher, watcher)
                lost.principal.subscriptions.discard(self.session_id)
                self._presence("leave", lost)
            committed(change)
        if self._observe_flush is not None:
            self._observe_flush(committed_in, self._clock.now() - pending[0][0].ts)
        replies, self._pending_replies = self._pending_replies, []
        for env, reply in replies:
            env.sink.reply(reply)
        self._since_snapshot += len(pending)
        if self._since_snapshot >= self.config.snapshot_every:
            self._since_snapshot = 0
            meta = self.meta()
            snapshot = self.state.to_snapshot()
            await self._store.save_snapshot(meta, self.state.seq, snapshot)
            self._stored(meta)
            self._resized(len(snapshot) - self.snapshot_bytes)
            self.snapshot_bytes = len(snapshot)

    def _presence(self, action: str, watcher: _Watcher) -> None:
        if not self._watchers:
            return
        principal = watcher.principal
        self._topic.broadcast(encode_body(Presence(
            session_id=self.session_id, action=action,
            connection_id=principal.connection_id, channel=watcher.channel,
            client=principal.client)))

    def _subscribe(self, env: Envelope, sub: Subscribe, now: float) -> None:
        """Attaches the principal and replies `attached`, followed by the
        replayed changes or a snapshot.

        Raises:
            RequestError: the sink cannot hold events, or the snapshot would
                not fit in a frame.
        """
        sink = env.sink
        if not isinstance(sink, EventSink):
            raise RequestError(ErrorCode.BAD_REQUEST, "this channel cannot watch a session")
        catch_up = self._topic.replay(sub.since)
        recovered = catch_up is not None
        if catch_up is None:
            s = self.state
            body = encode_body(Snapshot(
                session_id=s.session_id, seq=s.seq, entries=s.wire_entries(),
                context=s.context, recovered=sub.since is None))
            if len(body) > self._max_frame:
                raise RequestError(
                    ErrorCode.TOO_LARGE,
                    f"the session's snapshot ({len(body)} bytes) exceeds the frame limit "
                    f"of {self._max_frame}; read it key by key")
            catch_up = [body]
        self.state.touch(sub.channel, now, read=True)
        principal = env.principal
        cid = principal.connection_id
        watcher = _Watcher(principal, sink, sub.channel, sub.scope)
        if cid not in self._watchers:
            self._presence("join", watcher)  # to the others; the joiner gets the list
        self._topic.subscribe(cid, watcher)
        principal.subscriptions.add(self.session_id)
        presence = [{"connection_id": w.principal.connection_id, "channel": w.channel,
                     "client": w.principal.client} for w in self._watchers.values()]
        sink.reply(Attached(id=sub.request_id, session_id=self.session_id,
                            seq=self.state.seq, recovered=recovered, scope=sub.scope,
                            presence=presence))
        for body in catch_up:
            sink.reply_event(body)

    def _unsubscribe(self, connection_id: str) -> None:
        watcher = self._topic.unsubscribe(connection_id)
        if watcher is not None:
            lost = cast(_Watcher, watcher)
            lost.principal.subscriptions.discard(self.session_id)
            self._presence("leave", lost)

    # -------------------------------------------------------------- endings

    async def _expire(self, reason: str) -> None:
        self._topic.broadcast(encode_body(Expired(session_id=self.session_id, reason=reason)))
        await self._remove(f"session {self.session_id} has expired", ErrorCode.EXPIRED,
                           reason)

    async def _invalidate(self, reason: str) -> None:
        self._topic.broadcast(encode_body(Invalidated(session_id=self.session_id,
                                                      reason=reason)))
        await self._remove(f"session {self.session_id} was invalidated", ErrorCode.EXPIRED,
                           "invalidated")

    async def _remove(self, message: str, code: ErrorCode, reason: str) -> None:
        for cid in list(self._watchers):
            watcher = self._watchers[cid]
            self._topic.unsubscribe(cid)
            watcher.principal.subscriptions.discard(self.session_id)
        self._tombstone(self.session_id, reason)
        self._end(code, message)
        with trio.move_on_after(30, shield=True):
            await self._store.delete(self.session_id, reason=reason)
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

