"""The guide's best practices as library behaviour: retry with backoff for
callers, the optimal starting channel, the analytics chart."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from nexus_client import Backoff, Busy, Conflict, retry, retry_async, start_channel
from nexus_client._render import channel_chart


def _flaky(failures: list[Exception]):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "done"
    return call, calls


def test_retry_waits_with_backoff_and_honours_retry_after() -> None:
    call, calls = _flaky([Busy("full"), Busy("full", retry_after=2.5)])
    slept: list[float] = []
    policy = Backoff(base=0.1, max_attempts=3, jitter=lambda: 1.0)
    assert retry(call, policy, sleep=slept.append) == "done"
    assert (len(calls), slept) == (3, [0.1, 2.5])


def test_retry_gives_up_with_the_last_error_and_never_retries_others() -> None:
    call, calls = _flaky([Busy("1"), Busy("2"), Busy("3")])
    with pytest.raises(Busy, match="2"):
        retry(call, Backoff(max_attempts=2, jitter=lambda: 0.0), sleep=lambda s: None)
    assert len(calls) == 2
    call, calls = _flaky([Conflict("stale")])
    with pytest.raises(Conflict):
        retry(call, sleep=lambda s: None)
    assert len(calls) == 1


async def test_retry_async_sleeps_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    failures: list[Exception] = [Busy("full", retry_after=4.0)]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"
    start = trio.current_time()
    assert await retry_async(call, Backoff(jitter=lambda: 0.0)) == "done"
    assert trio.current_time() - start == pytest.approx(4.0)


def test_the_guides_optimal_starting_channel() -> None:
    assert start_channel("data_analysis", "expert") == "cli"
    assert start_channel("data_analysis", "intermediate") == "api"
    assert start_channel("ai_interaction") == "mcp"
    assert start_channel("general") == "api"


def test_the_channel_chart_is_scaled_to_the_most_used() -> None:
    assert channel_chart({"mcp": {"count": 1, "percentage": 25.0},
                          "cli": {"count": 3, "percentage": 75.0}}, width=6) == [
        "channel distribution (4 switches)",
        "  cli  ######      3   75.0%",
        "  mcp  ##          1   25.0%",
    ]
    assert channel_chart({}) == ["channel distribution: no channel switches yet"]
