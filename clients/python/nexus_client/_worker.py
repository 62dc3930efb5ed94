"""`Worker`: runs workflows for a nexusd daemon (SPEC section 15).

A worker registers the workflow names it serves; the daemon dispatches runs
of them to it. Each run calls the function registered for its name with a
`RunContext` and the run's inputs::

    worker = Worker()

    @worker.workflow("data-processor")
    async def process(ctx, inputs):
        await ctx.progress(1, 2, "loading")
        entry = await ctx.session.get("accumulated_data")
        ...
        return {"rows": 10}

    async with open_client() as client:
        await worker.serve(client)

A plain (non-async) function runs in a thread, with a `SyncRunContext` whose
methods block. Delivery is at least once: a run whose worker died or missed
its lease comes again with `ctx.attempt` + 1 and the same
`ctx.idempotency_key`. `steps(...)` makes a multi-step workflow whose progress
and state live in the session, so that a later attempt continues where the
last one stopped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import attrs
import trio
from nexus_protocol import Dispatch, Message, Result

from ._async_client import AsyncClient
from ._errors import Conflict, ConnectionLost, NexusError, SessionNotFound
from ._types import Entry, SessionState, WriteResult

__all__ = ["Retry", "RunContext", "SessionHandle", "SyncRunContext", "Worker", "steps"]

log = logging.getLogger("nexus_client.worker")

Workflow = Callable[..., Any]


class Retry(Exception):
    """Raised by a workflow to give the run back for another attempt."""


class SessionHandle:
    """The run's session, read and written by the worker (it may while it
    holds the run: no token needed)."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self._client = client
        self.session_id = session_id

    async def get(self, key: str) -> Entry:
        return await self._client.get(self.session_id, key)

    async def state(self) -> SessionState:
        return await self._client.get(self.session_id)

    async def set(self, key: str, value: Any, *, expect: int | None = None) -> WriteResult:
        """Writes `key`; with `expect`, only if it is at that version (`Conflict`)."""
        return await self._client.set(self.session_id, key, value, expect=expect)

    async def patch(self, set: Mapping[str, Any] | None = None,
                    delete: list[str] | None = None, *,
                    expect: Mapping[str, int] | None = None) -> WriteResult:
        return await self._client.patch(self.session_id, set, delete, expect=expect)


@attrs.define
class RunContext:
    """What a workflow function is given besides its inputs."""

    client: AsyncClient
    session_id: str
    run_id: str
    workflow: str
    attempt: int
    idempotency_key: str
    resume: bool
    session: SessionHandle

    async def progress(self, step: int, total: int, message: str = "",
                       data: Any = None) -> WriteResult:
        """Records step `step` of `total` in the session (and renews the lease).

        Raises:
            Conflict: this worker no longer holds the run (stop working on it).
        """
        return await self.client.report_progress(self.session_id, self.run_id, step, total,
                                                 message, data)


class SyncRunContext:
    """`RunContext` for a plain function running in a thread: its methods
    block while the trio thread serves them."""

    def __init__(self, ctx: RunContext) -> None:
        self.async_context = ctx
        self.session_id, self.run_id = ctx.session_id, ctx.run_id
        self.workflow, self.attempt = ctx.workflow, ctx.attempt
        self.idempotency_key, self.resume = ctx.idempotency_key, ctx.resume

    def progress(self, step: int, total: int, message: str = "", data: Any = None
                 ) -> WriteResult:
        return trio.from_thread.run(self.async_context.progress, step, total, message, data)

    def get(self, key: str) -> Entry:
        return trio.from_thread.run(self.async_context.session.get, key)

    def set(self, key: str, value: Any, *, expect: int | None = None) -> WriteResult:
        return trio.from_thread.run(
            lambda: self.async_context.session.set(key, value, expect=expect))


class Worker:
    """Serves workflows: register functions by name, then `serve`."""

    def __init__(self, workflows: Mapping[str, Workflow] | None = None) -> None:
        self._workflows: dict[str, Workflow] = dict(workflows or {})
        self.runs_done = 0

    @property
    def names(self) -> list[str]:
        return sorted(self._workflows)

    def register(self, name: str, fn: Workflow) -> None:
        """Serves workflow `name` with `fn(ctx, inputs)` (async, or plain: in a thread)."""
        if not name:
            raise ValueError("a workflow needs a name")
        self._workflows[name] = fn

    def workflow(self, name: str) -> Callable[[Workflow], Workflow]:
        """`register`, as a decorator."""
        def decorate(fn: Workflow) -> Workflow:
            self.register(name, fn)
            return fn
        return decorate

    async def serve(self, client: AsyncClient, *, concurrency: int = 1,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Registers and runs what the daemon dispatches, until cancelled;
        registers again after a reconnect.

        Raises:
            ValueError: no workflow registered.
        """
        if not self._workflows:
            raise ValueError("register at least one workflow before serving")
        jobs_send, jobs = trio.open_memory_channel[Dispatch](1000)
        running: dict[str, trio.CancelScope] = {}

        def on_event(message: Message) -> None:
            if isinstance(message, Dispatch):
                jobs_send.send_nowait(message)
            elif isinstance(message, Result) and message.run_id in running:
                running[message.run_id].cancel()  # cancelled, or timed out

        client._worker_events = on_event
        try:
            registered = await client.register_worker(self.names, concurrency=concurrency)
            lease = registered.lease
            log.info("worker %s serves %s", registered.worker_id, ", ".join(self.names))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats, client, lease, concurrency)
                task_status.started()
                async for job in jobs:
                    old = running.get(job.run_id)
                    if old is not None:
                        old.cancel()  # the daemon gave the run to a newer attempt
                    scope = running[job.run_id] = trio.CancelScope()
                    nursery.start_soon(self._execute, client, job, scope, running)
        finally:
            client._worker_events = None

    async def _heartbeats(self, client: AsyncClient, lease: float, concurrency: int) -> None:
        while True:
            await trio.sleep(lease / 3)
            try:
                await client.heartbeat()
            except SessionNotFound:
                # A new connection: the daemon no longer knows this worker.
                await client.register_worker(self.names, concurrency=concurrency)
            except ConnectionLost:
                continue

    async def _execute(self, client: AsyncClient, job: Dispatch, scope: trio.CancelScope,
                       running: dict[str, trio.CancelScope]) -> None:
        ctx = RunContext(client=client, session_id=job.session_id, run_id=job.run_id,
                         workflow=job.workflow, attempt=job.attempt,
                         idempotency_key=job.idempotency_key, resume=job.resume,
                         session=SessionHandle(client, job.session_id))
        fn = self._workflows.get(job.workflow)
        try:
            with scope:
                if fn is None:
                    await client.fail_run(job.session_id, job.run_id,
                                          f"this worker does not serve {job.workflow!r}",
                                          retry=True)
                    return
                try:
                    if inspect.iscoroutinefunction(fn):
                        result = await cast(Callable[..., Awaitable[Any]], fn)(
                            ctx, dict(job.inputs))
                    else:
                        result = await trio.to_thread.run_sync(fn, SyncRunContext(ctx),
                                                               dict(job.inputs))
                except Retry as exc:
                    await client.fail_run(job.session_id, job.run_id, str(exc) or "retry",
                                          retry=True)
                    return
                except Conflict as exc:
                    # A write of the workflow's that expected a version another
                    # writer changed meanwhile: the attempt is done again, from
                    # what the session holds now. If it is rather this worker
                    # that no longer holds the run, fail_run says so (Conflict).
                    log.info("run %s: attempt %d met a conflict (%s); retried",
                             job.run_id, job.attempt, exc)
                    await client.fail_run(job.session_id, job.run_id,
                                          f"Conflict: {exc}", retry=True)
                    return
                except SessionNotFound as exc:
                    log.info("run %s: given up (%s)", job.run_id, exc)
                    return
                except NexusError:
                    raise
                except Exception as exc:
                    log.exception("run %s of %s failed", job.run_id, job.workflow)
                    await client.fail_run(job.session_id, job.run_id,
                                          f"{type(exc).__name__}: {exc}")
                    return
                await client.complete_run(job.session_id, job.run_id, result)
                self.runs_done += 1
        except (Conflict, SessionNotFound) as exc:
            log.info("run %s: no longer ours (%s)", job.run_id, exc)
        except ConnectionLost as exc:
            # The daemon dispatches the run again once it notices.
            log.warning("run %s: connection lost (%s)", job.run_id, exc)
        finally:
            if running.get(job.run_id) is scope:
                del running[job.run_id]


Step = Callable[..., Any]


def steps(*functions: Step) -> Callable[[RunContext, dict[str, Any]], Awaitable[Any]]:
    """A workflow made of steps, run in order. Each step is
    `[async] step(ctx, inputs, data) -> dict | None`, where `data` is the
    session's `accumulated_data`; what it returns is merged into it. After
    each step the session records `current_step`, `total_steps`,
    `accumulated_data` and `progress` (percent) in one patch checked against
    the versions read, and the step is reported as progress. A run that
    resumes (`--continue`, or an attempt after the first) starts at the
    session's `current_step`. A patch refused `Conflict` (another writer
    changed those keys meanwhile) ends the attempt; the run is dispatched
    again and resumes from what the session holds then. Returns
    `accumulated_data`.
    """
    total = len(functions)

    async def workflow(ctx: RunContext, inputs: dict[str, Any]) -> Any:
        session = ctx.session
        step_entry = await session.get("current_step")
        data_entry = await session.get("accumulated_data")
        start = 0
        data: dict[str, Any] = {}
        if ctx.resume and isinstance(step_entry.value, int) \
                and 0 <= step_entry.value < total:
            start = step_entry.value
            data = dict(data_entry.value or {})
        versions = {"current_step": step_entry.version,
                    "accumulated_data": data_entry.version}
        for i in range(start, total):
            fn = functions[i]
            out = fn(ctx, inputs, data)
            if inspect.isawaitable(out):
                out = await out
            if out:
                data.update(out)
            written = await session.patch(
                {"current_step": i + 1, "total_steps": total, "accumulated_data": data,
                 "progress": round(100 * (i + 1) / total, 2)},
                expect=versions)
            assert written.versions is not None
            versions = {k: written.versions[k] for k in versions}
            name = getattr(fn, "__name__", f"step {i + 1}")
            await ctx.progress(i + 1, total, name)
        return data

    return workflow
