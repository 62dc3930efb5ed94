"""The reaper: one task that sleeps until the next deadline and expires
sessions, absolute and idle alike.

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

import attrs
import trio

from ._actor import Ask, CheckExpiry, Envelope
from ._clock import WallClock
from ._registry import Registry
from ._state import EPSILON
from .store import Store

__all__ = ["Reaper", "ReaperStatistics"]

log = logging.getLogger("nexusd.reaper")


@attrs.frozen
class ReaperStatistics:
    scheduled: int
    wakeups: int
    checks: int
    dormant_expired: int


class Reaper:
    def __init__(self, registry: Registry, store: Store, clock: WallClock,
                 *, batch: int = 256) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock
        self.batch = batch
        self._heap: list[tuple[float, str]] = []
        # The one live heap entry of each session; other entries are stale.
        self._scheduled: dict[str, float] = {}
        self._wake = trio.Event()
        self._next_wake = -math.inf
        self._wakeups = self._checks = self._dormant = 0

    def statistics(self) -> ReaperStatistics:
        return ReaperStatistics(len(self._scheduled), self._wakeups, self._checks,
                                self._dormant)

    def schedule(self, session_id: str, deadline: float) -> None:
        """Makes sure the reaper looks at `session_id` by `deadline`."""
        scheduled = self._scheduled.get(session_id)
        if scheduled is not None and scheduled <= deadline:
            return  # it will be looked at by then anyway
        self._scheduled[session_id] = deadline
        heapq.heappush(self._heap, (deadline, session_id))
        if deadline < self._next_wake:
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            self._wakeups += 1
            now = self.clock.now() + EPSILON
            self._reap_active(now)
            stalled = await self._reap_dormant(now)
            stored = await self.store.next_deadline()
            nxt = min(self._heap[0][0] if self._heap else math.inf,
                      math.inf if stored is None else stored)
            wake_at = self.clock.to_trio(nxt)
            if stalled or nxt <= now:
                # An actor did not answer, or the store still lists a due
                # session: look again shortly instead of spinning.
                wake_at = max(wake_at, trio.current_time() + 0.1)
            self._wake = trio.Event()
            self._next_wake = nxt
            with trio.move_on_at(wake_at):
                await self._wake.wait()

    def _reap_active(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, sid = heapq.heappop(heap)
            if self._scheduled.get(sid) != deadline:
                continue  # superseded by an earlier entry
            del self._scheduled[sid]
            actor = self.registry.active(sid)
            if actor is None:
                continue  # hibernated or ended: the store's index has it
            if actor.deadline > now:
                self.schedule(sid, actor.deadline)
                continue
            self._checks += 1
            if not actor.send_nowait(Envelope(CheckExpiry(), ask=Ask())):
                # A full mailbox: the actor checks expiry on each request anyway.
                self.schedule(sid, now + 1.0)

    async def _reap_dormant(self, now: float) -> bool:
        stalled = False
        for meta in await self.store.due(now, self.batch):
            actor = self.registry.active(meta.session_id)
            if actor is None:
                try:
                    outcome = await self.registry.expire_dormant(meta)
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
                actor = self.registry.active(meta.session_id)
                if actor is None:
                    stalled = True
                    continue
            # Active, but the store's copy of its deadline is older than the
            # actor's: the actor expires or writes its true deadline.
            ask = Ask()
            self._checks += 1
            if not actor.send_nowait(Envelope(CheckExpiry(), ask=ask)):
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
