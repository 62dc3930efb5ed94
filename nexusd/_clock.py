"""Wall-clock time for deadlines, and how long trio should wait for one.

Deadlines are stored as wall-clock seconds (they outlive the process), so
they are judged by the wall clock as it is now, read afresh each time: a
clock stepped by NTP, or a laptop resumed after a night's sleep, is seen at
once. Every wait still goes through trio (whose clock is monotonic, and a
`MockClock` in tests), so a wait for a wall-clock moment is an estimate that
the waiter checks again when it wakes (see `Reaper.run`).

The wall-clock source is injectable: tests give one that follows trio's
`MockClock`, or one that jumps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["WallClock"]


class WallClock:
    """Wall-clock seconds, from `wall` (by default `time.time`)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall

    def now(self) -> float:
        return self._wall()

    def to_trio(self, wall: float) -> float:
        """The `trio.current_time()` value at which wall-clock `wall` arrives,
        if the wall clock keeps pace with trio's from now on."""
        return trio.current_time() + (wall - self._wall())
