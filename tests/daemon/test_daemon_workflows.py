"""Workflow runs executed by workers: dispatch, leases, attempts, cancel,
timeouts, and every step recorded in the session (SPEC section 15)."""

from __future__ import annotations

from typing import Any

import nexus_protocol as p
import pytest
from raw_client import RawClient, connect_unix

from nexusd import Daemon


async def _session(c: RawClient) -> str:
    created = await c.call(p.Create)
    assert isinstance(created, p.Created)
    _TOKENS[created.session_id] = created.token
    return created.session_id


_TOKENS: dict[str, str] = {}


async def _worker(c: RawClient, *names: str, concurrency: int = 1) -> str:
    reply = await c.call(p.Register, workflows=list(names), concurrency=concurrency)
    assert isinstance(reply, p.Registered), reply
    return reply.worker_id


async def _start(c: RawClient, sid: str, workflow: str, **fields: Any) -> p.RunStarted:
    reply = await c.call(p.Run, session_id=sid, workflow=workflow, **fields)
    assert isinstance(reply, p.RunStarted), reply
    return reply


def _patient(*clients: RawClient) -> None:
    """Waits on events past the daemon's leases and waits (virtual time)."""
    for c in clients:
        c.timeout = 1000.0


def _run_changes(events: list[p.Message]) -> list[dict[str, Any]]:
    return [e.value for e in events if isinstance(e, p.Change) and e.op == "run"]


async def test_a_watcher_sees_the_run_from_start_to_end_in_seq_order(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as watcher, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(client)
        attached = await watcher.call(p.Attach, session_id=sid, token=_TOKENS[sid])
        assert isinstance(attached, p.Attached)
        await watcher.next_of(p.Snapshot)
        await _worker(worker, "data-processor")
        started = await _start(client, sid, "data-processor", inputs={"rows": 3})
        job = await worker.next_of(p.Dispatch)
        assert (job.run_id, job.workflow, job.inputs, job.attempt) == \
            (started.run_id, "data-processor", {"rows": 3}, 1)
        assert job.idempotency_key and not job.resume
        for step in (1, 2, 3):
            # The run's session is the worker's to write while it holds the run.
            written = await worker.call(p.Set, session_id=sid, key="current_step", value=step)
            assert isinstance(written, p.Written)
            reply = await worker.call(p.RunProgress, session_id=sid, run_id=job.run_id,
                                      step=step, total=3, message=f"step {step}")
            assert isinstance(reply, p.Written)
        done = await worker.call(p.RunComplete, session_id=sid, run_id=job.run_id,
                                 result={"rows": 3})
        assert isinstance(done, p.Written)

        events = await watcher.events_until(
            lambda e: isinstance(e, p.Change) and e.op == "run"
            and e.value["event"] == "completed")
        changes = [e for e in events if isinstance(e, p.Change)]
        seqs = [c.seq for c in changes]
        assert seqs == list(range(started.seq, started.seq + len(seqs)))
        runs = _run_changes(events)
        assert [r["event"] for r in runs] == ["started", "dispatched", "progress", "progress",
                                              "progress", "completed"]
        assert [r["step"] for r in runs if r["event"] == "progress"] == [1, 2, 3]
        assert runs[-1]["result"] == {"rows": 3} and runs[-1]["attempt"] == 1
        assert done.seq == seqs[-1]

        # The requester follows the run too, without watching the session.
        progress = [await client.next_of(p.Progress) for _ in range(3)]
        assert [e.progress for e in progress] == pytest.approx([1 / 3, 2 / 3, 1.0])
        result = await client.next_of(p.Result)
        assert (result.status, result.result) == ("completed", {"rows": 3})
        # The worker's grant ended with the run.
        refused = await worker.call(p.Set, session_id=sid, key="late", value=1)
        assert isinstance(refused, p.Error) and refused.code == "unauthorized"


@pytest.mark.daemon_config(run_backoff=2.0)
async def test_a_worker_that_dies_mid_run_loses_it_to_another_with_attempt_2(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as second:
        sid = await _session(client)
        async with connect_unix(daemon.socket_path) as first:
            await _worker(first, "data-processor")
            started = await _start(client, sid, "data-processor")
            job = await first.next_of(p.Dispatch)
            assert job.attempt == 1
            reply = await first.call(p.RunProgress, session_id=sid, run_id=job.run_id,
                                     step=1, total=2)
            assert isinstance(reply, p.Written)
        # The first worker's connection closed mid-run.
        await _worker(second, "data-processor")
        again = await second.next_of(p.Dispatch)
        assert (again.run_id, again.attempt, again.idempotency_key, again.resume) == \
            (started.run_id, 2, job.idempotency_key, True)
        done = await second.call(p.RunComplete, session_id=sid, run_id=again.run_id,
                                 result="ok")
        assert isinstance(done, p.Written)
        events = await client.events_until(lambda e: isinstance(e, p.Result))
        assert [type(e) for e in events] == [p.Progress, p.Result]
        result = events[-1]
        assert isinstance(result, p.Result)
        assert (result.status, result.result) == ("completed", "ok")
        state = await client.call(p.Summary, session_id=sid)
        assert isinstance(state, p.Report)


@pytest.mark.daemon_config(run_lease=10.0, run_backoff=1.0)
async def test_a_worker_that_misses_its_lease_loses_the_run_and_its_reports(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(client)
        _patient(worker)
        await _worker(worker, "slow")
        started = await _start(client, sid, "slow")
        job = await worker.next_of(p.Dispatch)
        # No heartbeat: the lease runs out and the run comes again.
        again = await worker.next_of(p.Dispatch)
        assert (again.run_id, again.attempt) == (started.run_id, 2)
        stale = await worker.call(p.RunProgress, session_id=sid, run_id=job.run_id,
                                  step=1, total=1)
        assert isinstance(stale, p.Written)  # the same worker holds attempt 2 now
        ok = await worker.call(p.Heartbeat)
        assert isinstance(ok, p.Ok)


@pytest.mark.daemon_config(run_wait=20.0)
async def test_a_run_with_no_worker_fails_clearly_after_the_wait(
        daemon: Daemon, autojump_clock: object) -> None:
    import trio
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client:
        sid = await _session(client)
        async with connect_unix(daemon.socket_path) as worker:
            await _worker(worker, "data-processor")
        _patient(client)
        t0 = trio.current_time()
        await _start(client, sid, "data-processor")
        result = await client.next_of(p.Result)
        assert trio.current_time() - t0 == pytest.approx(20.0, abs=0.1)
        assert result.status == "failed"
        assert "no worker serving 'data-processor' was available within 20s" \
            in result.result["error"]


@pytest.mark.daemon_config(run_timeout=50.0, run_lease=1000.0)
async def test_a_run_that_does_not_end_in_time_fails_and_its_worker_is_told(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(client)
        _patient(client, worker)
        await _worker(worker, "forever")
        await _start(client, sid, "forever")
        job = await worker.next_of(p.Dispatch)
        result = await client.next_of(p.Result)
        assert result.status == "failed" and "did not end within 50s" in result.result["error"]
        told = await worker.next_of(p.Result)
        assert (told.run_id, told.status) == (job.run_id, "cancelled")
        late = await worker.call(p.RunComplete, session_id=sid, run_id=job.run_id)
        assert isinstance(late, p.Error) and late.code == "not_found"


async def test_cancel_ends_the_run_and_tells_its_worker(daemon: Daemon,
                                                        autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(client)
        await _worker(worker, "data-processor")
        started = await _start(client, sid, "data-processor")
        await worker.next_of(p.Dispatch)
        cancelled = await client.call(p.CancelRun, session_id=sid, run_id=started.run_id)
        assert isinstance(cancelled, p.Written)
        told = await worker.next_of(p.Result)
        assert told.status == "cancelled"
        result = await client.next_of(p.Result)
        assert result.status == "cancelled"
        again = await client.call(p.CancelRun, session_id=sid, run_id=started.run_id)
        assert isinstance(again, p.Error) and again.code == "not_found"


@pytest.mark.daemon_config(run_max_inputs=1000)
async def test_bad_workflow_requests_are_answered_clearly(daemon: Daemon,
                                                          autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(client)
        unknown = await client.call(p.Run, session_id=sid, workflow="nope")
        assert isinstance(unknown, p.Error) and unknown.code == "not_found"
        assert "unknown workflow 'nope'" in unknown.message
        for bad in ([], [""], [3]):
            refused = await worker.call(p.Register, workflows=bad)
            assert isinstance(refused, p.Error) and refused.code == "bad_request"
            assert "at least one workflow name" in refused.message
        refused = await worker.call(p.Register, workflows=["x"], concurrency=0)
        assert isinstance(refused, p.Error) and refused.code == "bad_request"
        not_worker = await worker.call(p.Heartbeat)
        assert isinstance(not_worker, p.Error) and not_worker.code == "not_found"
        await _worker(worker, "x")
        big = await client.call(p.Run, session_id=sid, workflow="x",
                                inputs={"blob": "a" * 2000})
        assert isinstance(big, p.Error) and big.code == "bad_request"
        assert "most allowed is 1000" in big.message
        # None of it reached the session or the worker.
        state = await client.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply) and state.seq == 0
        await worker.no_event_within(1.0)


async def test_run_needs_write_scope(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as owner, \
            connect_unix(daemon.socket_path) as other, \
            connect_unix(daemon.socket_path) as worker:
        sid = await _session(owner)
        await _worker(worker, "x")
        refused = await other.call(p.Run, session_id=sid, workflow="x")
        assert isinstance(refused, p.Error) and refused.code == "unauthorized"
        await worker.no_event_within(1.0)
