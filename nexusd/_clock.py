"""Wall-clock time derived from trio's clock.

Deadlines are stored as wall-clock seconds (they outlive the process), but
every wait goes through trio, so a `MockClock` drives expiry in tests. The
offset between the two is fixed when the clock is made.
"""

from __future__ import annotations

import time

import trio

__all__ = ["WallClock"]


class WallClock:
    """Wall-clock seconds that advance with `trio.current_time()`."""

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset

    def to_trio(self, wall: float) -> float:
        """The `trio.current_time()` value at which wall-clock `wall` arrives."""
        return wall - self._offset
