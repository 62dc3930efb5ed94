"""The registry: session id -> active actor; activation, creation, expiry of
dormant sessions.

Memory follows active sessions: an actor exists only while its session is in
use. The first request for a dormant session activates it from the store
(snapshot + replay); concurrent requests for it wait for that one activation.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Final, Literal, Protocol

import attrs
import msgpack
import trio
from nexus_protocol import Create, Created, ErrorCode

from ._auth import hash_token, new_session_id, new_token
from ._bus import Bus
from ._clock import WallClock
from ._errors import RequestError
from ._principal import Principal
from .session._actor import (
    ActorConfig,
    ActorDeps,
    BatchScope,
    SessionActor,
    meta_of,
    replay_events,
)
from .session._analytics import ChannelAnalytics
from .session._commands import CommandLimits
from .session._mailbox import Envelope, MailItem, Quiet
from .session._state import SessionState
from .store import IDLE_LAG, LoadedSession, SessionMeta, Store

__all__ = ["Cluster", "Registry", "RegistryStatistics", "SessionPolicy"]

log = logging.getLogger("nexusd.registry")

#: Ended sessions remembered so that late requests hear `expired`, not `not_found`.
TOMBSTONES: Final = 100_000
#: Actors the hibernator tells to hibernate in one turn of the event loop, and
#: heap entries it checks: each told actor saves its snapshot in the next turn,
#: so that many sessions falling quiet together never stall the loop at once.
QUIET_PER_TURN: Final = 64
CHECKS_PER_TURN: Final = 1024
#: Hibernator heap entries an activation looks through for a session to
#: hibernate when the daemon is at its active-session or memory bound.
EVICT_CHECKS: Final = 256
#: How long a session told to make room counts as leaving.
LEAVING_FOR: Final = 1.0
#: Snapshots of hibernating actors that may wait for the store at once: the
#: hibernator tells no more actors meanwhile, so that a write queued during a
#: storm waits for about two commits, not for every session still to go.
SAVING_MAX: Final = 512


class Cluster(Protocol):
    """What the registry needs of a cluster of daemons sharing one store: the
    session's owner (one daemon at a time runs its actor), and forwarding to
    it. Without one, every session is this daemon's."""

    @property
    def epoch(self) -> int:
        """This daemon's epoch: what owns a session here."""

    async def acquire(self, session_id: str) -> int | None:
        """The epoch of the session's owner, made this daemon if no live one
        holds it; None if there is no such session."""

    async def release(self, session_id: str) -> None:
        """The session's actor here has ended: another daemon may take it."""

    def forward(self, owner: int, item: Envelope) -> None:
        """Sends `item` to daemon `owner`, which answers into its sink."""

    def owner_of(self, session_id: str, item: Envelope) -> int | None:
        """The live daemon last found owning the session, if known: `item`
        goes there without asking Redis again."""

    def holds_lease(self) -> bool:
        """Whether this daemon's lease is surely still held: while it may have
        lapsed, another daemon may own any session."""

    def disconnect(self, principal: Principal) -> None:
        """The principal's channel is gone: the daemons that served it hear so."""


class _Elsewhere(Exception):
    def __init__(self, owner: int) -> None:
        self.owner = owner


@attrs.frozen
class SessionPolicy:
    """Defaults and bounds for sessions: lifetimes in seconds (a longer one
    asked for is clamped), `max_metadata` in encoded bytes, `max_sessions`
    stored, `max_active` in memory, `max_memory` bytes of snapshots and
    replay history held for active sessions."""

    default_ttl: float = 86400.0
    max_ttl: float = 30 * 86400.0
    default_idle: float | None = 3600.0
    max_idle: float = 7 * 86400.0
    max_metadata: int = 16 * 1024
    max_sessions: int = 1_000_000
    max_active: int = 50_000
    max_memory: int = 1 << 30


@attrs.frozen
class RegistryStatistics:
    active: int
    created: int
    activations: int
    hibernations: int
    ended: int
    stored: int
    memory: int  # bytes of snapshots and replay history of active sessions
    made_room: int  # sessions hibernated early to make room for others
    refused: int  # creates and activations refused: at a bound
    ended_by: dict[str, int] = attrs.Factory(dict)  # reason (ttl, idle, invalidated) -> count


class Registry:
    """The active sessions' actors, made with what they use.

    `schedule(session_id, deadline)` tells the reaper when to look at a
    session; `batch` is held by each actor while it serves a batch;
    `observe_flush` goes to each actor (see `ActorDeps`).
    """

    def __init__(self, *, store: Store, clock: WallClock, bus: Bus, batch: BatchScope,
                 analytics: ChannelAnalytics, limits: CommandLimits, max_frame: int,
                 policy: SessionPolicy, actor_config: ActorConfig,
                 schedule: Callable[[str, float], None], nursery: trio.Nursery,
                 stored: int = 0,
                 observe_flush: Callable[[float, float], None] | None = None,
                 cluster: Cluster | None = None) -> None:
        """`stored` is how many sessions the store holds at the start;
        `cluster` makes this daemon one of several sharing the store."""
        self._store = store
        self._clock = clock
        self._policy = policy
        self._actor_config = actor_config
        self._analytics = analytics
        self._schedule = schedule
        self._deps = ActorDeps(store=store, clock=clock, bus=bus, batch=batch,
                               analytics=analytics, limits=limits, max_frame=max_frame,
                               schedule=schedule, forget=self._forget,
                               tombstone=self._tombstone, saving=self.saving,
                               resized=self._resized, observe_flush=observe_flush)
        self._bus = bus
        self._nursery = nursery
        self._cluster = cluster
        self._actors: dict[str, SessionActor] = {}
        self._activating: dict[str, trio.Event] = {}
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        # The hibernator's heap: (when to check, tie-breaker, actor).
        self._quiet: list[tuple[float, int, weakref.ref[SessionActor]]] = []
        self._quiet_order = itertools.count()
        self._quiet_lot = trio.lowlevel.ParkingLot()
        self._saving = 0  # actors writing their last snapshot (see `saving`)
        self._saved_lot = trio.lowlevel.ParkingLot()
        self._created = self._activations = self._hibernations = self._ended = 0
        self._ended_by: Counter[str] = Counter()
        self._initially_stored = stored
        self._snapshot_bytes = 0  # of the active sessions' latest snapshots
        # Sessions told to hibernate to make room: session id -> (bytes, when).
        self._leaving: dict[str, tuple[int, float]] = {}
        self._made_room = self._refused = 0

    # ------------------------------------------------------------- lookups

    def active(self, session_id: str) -> SessionActor | None:
        return self._actors.get(session_id)

    @property
    def stored(self) -> int:
        """Sessions in the store (kept as they come and go, never counted)."""
        return self._initially_stored + self._created - self._ended

    @property
    def memory(self) -> int:
        """Bytes of snapshots and replay history held for active sessions."""
        return self._snapshot_bytes + self._bus.statistics().history_bytes

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(len(self._actors), self._created, self._activations,
                                  self._hibernations, self._ended, self.stored, self.memory,
                                  self._made_room, self._refused, dict(self._ended_by))

    def _forget(self, actor: SessionActor) -> None:
        """Called by an actor as it ends; later requests activate it anew."""
        if self._actors.get(actor.session_id) is actor:
            del self._actors[actor.session_id]
            self._hibernations += 1
            self._snapshot_bytes -= actor.snapshot_bytes
            self._leaving.pop(actor.session_id, None)

    def _resized(self, delta: int) -> None:
        """An active session's snapshot grew (or shrank) by `delta` bytes."""
        self._snapshot_bytes += delta

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Held by an actor while it writes its last snapshot (hibernating
        or stopping): the hibernator waits while `SAVING_MAX` do."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if self._saving < SAVING_MAX and self._saved_lot:
                self._saved_lot.unpark_all()

    def _tombstone(self, session_id: str, reason: str) -> None:
        self._ended += 1
        self._ended_by[reason] += 1
        self._remember_ended(session_id, reason)

    def _remember_ended(self, session_id: str, reason: str) -> None:
        self._tombstones[session_id] = reason
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)

    async def _gone_anywhere(self, session_id: str) -> RequestError:
        """`_gone`, asking the store why the session ended if it ended on
        another daemon."""
        if session_id not in self._tombstones:
            reason = await self._store.ended(session_id)
            if reason is not None:
                self._remember_ended(session_id, reason)
        return self._gone(session_id)

    def _gone(self, session_id: str) -> RequestError:
        reason = self._tombstones.get(session_id)
        if reason is None:
            return RequestError(ErrorCode.NOT_FOUND, f"session {session_id} not found")
        if reason == "invalidated":
            return RequestError(ErrorCode.EXPIRED, f"session {session_id} was invalidated")
        return RequestError(ErrorCode.EXPIRED, f"session {session_id} has expired ({reason})")

    # ------------------------------------------------------------ creation

    async def create(self, principal: Principal, req: Create) -> Created:
        """Creates a session on `principal`'s channel (unless the request
        names one); `principal` holds its admin scope. A ttl or idle timeout
        above its bound is clamped to it, and the reply says so.

        Raises:
            RequestError: `bad_request` for a ttl or idle timeout not above 0,
                or metadata over its bound; `busy` at the bound on stored or
                active sessions (or their memory).
        """
        p = self._policy
        ttl, clamped = _clamp("ttl", req.ttl, p.default_ttl, p.max_ttl)
        assert ttl is not None
        idle, idle_clamped = _clamp("idle_timeout", req.idle_timeout, p.default_idle,
                                    p.max_idle)
        if req.metadata or req.user_id:
            size = len(msgpack.packb([req.metadata, req.user_id], use_bin_type=True))
            if size > p.max_metadata:
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"metadata and user_id take {size} bytes; the most a "
                                   f"session may hold is {p.max_metadata}")
        if self.stored >= p.max_sessions:
            self._refused += 1
            raise RequestError(ErrorCode.BUSY,
                               f"the daemon holds the most sessions it may ({p.max_sessions})",
                               retry_after=60.0)
        self._make_room()
        channel = req.channel or principal.channel
        now = self._clock.now()
        sid, token = new_session_id(), new_token()
        state = SessionState(sid, now, channel, ttl, now + ttl, idle, user_id=req.user_id,
                             metadata=req.metadata or {})
        state.touch(channel, now, read=False)
        tokens = {hash_token(token): "admin"}
        snapshot = state.to_snapshot()
        actor = SessionActor(state, tokens, [], self._actor_config, self._deps,
                             stored_lag=IDLE_LAG, snapshot_bytes=len(snapshot))
        await self._store.create(actor.meta(), snapshot)
        await self._start(actor)
        self._created += 1
        self._analytics.session_created(channel)
        principal.remember(sid, "admin")
        return Created(id=req.id, session_id=sid, token=token, seq=0, expires_at=state.expires_at,
                       idle_timeout=idle, clamped=clamped or idle_clamped)

    # --------------------------------------------------------------- bounds

    def _make_room(self) -> None:
        """Makes room for one more active session: at the bound on active
        sessions or on their memory, tells the least recently used unwatched
        sessions to hibernate now.

        Raises:
            RequestError: `busy`, at a bound with no session that can leave.
        """
        p = self._policy
        now = trio.current_time()
        leaving = self._leaving
        if leaving:
            for sid in [sid for sid, (_, when) in leaving.items() if now - when > LEAVING_FOR]:
                del leaving[sid]
        count = len(self._actors) - len(leaving)
        memory = self.memory - sum(size for size, _ in leaving.values())
        checked = 0
        while count >= p.max_active or memory >= p.max_memory:
            actor = self._least_recently_used(now) if checked < EVICT_CHECKS else None
            checked += 1
            if actor is None:
                self._refused += 1
                what = "sessions" if count >= p.max_active else "session memory"
                raise RequestError(ErrorCode.BUSY,
                                   f"the daemon holds the most active {what} it may, all "
                                   "of them in use", retry_after=1.0)
            if actor is False or actor is True:
                continue
            size = actor.weight
            leaving[actor.session_id] = (size, now)
            self._made_room += 1
            count -= 1
            memory -= size

    def _least_recently_used(self, now: float) -> SessionActor | bool | None:
        """Takes the hibernator's next entry: its actor, told to hibernate now,
        if it could; False if it could not (try the next); None if there are
        no entries."""
        if not self._quiet:
            return None
        _, _, ref = heapq.heappop(self._quiet)
        actor = ref()
        if actor is None or actor.ended or actor.session_id in self._leaving:
            return False
        # Due again later whatever happens: an actor that stays (watched, or
        # with traffic before the Quiet) must still be checked for quiet.
        self._watch_quiet(actor, max(now, actor.last_traffic)
                          + self._actor_config.hibernate_after)
        if actor.may_hibernate() and not actor.watched and actor.send_nowait(Quiet(make_room=True)):
            return actor
        return False

    async def _start(self, actor: SessionActor) -> None:
        await self._nursery.start(self._run, actor)
        self._actors[actor.session_id] = actor
        self._snapshot_bytes += actor.snapshot_bytes
        self._schedule(actor.session_id, actor.deadline)
        self._watch_quiet(actor, trio.current_time() + self._actor_config.hibernate_after)

    async def _run(self, actor: SessionActor, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs `actor`; in a cluster, then lets another daemon take its
        session (after its last snapshot, unless it is active here again)."""
        await actor.run(task_status=task_status)
        if self._cluster is None:
            return
        sid = actor.session_id
        if sid in self._actors or sid in self._activating:
            return
        with self._claimed(sid):
            try:
                with trio.move_on_after(5):
                    await self._cluster.release(sid)
            except Exception as exc:  # its owner stays this daemon until it stops
                log.warning("session %s: cannot release it to other daemons: %s", sid, exc)

    @contextlib.contextmanager
    def _claimed(self, session_id: str) -> Iterator[None]:
        """Marks the session as being activated (or let go, or expired) by
        the caller: `actor_for` waits for it to finish."""
        done = self._activating[session_id] = trio.Event()
        try:
            yield
        finally:
            del self._activating[session_id]
            done.set()

    def _watch_quiet(self, actor: SessionActor, due: float) -> None:
        # A weak reference: an actor that ended is not kept alive by its entry.
        heapq.heappush(self._quiet, (due, next(self._quiet_order), weakref.ref(actor)))
        if self._quiet_lot:
            self._quiet_lot.unpark_all()

    async def hibernate_quiet(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
        """Tells each actor when it has had no traffic for `hibernate_after`
        (it hibernates then, unless watched).

        One heap entry per actor, checked when due: an actor that had
        traffic meanwhile is due again `hibernate_after` after it, so that
        traffic itself costs nothing here. At most `QUIET_PER_TURN` actors
        are told (and `CHECKS_PER_TURN` entries checked) per turn of the
        event loop: thousands of sessions falling quiet together hibernate
        over many short turns, between which everything else runs. While
        `SAVING_MAX` snapshots wait for the store, it tells no more.
        """
        task_status.started()
        told = checked = 0
        while True:
            if told >= QUIET_PER_TURN or checked >= CHECKS_PER_TURN:
                told = checked = 0
                await trio.lowlevel.checkpoint()
                while self._saving >= SAVING_MAX:
                    await self._saved_lot.park()
            if not self._quiet:
                await self._quiet_lot.park()
                continue
            due, _, ref = self._quiet[0]
            now = trio.current_time()
            if due > now:
                # New entries are never due before this one: `after` from now.
                told = checked = 0
                await trio.sleep_until(due)
                continue
            heapq.heappop(self._quiet)
            checked += 1
            told += self._check_quiet(ref, now)

    def _check_quiet(self, ref: weakref.ref[SessionActor], now: float) -> bool:
        """Checks one heap entry; True if it told its actor to hibernate."""
        # Not inline in `hibernate_quiet`: its frame, asleep, would keep the
        # last actor it looked at alive.
        actor = ref()
        if actor is None or actor.ended:
            return False
        after = self._actor_config.hibernate_after
        if actor.last_traffic + after > now:
            self._watch_quiet(actor, actor.last_traffic + after)
            return False
        told = actor.may_hibernate() and actor.send_nowait(Quiet())
        if not actor.ended:  # it may have traffic before it handles the Quiet
            self._watch_quiet(actor, now + after)
        return told

    # ---------------------------------------------------------- activation

    async def actor_for(self, session_id: str) -> SessionActor:
        """The active actor of `session_id`, activating it if it is dormant.

        Raises:
            RequestError: `not_found`, or `expired` for a session that ended.
        """
        while True:
            actor = self._actors.get(session_id)
            if actor is not None:
                return actor
            pending = self._activating.get(session_id)
            if pending is None:
                break
            await pending.wait()
        with self._claimed(session_id):
            return await self._activate(session_id)

    async def _activate(self, session_id: str) -> SessionActor:
        if session_id in self._tombstones:
            # Ended: its store rows may still be on their way out.
            raise self._gone(session_id)
        if self._cluster is not None:
            owner = await self._cluster.acquire(session_id)
            if owner is None:
                raise await self._gone_anywhere(session_id)
            if owner != self._cluster.epoch:
                raise _Elsewhere(owner)
            try:
                return await self._load(session_id)
            except BaseException:
                # Not active here after all: let another daemon have it.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self._cluster.release(session_id)
                    except Exception as exc:
                        log.warning("session %s: cannot release it: %s", session_id, exc)
                raise
        return await self._load(session_id)

    async def _load(self, session_id: str) -> SessionActor:
        loaded = await self._store.load(session_id)
        if loaded is None:
            raise await self._gone_anywhere(session_id)
        state = _restore(loaded)
        reason = state.expiry_reason(self._clock.now())
        if reason is not None:
            await self._store.delete(session_id, reason=reason)
            self._tombstone(session_id, reason)
            raise self._gone(session_id)
        history = [(e.seq, e.payload) for e in (*loaded.history, *loaded.events)]
        self._make_room()
        actor = SessionActor(state, dict(loaded.meta.tokens), history, self._actor_config,
                             self._deps, snapshot_bytes=len(loaded.snapshot or b""))
        await self._start(actor)
        self._activations += 1
        return actor

    async def submit(self, session_id: str, item: MailItem, patience: float) -> None:
        """Queues `item` for the session's actor, activating it if needed.

        Raises:
            RequestError: `not_found`, `expired`, or `busy`.
        """
        cluster = self._cluster
        if cluster is not None and not cluster.holds_lease():
            raise RequestError(ErrorCode.UNAVAILABLE,
                               "this daemon's lease in its cluster may have lapsed (it was "
                               "paused, or cut off from Redis); retry",
                               retry_after=1.0)
        if cluster is not None and session_id not in self._actors \
                and session_id not in self._activating and type(item) is Envelope:
            owner = cluster.owner_of(session_id, item)
            if owner is not None:
                cluster.forward(owner, item)
                return
        for _ in range(8):
            try:
                actor = await self.actor_for(session_id)
            except _Elsewhere as elsewhere:
                assert self._cluster is not None and type(item) is Envelope
                self._cluster.forward(elsewhere.owner, item)
                return
            try:
                await actor.send(item, patience)
                return
            except trio.ClosedResourceError:
                continue  # it ended between lookup and send; activate anew
        raise RequestError(ErrorCode.BUSY, f"session {session_id} keeps reloading",
                           retry_after=1.0)

    # --------------------------------------------------------------- expiry

    async def expire_dormant(self, meta: SessionMeta) -> Literal["expired", "kept", "active"]:
        """Ends a dormant session found past its deadline by the reaper.

        Returns "expired"; "kept" if it is gone already or not due after all;
        "active" if it turned out to be active (its actor decides).
        """
        sid = meta.session_id
        if sid in self._actors or sid in self._activating:
            return "active"
        with self._claimed(sid):
            if self._cluster is not None \
                    and await self._cluster.acquire(sid) != self._cluster.epoch:
                return "kept"  # gone, or active on another daemon: its actor decides
            loaded = await self._store.load(sid)
            if loaded is None:
                return "kept"
            state = _restore(loaded)
            reason = state.expiry_reason(self._clock.now())
            if reason is None:
                # Its journal shows later activity than the stored deadline
                # (the store refreshes that lazily): store the right one.
                await self._store.append(meta_of(state, loaded.meta.tokens), [])
                if self._cluster is not None:
                    await self._cluster.release(sid)
                return "kept"
            await self._store.delete(sid, reason=reason)
            self._tombstone(sid, reason)
            log.info("session %s expired while dormant (%s)", sid, reason)
            return "expired"

    def let_go(self) -> None:
        """This daemon's cluster lease lapsed (it was paused, or cut off from
        Redis): other daemons may have taken any of its sessions over, so
        every actor lets its session go (see `SessionActor.let_go`)."""
        actors = list(self._actors.values())
        if actors:
            log.warning("letting %d active sessions go: this daemon's lease lapsed and "
                        "other daemons may have taken them over", len(actors))
        for actor in actors:
            actor.let_go()

    def disconnect(self, principal: Principal) -> None:
        """The principal's channel is gone: in a cluster, the daemons that
        own sessions it used (its subscriptions there) hear so."""
        if self._cluster is not None:
            self._cluster.disconnect(principal)

    async def aclose(self) -> None:
        """Stops every actor: each finishes what its mailbox holds, writes its
        snapshot and ends."""
        for actor in list(self._actors.values()):
            actor.close()


def _clamp(name: str, value: float | None, default: float | None, maximum: float
           ) -> tuple[float | None, bool]:
    """`value` (or `default` if None) within (0, maximum]: the value, and
    whether it was clamped to `maximum`.

    Raises:
        RequestError: `bad_request` for a value not above 0.
    """
    if value is None:
        return default, False
    if not value > 0:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{name} must be above 0, not {value:g}")
    if value > maximum:
        return maximum, True
    return value, False


def _restore(loaded: LoadedSession) -> SessionState:
    """The state of a stored session: its snapshot and the events after it.

    Deadlines come from the state, not the stored metadata: the journal
    knows of every write, and the metadata of reads (and may lag writes).
    Metadata stored while the session was active may lag its reads by up to
    `idle_lag` (the daemon stopped without hibernating it: a crash), so the
    session is granted that much more: it may have been read that late.
    """
    if loaded.snapshot is None:
        raise RuntimeError(f"session {loaded.meta.session_id} has no snapshot")
    state = SessionState.from_snapshot(loaded.snapshot)
    replay_events(state, loaded.events)
    meta = loaded.meta
    if meta.idle_expires_at is not None and meta.idle_timeout is not None:
        state.last_activity = max(state.last_activity,
                                  meta.idle_expires_at - meta.idle_timeout) + meta.idle_lag
    return state
