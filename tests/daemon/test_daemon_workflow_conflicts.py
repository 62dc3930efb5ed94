"""A workflow step whose versioned write meets another channel's change:
the worker (nexus_client's `Worker`, `steps`) is told `conflict`, and the
attempt is done again from what the session holds now, up to run_attempts."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from nexus_client import AsyncClient, Change, RunContext, Worker, open_client, steps

from nexusd import Daemon

#: Virtual seconds (under `autojump_clock`): well past the backoffs, well
#: short of run_timeout (a run stuck until then fails the test).
PATIENCE = 600.0


async def _run(daemon: Daemon, worker: Worker, body: Any) -> None:
    assert daemon.socket_path is not None
    with trio.fail_after(PATIENCE):
        async with open_client(str(daemon.socket_path), channel="worker") as wc, \
                open_client(str(daemon.socket_path), channel="api") as api, \
                open_client(str(daemon.socket_path), channel="cli") as other, \
                trio.open_nursery() as nursery:
            await nursery.start(worker.serve, wc)
            await body(api, other)
            nursery.cancel_scope.cancel()


async def _run_changes(client: AsyncClient, session_id: str) -> list[dict[str, Any]]:
    """The session's `run` changes from the first to a run's end, as a
    watcher attaching at seq 0 sees them."""
    runs: list[dict[str, Any]] = []
    async with client.watch(session_id, since=0) as events:
        async for event in events:
            if isinstance(event, Change) and event.op == "run":
                runs.append(event.value)
                if event.value["event"] in ("completed", "failed", "cancelled"):
                    return runs
    raise AssertionError("the watch ended before the run did")


@pytest.mark.daemon_config(run_backoff=1.0)
async def test_a_steps_conflict_retries_the_attempt_from_the_session_now(
        daemon: Daemon, autojump_clock: object) -> None:
    seen: list[tuple[int, str]] = []
    other_client: list[AsyncClient] = []

    async def load(ctx: RunContext, inputs: dict[str, Any], data: dict[str, Any]
                   ) -> dict[str, Any]:
        seen.append((ctx.attempt, "load"))
        if ctx.attempt == 1:
            # Another channel changes the workflow's data while the step works.
            await other_client[0].set(ctx.session_id, "accumulated_data", {"by": "cli"})
        return {"loaded": inputs["data"]}

    async def size(ctx: RunContext, inputs: dict[str, Any], data: dict[str, Any]
                   ) -> dict[str, Any]:
        seen.append((ctx.attempt, "size"))
        return {"size": len(data["loaded"])}

    async def body(api: AsyncClient, other: AsyncClient) -> None:
        info = await api.create_session()
        await other.set(info.session_id, "note", "x", token=info.token)
        other_client.append(other)
        result = await api.run_and_wait(info.session_id, "guide-steps", {"data": "abc"})
        assert (result.status, result.result) == ("completed", {"loaded": "abc", "size": 3})
        # The first attempt's step 1 met the conflict and wrote nothing; the
        # second did every step, from the versions the session held then.
        assert seen == [(1, "load"), (2, "load"), (2, "size")]
        assert (await api.get(info.session_id, "current_step")).value == 2
        assert (await api.get(info.session_id, "accumulated_data")).value == \
            {"loaded": "abc", "size": 3}
        runs = await _run_changes(api, info.session_id)
        assert [(r["event"], r.get("attempt")) for r in runs] == [
            ("started", None), ("dispatched", 1), ("dispatched", 2), ("progress", None),
            ("progress", None), ("completed", 2)]

    await _run(daemon, Worker({"guide-steps": steps(load, size)}), body)


@pytest.mark.daemon_config(run_backoff=1.0, run_attempts=2)
async def test_a_conflict_every_attempt_fails_the_run_saying_so(
        daemon: Daemon, autojump_clock: object) -> None:
    attempts: list[int] = []

    async def stubborn(ctx: RunContext, inputs: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)
        entry = await ctx.session.get("counter")
        await ctx.session.set("counter", (entry.value or 0) + 1, expect=entry.version + 7)

    async def body(api: AsyncClient, other: AsyncClient) -> None:
        info = await api.create_session()
        result = await api.run_and_wait(info.session_id, "stubborn")
        assert result.status == "failed"
        assert result.result["error"].startswith("gave up after 2 attempts; the last: "
                                                 "Conflict: ")
        assert attempts == [1, 2]
        # No attempt wrote: each one's write was refused as a whole.
        assert (await api.get(info.session_id, "counter")).version == 0
        runs = await _run_changes(api, info.session_id)
        assert [(r["event"], r.get("attempt")) for r in runs] == [
            ("started", None), ("dispatched", 1), ("dispatched", 2), ("failed", 2)]

    await _run(daemon, Worker({"stubborn": stubborn}), body)
