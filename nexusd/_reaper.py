"""The reaper: one task that sleeps until the next deadline and expires
sessions, absolute and idle alike.

Deadlines are wall-clock times, judged by the wall clock as it reads now;
the reaper's sleep re-reads it at least every `WALL_RECHECK` seconds, so a
step of the clock is noticed within that bound.

Active sessions' deadlines sit in a heap. Entries are never updated in place:
when one comes due, the reaper compares it with the actor's current deadline
(activity moves idle deadlines later) and pushes the later one back. Dormant
sessions are found through the store's deadline index, so a million of them
cost nothing until one is due.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Final, Literal, Protocol

import attrs
import trio

from ._clock import WallClock
from .session._actor import SessionActor
from .session._mailbox import Ask, CheckExpiry
from .session._state import EPSILON
from .store import SessionMeta, Store

__all__ = ["Deadlines", "Reaper", "ReaperStatistics", "Sessions"]

log = logging.getLogger("nexusd.reaper")

#: The longest the reaper sleeps without reading the wall clock again, in
#: seconds: how late an expiry can be after the wall clock steps forward
#: (NTP, a resumed laptop). Each look costs one clock read, no store query.
WALL_RECHECK: Final = 1.0
#: How often a daemon that does not look for dormant sessions (another daemon
#: of its cluster does) checks whether that is still so.
DORMANT_RECHECK: Final = 1.0


@attrs.frozen
class ReaperStatistics:
    scheduled: int
    wakeups: int
    checks: int
    dormant_expired: int


class Sessions(Protocol):
    """The sessions the reaper expires (the registry)."""

    def active(self, session_id: str) -> SessionActor | None:
        """The session's actor, if it is active."""

    async def expire_dormant(self, meta: SessionMeta) -> Literal["expired", "kept", "active"]:
        """Ends a dormant session found past its stored deadline."""


class Deadlines:
    """The active sessions' deadlines: a heap whose entries are never updated
    in place, only superseded by earlier ones. Whoever activates a session or
    brings its deadline earlier calls `schedule`; the reaper drains it."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, str]] = []
        # The one live heap entry of each session; other entries are stale.
        self.scheduled: dict[str, float] = {}
        self.wake = trio.Event()
        self.next_wake = -math.inf

    def schedule(self, session_id: str, deadline: float) -> None:
        """Makes sure the reaper looks at `session_id` by `deadline`."""
        scheduled = self.scheduled.get(session_id)
        if scheduled is not None and scheduled <= deadline:
            return  # it will be looked at by then anyway
        self.scheduled[session_id] = deadline
        heapq.heappush(self.heap, (deadline, session_id))
        if deadline < self.next_wake:
            self.wake.set()


class Reaper:
    def __init__(self, deadlines: Deadlines, sessions: Sessions, store: Store,
                 clock: WallClock, *, batch: int = 256,
                 dormant: Callable[[], bool] | None = None) -> None:
        """`dormant()` says whether this daemon looks for dormant sessions
        past their deadline in the store (in a cluster, one daemon at a time
        does); by default it always does."""
        self.dormant = dormant
        self.deadlines = deadlines
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.batch = batch
        self._wakeups = self._checks = self._dormant = 0

    def statistics(self) -> ReaperStatistics:
        return ReaperStatistics(len(self.deadlines.scheduled), self._wakeups, self._checks,
                                self._dormant)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        d = self.deadlines
        while True:
            self._wakeups += 1
            now = self.clock.now() + EPSILON
            self._reap_active(now)
            if self.dormant is None or self.dormant():
                stalled = await self._reap_dormant(now)
                stored = await self.store.next_deadline()
            else:  # another daemon does; look again whether it still does
                stalled, stored = False, now + DORMANT_RECHECK
            nxt = min(d.heap[0][0] if d.heap else math.inf,
                      math.inf if stored is None else stored)
            d.wake = trio.Event()
            d.next_wake = nxt
            # An actor did not answer, or the store still lists a due
            # session: look again shortly instead of spinning.
            await self._sleep_until(nxt, 0.1 if stalled or nxt <= now else 0.0)

    async def _sleep_until(self, deadline: float, at_least: float) -> None:
        """Sleeps until the wall clock reads `deadline` (and for `at_least`
        seconds), or until `schedule` asks for an earlier look.

        trio's clock is monotonic: it does not follow steps of the wall
        clock, nor (on Linux) the time a machine spends suspended. So the
        sleep is cut into spans of at most `WALL_RECHECK` seconds, and the
        wall clock read again after each: a session due after a step forward
        expires within `WALL_RECHECK` seconds of it, and after a step back
        the reaper sleeps on (sessions are judged by the wall clock as it
        reads, so none expires early).
        """
        wait = max(deadline - self.clock.now(), at_least)
        while wait > 0:
            with trio.move_on_after(min(wait, WALL_RECHECK)) as slept:
                await self.deadlines.wake.wait()
            if not slept.cancelled_caught or wait <= WALL_RECHECK:
                return
            wait = deadline - self.clock.now()

    def _reap_active(self, now: float) -> None:
        d = self.deadlines
        heap = d.heap
        while heap and heap[0][0] <= now:
            deadline, sid = heapq.heappop(heap)
            if d.scheduled.get(sid) != deadline:
                continue  # superseded by an earlier entry
            del d.scheduled[sid]
            actor = self.sessions.active(sid)
            if actor is None:
                continue  # hibernated or ended: the store's index has it
            if actor.deadline > now:
                d.schedule(sid, actor.deadline)
                continue
            self._checks += 1
            if not actor.send_nowait(CheckExpiry()):
                # A full mailbox: the actor checks expiry on each request anyway.
                d.schedule(sid, now + 1.0)

    async def _reap_dormant(self, now: float) -> bool:
        stalled = False
        for meta in await self.store.due(now, self.batch):
            actor = self.sessions.active(meta.session_id)
            if actor is None:
                try:
                    outcome = await self.sessions.expire_dormant(meta)
                except Exception:
                    # One unreadable session must not stop expiry for the rest.
                    log.exception("cannot expire session %s; retrying later",
                                  meta.session_id)
                    stalled = True
                    continue
                if outcome == "expired":
                    self._dormant += 1
                if outcome != "active":
                    continue
                actor = self.sessions.active(meta.session_id)
                if actor is None:
                    stalled = True
                    continue
            # Active, but the store's copy of its deadline is older than the
            # actor's: the actor expires or writes its true deadline.
            ask = Ask()
            self._checks += 1
            if not actor.send_nowait(CheckExpiry(ask)):
                stalled = True
                continue
            with trio.move_on_after(5.0):
                try:
                    await ask.wait()
                except Exception as exc:  # the actor ended: nothing left to do
                    log.debug("expiry check of %s: %s", meta.session_id, exc)
                continue
            stalled = True
        return stalled
