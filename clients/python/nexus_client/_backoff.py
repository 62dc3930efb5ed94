"""How long to wait before reconnecting, or before retrying a call:
exponential backoff with full jitter (`Backoff`, `retry`, `retry_async`)."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import attrs
import trio

from ._errors import Busy, NexusError, Timeout, Unavailable

__all__ = ["RETRYABLE", "Backoff", "retry", "retry_async"]

_T = TypeVar("_T")

#: Errors that say "try again later": nothing was applied.
RETRYABLE: Final[tuple[type[NexusError], ...]] = (Busy, Unavailable, Timeout)


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class Backoff:
    """Reconnect policy.

    Before reconnect attempt ``n`` (0 for the first after a drop) the client
    sleeps ``uniform(0, min(max_delay, base * 2**n))`` seconds ("full jitter",
    so that many clients dropped by one daemon restart do not return in step),
    and never less than the `retry_after` the daemon asked for. After
    `max_attempts` failed attempts in a row it gives up (None: never).

    Attributes:
        base: the cap of the first delay, in seconds.
        max_delay: the largest cap.
        max_attempts: consecutive failed attempts before giving up, or None.
        jitter: returns a float in [0, 1); `random.random` by default.
            Tests pass a constant to get exact delays.
    """

    base: float = attrs.field(default=0.1, validator=_positive)
    max_delay: float = attrs.field(default=10.0, validator=_positive)
    max_attempts: int | None = 10
    jitter: Callable[[], float] = attrs.field(default=random.random, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay before attempt `attempt`."""
        # min() before the power would overflow for large attempt numbers.
        if attempt >= 64:
            return self.max_delay
        return min(self.max_delay, self.base * float(2 ** attempt))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before attempt `attempt` (0-based)."""
        d = self.cap(attempt) * float(self.jitter())
        if retry_after is not None:
            d = max(d, retry_after)
        return d

    def gives_up_after(self, attempt: int) -> bool:
        """True when `attempt` (0-based) failed attempts exhaust the budget."""
        return self.max_attempts is not None and attempt >= self.max_attempts


def retry(call: Callable[[], _T], backoff: Backoff | None = None, *,
          retry_on: tuple[type[BaseException], ...] = RETRYABLE,
          sleep: Callable[[float], object] = time.sleep) -> _T:
    """``call()``, tried again after each `retry_on` error with `backoff`'s
    delays (honouring the error's `retry_after`) until it succeeds or the
    backoff gives up; then the last error is raised. The guide's "retry with
    exponential backoff" for blocking callers (`Nexus`).

    Only retry what is safe to repeat: `Busy`, `Unavailable` and `Timeout`
    mean the daemon did not apply the request, except that a `Timeout` may
    have been applied once it was sent.
    """
    policy = backoff or Backoff(max_attempts=3)
    attempt = 0
    while True:
        try:
            return call()
        except retry_on as exc:
            if policy.gives_up_after(attempt + 1):
                raise
            sleep(policy.delay(attempt, getattr(exc, "retry_after", None)))
            attempt += 1


async def retry_async(call: Callable[[], Awaitable[_T]], backoff: Backoff | None = None, *,
                      retry_on: tuple[type[BaseException], ...] = RETRYABLE) -> _T:
    """`retry` for trio callers (`AsyncClient`): ``await call()``, with
    ``trio.sleep`` between attempts."""
    policy = backoff or Backoff(max_attempts=3)
    attempt = 0
    while True:
        try:
            return await call()
        except retry_on as exc:
            if policy.gives_up_after(attempt + 1):
                raise
            await trio.sleep(policy.delay(attempt, getattr(exc, "retry_after", None)))
            attempt += 1
