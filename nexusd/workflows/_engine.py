"""Workflow runs, executed by workers (SPEC section 15).

The daemon runs no user code. A worker is a connection that registered the
workflow names it serves; `Workflows` dispatches each run to a live worker
serving its name, holds it there under a lease the worker renews, and takes
it back when the worker's connection closes or the lease runs out: the run is
dispatched again (preferably elsewhere) with the next attempt number after a
backoff that doubles, up to `RunPolicy.attempts`. A run with no worker waits
`RunPolicy.wait`, then fails; every run fails after `RunPolicy.timeout`.

One task per run drives it (`_drive`): the only code that ends a run, so a
run ends once. Every step of a run is a `run` change journaled through the
session's actor (`RecordRun`), so it has a `seq`, is durable before it is
acknowledged and reaches every watcher; the connection that asked for the run
also receives `progress` and `result` events.

Runs in flight survive a restart: the session's journal holds each run's
record, and a small index (run id -> session id, `runs.json` in the data
directory) says which sessions to look in at start, so that a dormant session
need not be loaded to find its runs. An entry goes into the index before the
run's `started` change is journaled and leaves after its end is: an entry
whose run has ended (or never started) is dropped at start.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio
from nexus_protocol import (
    CancelRun,
    Dispatch,
    Error,
    ErrorCode,
    Heartbeat,
    Message,
    Ok,
    Progress,
    Register,
    Registered,
    Report,
    Result,
    Run,
    RunComplete,
    RunFail,
    RunProgress,
    RunStarted,
    Written,
)

from .._clock import WallClock
from .._errors import RequestError
from .._principal import Principal, ReplySink
from ..session._commands import ReadRuns, RecordRun

__all__ = ["RunPolicy", "Workflows"]

log = logging.getLogger("nexusd.workflows")

#: Serves a session request as the service does and returns its reply.
CallSession = Callable[[Principal, Message], Awaitable[Message]]


@attrs.frozen
class RunPolicy:
    """The bounds of runs; each is a daemon setting (`run_*`)."""

    attempts: int = 3  # dispatches of one run at most
    wait: float = 30.0  # for a worker, before the run fails
    lease: float = 30.0  # a worker reports within this, or loses the run
    timeout: float = 3600.0  # from start to end
    backoff: float = 1.0  # before attempt 2; doubles for each attempt after
    max_inputs: int = 64 * 1024  # encoded bytes of a run's inputs
    max_workflows: int = 256  # names one worker registers


class _Worker:
    __slots__ = ("capacity", "id", "names", "principal", "runs", "sink")

    def __init__(self, principal: Principal, sink: ReplySink, names: frozenset[str],
                 capacity: int) -> None:
        self.id = "w-" + secrets.token_hex(4)
        self.principal = principal
        self.sink = sink
        self.names = names
        self.capacity = capacity
        self.runs: set[str] = set()

    @property
    def free(self) -> int:
        return self.capacity - len(self.runs)


class _Run:
    def __init__(self, run_id: str, session_id: str, workflow: str, inputs: dict[str, Any],
                 *, key: str, resume: bool, attempt: int = 0, start_seq: int = 0) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.workflow = workflow
        self.inputs = inputs
        self.key = key
        self.resume = resume
        self.attempt = attempt
        self.start_seq = start_seq
        self.started = trio.current_time()
        self.worker: _Worker | None = None
        self.granted = False  # the worker's write grant came with the run
        self.lease_until = 0.0
        self.lost = False  # the worker gave it back (closed, retry)
        self.error = ""
        # (event, payload) once decided: completed, failed, cancelled.
        self.outcome: tuple[str, Any] | None = None
        self.scope = trio.CancelScope()
        self.wake = trio.Event()
        self.ended = trio.Event()
        self.end_seq = 0
        self.followers: list[ReplySink] = []


def _session_principal(session_id: str) -> Principal:
    """The engine's own principal for a session: write scope on it alone."""
    principal = Principal(connection_id="nexusd-workflows", channel="workflow",
                          client="nexusd", admin=False)
    principal.grants[session_id] = "write"
    return principal


def _check(reply: Message) -> Message:
    if isinstance(reply, Error):
        raise RequestError(ErrorCode(reply.code), reply.message, retry_after=reply.retry_after)
    return reply


class Workflows:
    """The runs registry; see the module's docstring. Start `run` in a
    nursery first; the service routes the workflow requests to `serve`."""

    def __init__(self, *, call: CallSession, policy: RunPolicy, index: Path | None,
                 fsync: bool = False, clock: WallClock | None = None) -> None:
        """`clock` is the wall clock the sessions record times by: a run
        recovered at start keeps the time its `started` change records."""
        self._call = call
        self._clock = clock or WallClock()
        self.policy = policy
        self._index_path = index
        self._fsync = fsync
        self._index: dict[str, str] = {}
        self._index_lock = trio.Lock()
        self._workers: dict[str, _Worker] = {}  # connection id -> worker
        self._runs: dict[str, _Run] = {}
        self._known: set[str] = set()  # names registered since start
        self._room = trio.lowlevel.ParkingLot()  # a worker registered or freed room
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[type[Message], Callable[..., Awaitable[Message]]] = {
            Run: self._run, CancelRun: self._cancel, Register: self._register,
            Heartbeat: self._heartbeat, RunProgress: self._progress,
            RunComplete: self._complete, RunFail: self._fail,
        }

    @property
    def requests(self) -> frozenset[type[Message]]:
        """The request types `serve` answers."""
        return frozenset(self._handlers)

    def statistics(self) -> dict[str, Any]:
        return {"runs_in_flight": len(self._runs), "workers": len(self._workers)}

    def listing(self) -> dict[str, list[dict[str, Any]]]:
        """Each workflow name served now, with its workers (for `GET /workflows`)."""
        names: dict[str, list[dict[str, Any]]] = {}
        for w in self._workers.values():
            for name in sorted(w.names):
                names.setdefault(name, []).append(
                    {"worker_id": w.id, "client": w.principal.client,
                     "capacity": w.capacity, "running": len(w.runs)})
        return names

    # ------------------------------------------------------------- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Recovers the runs in flight at the last stop, then drives runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._recover()
            task_status.started()
            await trio.sleep_forever()

    async def _recover(self) -> None:
        if self._index_path is None:
            return
        try:
            self._index = json.loads(self._index_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read the index of runs in flight %s: %s", self._index_path, exc)
            return
        sessions: dict[str, list[str]] = {}
        for run_id, session_id in self._index.items():
            sessions.setdefault(session_id, []).append(run_id)
        recovered = 0
        for session_id, run_ids in sessions.items():
            try:
                report = _check(await self._call(_session_principal(session_id),
                                                 ReadRuns(id=0, session_id=session_id)))
            except RequestError as exc:
                log.warning("runs of session %s not recovered: %s", session_id, exc.message)
                for run_id in run_ids:
                    self._index.pop(run_id, None)
                continue
            assert isinstance(report, Report)
            records = report.report["runs"]
            for run_id in run_ids:
                rec = records.get(run_id)
                if rec is None or rec["status"] != "running":
                    self._index.pop(run_id, None)
                    continue
                run = _Run(run_id, session_id, rec["workflow"], rec.get("inputs") or {},
                           key=rec.get("idempotency_key") or run_id, resume=True,
                           attempt=rec.get("attempt", 0))
                # The run's timeout counts from its start, before the stop.
                run.started = min(run.started, self._clock.to_trio(rec["started_at"]))
                self._start(run)
                recovered += 1
        await self._save_index()
        if recovered:
            log.info("%d workflow runs in flight recovered; dispatching them again", recovered)

    def _start(self, run: _Run) -> None:
        assert self._nursery is not None
        self._runs[run.run_id] = run
        self._known.add(run.workflow)
        self._nursery.start_soon(self._drive, run)

    # -------------------------------------------------------------- requests

    async def serve(self, principal: Principal, request: Message, sink: ReplySink) -> Message:
        """Serves one workflow request (`requests`) and returns its reply.

        Raises:
            RequestError: the request cannot be served; nothing changed.
        """
        return await self._handlers[type(request)](principal, request, sink)

    def disconnect(self, principal: Principal) -> None:
        """The principal's connection closed: if it was a worker, its runs go
        back to be dispatched again."""
        worker = self._workers.pop(principal.connection_id, None)
        if worker is None:
            return
        for run_id in list(worker.runs):
            run = self._runs.get(run_id)
            if run is not None and run.worker is worker:
                run.error = f"worker {worker.id} disconnected"
                self._release(run)
                run.lost = True
                run.wake.set()

    async def _register(self, principal: Principal, req: Register, sink: ReplySink
                        ) -> Message:
        names = req.workflows
        if not names or not all(isinstance(n, str) and n for n in names):
            raise RequestError(ErrorCode.BAD_REQUEST,
                               "register.workflows must list at least one workflow name, "
                               "each a non-empty string")
        if len(names) > self.policy.max_workflows:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"a worker may serve at most {self.policy.max_workflows} "
                               "workflows")
        if req.concurrency < 1:
            raise RequestError(ErrorCode.BAD_REQUEST, "register.concurrency must be at least 1")
        worker = self._workers.get(principal.connection_id)
        if worker is None:
            worker = self._workers[principal.connection_id] = _Worker(
                principal, sink, frozenset(names), req.concurrency)
        else:
            worker.names, worker.capacity = frozenset(names), req.concurrency
        self._known.update(names)
        self._room.unpark_all()
        log.info("worker %s (%s) serves %s", worker.id, principal.client or
                 principal.connection_id, ", ".join(sorted(names)))
        return Registered(id=req.id, worker_id=worker.id, lease=self.policy.lease)

    async def _heartbeat(self, principal: Principal, req: Heartbeat, sink: ReplySink
                         ) -> Message:
        worker = self._worker(principal)
        until = trio.current_time() + self.policy.lease
        for run_id in worker.runs:
            self._runs[run_id].lease_until = until
        return Ok(id=req.id)

    async def _run(self, principal: Principal, req: Run, sink: ReplySink) -> Message:
        if not req.workflow:
            raise RequestError(ErrorCode.BAD_REQUEST, "run.workflow must name a workflow")
        if req.workflow not in self._known:
            raise RequestError(ErrorCode.NOT_FOUND,
                               f"unknown workflow {req.workflow!r}: no worker has "
                               "registered it")
        if req.inputs is not None:
            size = len(msgpack.packb(req.inputs, use_bin_type=True))
            if size > self.policy.max_inputs:
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"the run's inputs take {size} bytes; the most allowed "
                                   f"is {self.policy.max_inputs} (run_max_inputs)")
        # Authorizes the principal (write scope) and shows the session's runs.
        report = _check(await self._call(principal, ReadRuns(
            id=req.id, session_id=req.session_id, token=req.token)))
        assert isinstance(report, Report)
        inputs = req.inputs
        if req.resume:
            for run in self._runs.values():
                if run.session_id == req.session_id and run.workflow == req.workflow \
                        and run.outcome is None:
                    run.followers.append(sink)
                    return RunStarted(id=req.id, run_id=run.run_id, seq=run.start_seq)
            if inputs is None:
                past = [r for r in report.report["runs"].values()
                        if r["workflow"] == req.workflow]
                inputs = past[-1].get("inputs") if past else None
        run_id = "run-" + secrets.token_hex(8)
        run = _Run(run_id, req.session_id, req.workflow, inputs or {}, key=run_id,
                   resume=req.resume)
        self._index[run_id] = req.session_id
        await self._save_index()
        try:
            written = _check(await self._call(principal, RecordRun(
                id=req.id, session_id=req.session_id, token=req.token, record={
                    "run_id": run_id, "workflow": req.workflow, "event": "started",
                    "inputs": run.inputs, "idempotency_key": run.key,
                    "resume": req.resume})))
        except BaseException:
            self._index.pop(run_id, None)
            with trio.CancelScope(shield=True):
                await self._save_index()
            raise
        assert isinstance(written, Written)
        run.start_seq = written.seq
        run.followers.append(sink)
        self._start(run)
        return RunStarted(id=req.id, run_id=run_id, seq=written.seq)

    async def _cancel(self, principal: Principal, req: CancelRun, sink: ReplySink) -> Message:
        # Authorizes first: a run's existence is no one else's business.
        _check(await self._call(principal, ReadRuns(id=req.id, session_id=req.session_id,
                                                    token=req.token)))
        run = self._runs.get(req.run_id)
        if run is None or run.session_id != req.session_id:
            raise RequestError(ErrorCode.NOT_FOUND,
                               f"no run {req.run_id!r} in flight in the session")
        self._decide(run, "cancelled", None)
        await run.ended.wait()
        return Written(id=req.id, seq=run.end_seq)

    async def _progress(self, principal: Principal, req: RunProgress, sink: ReplySink
                        ) -> Message:
        run = self._held(principal, req.session_id, req.run_id)
        if req.total and req.step > req.total:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"step {req.step} is past the total of {req.total}")
        run.lease_until = trio.current_time() + self.policy.lease
        fraction = min(1.0, req.step / req.total) if req.total else 0.0
        seq = await self._record(run, "progress", step=req.step, total=req.total,
                                 message=req.message, data=req.data, progress=fraction)
        event = Progress(session_id=run.session_id, run_id=run.run_id, progress=fraction,
                         step=req.message or None)
        for follower in run.followers:
            follower.reply(event)
        return Written(id=req.id, seq=seq)

    async def _complete(self, principal: Principal, req: RunComplete, sink: ReplySink
                        ) -> Message:
        run = self._held(principal, req.session_id, req.run_id)
        self._decide(run, "completed", req.result)
        await run.ended.wait()
        return Written(id=req.id, seq=run.end_seq)

    async def _fail(self, principal: Principal, req: RunFail, sink: ReplySink) -> Message:
        run = self._held(principal, req.session_id, req.run_id)
        if req.retry:
            run.error = req.error
            self._release(run)
            run.lost = True
            run.wake.set()
            return Written(id=req.id, seq=run.start_seq)
        self._decide(run, "failed", req.error)
        await run.ended.wait()
        return Written(id=req.id, seq=run.end_seq)

    def _worker(self, principal: Principal) -> _Worker:
        worker = self._workers.get(principal.connection_id)
        if worker is None:
            raise RequestError(ErrorCode.NOT_FOUND,
                               "this connection is not a worker: register first")
        return worker

    def _held(self, principal: Principal, session_id: str, run_id: str) -> _Run:
        """The run, if this principal's worker holds it now.

        Raises:
            RequestError: `not_found` (not a worker, no such run) or `conflict`
                (another attempt holds it, or it has ended).
        """
        worker = self._worker(principal)
        run = self._runs.get(run_id)
        if run is None or run.session_id != session_id:
            raise RequestError(ErrorCode.NOT_FOUND, f"no run {run_id!r} in flight in "
                                                    f"session {session_id}")
        if run.worker is not worker or run.outcome is not None:
            raise RequestError(ErrorCode.CONFLICT,
                               f"run {run_id!r} is no longer held by this worker (it was "
                               "dispatched again, cancelled or ended)")
        return run

    # ---------------------------------------------------------- driving runs

    def _decide(self, run: _Run, event: str, payload: Any) -> None:
        """Ends the run with `event` (its driver journals it), unless it is ending."""
        if run.outcome is None:
            run.outcome = (event, payload)
            run.scope.cancel()

    async def _drive(self, run: _Run) -> None:
        """Dispatches `run` until it ends; journals its end. A daemon that
        stops cancels this: the run stays in flight, for the next start."""
        try:
            await self._drive_once(run)
        except Exception:
            log.exception("run %s in session %s failed in the daemon; it stays in flight "
                          "until the next start", run.run_id, run.session_id)
            self._runs.pop(run.run_id, None)
            run.ended.set()

    async def _drive_once(self, run: _Run) -> None:
        policy = self.policy
        run.scope.deadline = run.started + policy.timeout
        with run.scope:
            try:
                error = await self._attempts(run)
            except RequestError as exc:
                error = f"the session refused the run: {exc.message}"
            self._decide(run, "failed", error)
        if run.outcome is None:
            run.outcome = ("failed", f"the run did not end within {policy.timeout:g}s "
                                     "(run_timeout)")
        event, payload = run.outcome
        worker = run.worker
        if worker is not None:
            self._release(run)
            if event != "completed":
                worker.sink.reply(Result(session_id=run.session_id, run_id=run.run_id,
                                         status="cancelled"))
        fields: dict[str, Any] = {"attempt": run.attempt,
                                  "duration": trio.current_time() - run.started}
        if event == "completed":
            fields["result"] = payload
        elif event == "failed":
            fields["error"] = payload
        try:
            run.end_seq = await self._record(run, event, **fields)
        except RequestError as exc:
            log.warning("run %s in session %s: its end was not recorded: %s",
                        run.run_id, run.session_id, exc.message)
        result = payload if event == "completed" else (
            {"error": payload} if event == "failed" else None)
        message = Result(session_id=run.session_id, run_id=run.run_id, status=event,
                         result=result)
        for follower in run.followers:
            follower.reply(message)
        del self._runs[run.run_id]
        self._index.pop(run.run_id, None)
        run.ended.set()
        await self._save_index()

    async def _attempts(self, run: _Run) -> str:
        """Dispatches until a worker ends the run (the scope is then cancelled);
        returns why the run failed otherwise."""
        policy = self.policy
        while True:
            worker = await self._find_worker(run)
            if worker is None:
                return (f"no worker serving {run.workflow!r} was available within "
                        f"{policy.wait:g}s (run_wait)")
            run.attempt += 1
            run.lost = False
            run.worker = worker
            worker.runs.add(run.run_id)
            if run.session_id not in worker.principal.grants:
                worker.principal.remember(run.session_id, "write")
                run.granted = True
            run.lease_until = trio.current_time() + policy.lease
            await self._record(run, "dispatched", attempt=run.attempt, worker=worker.id)
            if run.worker is worker:  # still connected
                worker.sink.reply(Dispatch(
                    session_id=run.session_id, run_id=run.run_id, workflow=run.workflow,
                    inputs=run.inputs, attempt=run.attempt, idempotency_key=run.key,
                    lease=policy.lease, resume=run.resume or run.attempt > 1))
            while not run.lost:
                run.wake = trio.Event()
                with trio.move_on_at(run.lease_until):
                    await run.wake.wait()
                if not run.lost and trio.current_time() >= run.lease_until:
                    run.error = f"worker {worker.id} missed its lease of {policy.lease:g}s"
                    self._release(run)
                    run.lost = True
            log.info("run %s: attempt %d lost (%s)", run.run_id, run.attempt, run.error)
            if run.attempt >= policy.attempts:
                return f"gave up after {run.attempt} attempts; the last: {run.error}"
            await trio.sleep(policy.backoff * 2 ** (run.attempt - 1))

    async def _find_worker(self, run: _Run) -> _Worker | None:
        """A live worker serving the run's workflow with room (preferring one
        that did not just lose it), waiting up to `RunPolicy.wait`."""
        with trio.move_on_after(self.policy.wait):
            while True:
                able = [w for w in self._workers.values()
                        if run.workflow in w.names and w.free > 0]
                if able:
                    able.sort(key=lambda w: (run.error.startswith(f"worker {w.id} "),
                                             -w.free))
                    return able[0]
                await self._room.park()
        return None

    def _release(self, run: _Run) -> None:
        worker = run.worker
        if worker is None:
            return
        run.worker = None
        worker.runs.discard(run.run_id)
        if run.granted:
            worker.principal.grants.pop(run.session_id, None)
            run.granted = False
        self._room.unpark_all()

    async def _record(self, run: _Run, event: str, **fields: Any) -> int:
        """Journals a step of the run; returns its seq.

        Raises:
            RequestError: the session refused it (gone, ended run, too large).
        """
        written = _check(await self._call(_session_principal(run.session_id), RecordRun(
            id=0, session_id=run.session_id, record={
                "run_id": run.run_id, "workflow": run.workflow, "event": event, **fields})))
        assert isinstance(written, Written)
        return written.seq

    async def _save_index(self) -> None:
        """Writes the index of runs in flight (atomically, off the event loop)."""
        path = self._index_path
        if path is None:
            return
        async with self._index_lock:
            data = json.dumps(self._index).encode()
            await trio.to_thread.run_sync(_write_atomically, path, data, self._fsync)


def _write_atomically(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
