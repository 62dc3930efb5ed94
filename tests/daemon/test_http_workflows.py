"""Workflows over HTTP, as the guide calls them: `POST /workflows/{name}/execute`
served by a real worker on the Unix socket, waiting for the outcome or
answering 202 with where to follow the run; `GET /workflows`; refusals."""

from __future__ import annotations

from typing import Any

import nexus_protocol as p
import pytest
import trio
from http_client import http_client
from raw_client import RawClient, connect_unix

from nexusd import Daemon

HTTP = pytest.mark.daemon_config(http="127.0.0.1:0")

#: Virtual seconds (under `autojump_clock`): past the daemon's waits and leases.
PATIENCE = 1000.0


async def _session(daemon: Daemon) -> tuple[str, str]:
    async with http_client(daemon) as client:
        r = await client.post("/sessions", json={"channel": "api"})
    assert r.status_code == 201, r.text
    return r.json()["session_id"], r.json()["token"]


async def _register(worker: RawClient, *names: str) -> str:
    worker.timeout = PATIENCE
    reply = await worker.call(p.Register, workflows=list(names))
    assert isinstance(reply, p.Registered), reply
    return reply.worker_id


async def _serve_one(worker: RawClient, steps: int, outcome: dict[str, Any] | str,
                     fail: bool = False) -> p.Dispatch:
    """Takes one run, reports `steps` steps, then completes it with `outcome`
    (or fails it with that error)."""
    job = await worker.next_of(p.Dispatch)
    for step in range(1, steps + 1):
        written = await worker.call(p.Set, session_id=job.session_id, key="current_step",
                                    value=step)
        assert isinstance(written, p.Written), written
        reply = await worker.call(p.RunProgress, session_id=job.session_id,
                                  run_id=job.run_id, step=step, total=steps,
                                  message=f"step {step}")
        assert isinstance(reply, p.Written), reply
    if fail:
        end = await worker.call(p.RunFail, session_id=job.session_id, run_id=job.run_id,
                                error=outcome)
    else:
        end = await worker.call(p.RunComplete, session_id=job.session_id,
                                run_id=job.run_id, result=outcome)
    assert isinstance(end, p.Written), end
    return job


@HTTP
async def test_execute_waits_for_a_worker_and_answers_the_outcome(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    sid, token = await _session(daemon)
    jobs: list[p.Dispatch] = []
    with trio.fail_after(PATIENCE):
        async with connect_unix(daemon.socket_path, client="worker-a") as worker, \
                http_client(daemon, token) as client, trio.open_nursery() as nursery:
            worker_id = await _register(worker, "data-processor", "multi-step-processor")
            r = await client.get("/workflows")
            assert r.status_code == 200
            assert r.json() == {"workflows": [
                {"name": name, "workers": [{"worker_id": worker_id, "client": "worker-a",
                                            "capacity": 1, "running": 0}]}
                for name in ("data-processor", "multi-step-processor")]}

            async def serve() -> None:
                jobs.append(await _serve_one(worker, 3, {"rows": 3}))

            nursery.start_soon(serve)
            # Exactly as the guide calls it.
            r = await client.post("/workflows/data-processor/execute",
                                  json={"inputs": {"rows": 3}, "session_id": sid})
            assert r.status_code == 200, r.text
            outcome = r.json()
            run_id = outcome["run_id"]
            assert r.headers["location"] == f"/sessions/{sid}/runs/{run_id}"
            assert (jobs[0].run_id, jobs[0].inputs) == (run_id, {"rows": 3})
            assert {k: outcome[k] for k in ("session_id", "workflow", "state", "progress",
                                            "step", "total", "attempts", "result")} == {
                "session_id": sid, "workflow": "data-processor", "state": "completed",
                "progress": 1.0, "step": 3, "total": 3, "attempts": 1,
                "result": {"rows": 3}}
            assert outcome["duration"] >= 0

            # The run as the session records it, and what the steps wrote.
            r = await client.get(r.headers["location"])
            assert (r.status_code, r.json()) == (200, outcome)
            r = await client.get(f"/sessions/{sid}/data/current_step")
            assert r.json()["value"] == 3

            # A run the workflow fails is still answered: the request was served.
            nursery.start_soon(_serve_one, worker, 1, "the input is empty", True)
            r = await client.post("/workflows/data-processor/execute",
                                  json={"inputs": {}, "session_id": sid})
            assert r.status_code == 200, r.text
            failed = r.json()
            assert (failed["state"], failed["error"], failed["attempts"],
                    failed["progress"]) == ("failed", "the input is empty", 1, 1.0)
            assert "result" not in failed


@HTTP
async def test_execute_without_waiting_answers_202_and_where_to_follow(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    sid, token = await _session(daemon)
    with trio.fail_after(PATIENCE):
        async with connect_unix(daemon.socket_path) as worker, \
                http_client(daemon, token) as client:
            await _register(worker, "data-processor")
            for ask in ({"params": {"wait": "false"}},
                        {"headers": {"Prefer": "respond-async"}}):
                r = await client.post("/workflows/data-processor/execute",
                                      json={"inputs": {"n": 1}, "session_id": sid}, **ask)
                assert r.status_code == 202, r.text
                accepted = r.json()
                run_id = accepted["run_id"]
                assert (accepted["state"], accepted["session_id"]) == ("running", sid)
                location = r.headers["location"]
                assert location == f"/sessions/{sid}/runs/{run_id}"

                job = await worker.next_of(p.Dispatch)
                assert job.run_id == run_id
                reply = await worker.call(p.RunProgress, session_id=sid, run_id=run_id,
                                          step=1, total=2)
                assert isinstance(reply, p.Written)
                r = await client.get(location)
                assert {k: r.json()[k] for k in ("state", "progress", "step", "attempts")} \
                    == {"state": "running", "progress": 0.5, "step": 1, "attempts": 1}
                done = await worker.call(p.RunComplete, session_id=sid, run_id=run_id,
                                         result="ok")
                assert isinstance(done, p.Written)
                r = await client.get(location)
                assert {k: r.json()[k] for k in ("state", "progress", "result")} == \
                    {"state": "completed", "progress": 1.0, "result": "ok"}


@HTTP
async def test_execute_refusals(daemon: Daemon) -> None:
    assert daemon.socket_path is not None
    sid, token = await _session(daemon)
    async with connect_unix(daemon.socket_path) as worker, \
            http_client(daemon, token) as client:
        await _register(worker, "data-processor")
        url = "/workflows/data-processor/execute"
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("/workflows/nope/execute", {"session_id": sid}, 404, "unknown workflow 'nope'"),
            (url, {"inputs": [1, 2], "session_id": sid}, 400, "inputs"),
            (url, {"inputs": {}}, 400, "session_id"),
            (url, {"session_id": sid, "extra": 1}, 400, "unknown field 'extra'"),
            (url, {"session_id": sid, "inputs": {"blob": "x" * 70_000}}, 400,
             "run_max_inputs"),
            (url, {"session_id": "s-none"}, 404, ""),
        ]
        for path, body, status, words in cases:
            r = await client.post(path, json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], r.text
        r = await client.post(url + "?wait=maybe", json={"session_id": sid})
        assert r.status_code == 400 and "wait" in r.json()["error"]["message"]
        async with http_client(daemon) as anonymous:
            r = await anonymous.post(url, json={"session_id": sid})
            assert r.status_code == 401, r.text
        # Nothing ran, nothing was recorded in the session.
        r = await client.get(f"/sessions/{sid}")
        assert r.json()["seq"] == 0


@HTTP
async def test_execute_with_no_worker_free_is_unavailable_after_the_wait(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    sid, token = await _session(daemon)
    with trio.fail_after(PATIENCE):
        async with connect_unix(daemon.socket_path) as worker:
            await _register(worker, "data-processor")
        # The workflow is known, but its only worker is gone.
        async with http_client(daemon, token) as client:
            start = trio.current_time()
            r = await client.post("/workflows/data-processor/execute",
                                  json={"inputs": {}, "session_id": sid})
            waited = trio.current_time() - start
            assert r.status_code == 503, r.text
            assert r.json()["error"]["message"] == (
                "no worker serving 'data-processor' was available within 30s (run_wait)")
            assert waited == pytest.approx(30.0, abs=1.0)
            r = await client.get("/workflows")
            assert r.json() == {"workflows": []}
