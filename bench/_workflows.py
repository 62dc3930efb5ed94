"""Workflow runs through nexusd (SPEC section 15): dispatch latency, progress
latency, runs/s through one worker, and the HTTP execute round trip.

Three processes: nexusd, one worker (``python -m bench._workflows worker``,
nexus_client's `Worker` serving the workflow ``bench``) and one requester
(``python -m bench._workflows requester``), which prints its figures as JSON.
Times are CLOCK_MONOTONIC (one clock for every process on the machine):

- dispatch: the requester's time just before it sends the `run` (carried in
  the run's inputs) -> the worker's workflow function starting (the worker
  client has read and parsed the `dispatch`);
- progress: the worker's time just before it sends a `run_progress`
  (carried as the progress message) -> the requester receiving the
  `progress` event (parsed, as the client hands it over);
- execute round trip: `run` sent -> `result` received, for a run of no
  steps; over the Unix socket (nexus_client) and over HTTP (``POST
  /workflows/bench/execute``, one kept-alive connection), beside the
  3.16 ms Kailash Nexus publishes for its HTTP workflow execute (quoted);
- runs/s: runs of no steps started and finished by the requester, one in
  flight at a time, then 16 in flight (a session each; the worker takes
  16 at once), counted over a window after a warm-up.

Every run is journaled at the daemon's default durability: `started`,
`dispatched`, each `progress` and the end are changes of the session.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from typing import Any

import trio

from ._procs import Processes, Server
from ._scenarios import KAILASH_HTTP_MS, Plan, _percentile

WORKFLOW = "bench"
STEPS = 3  # progress reports per run in the latency rows
IN_FLIGHT = 16


def _summary(values_ns: list[int]) -> dict[str, Any]:
    us = sorted(v / 1000 for v in values_ns)
    return {"n": len(us), "p50": _percentile(us, 50), "p90": _percentile(us, 90),
            "p99": _percentile(us, 99)}


# ------------------------------------------------------------------ worker


async def _worker(target: str) -> None:
    from nexus_client import RunContext, Worker, open_client

    async def bench(ctx: RunContext, inputs: dict[str, Any]) -> dict[str, Any]:
        got = time.monotonic_ns()
        steps = int(inputs.get("steps", 0))
        for step in range(1, steps + 1):
            await ctx.progress(step, steps, str(time.monotonic_ns()))
        return {"dispatch_ns": got - inputs["t"]} if "t" in inputs else {}

    async with open_client(target, channel="worker", client_name="bench-worker") as client:
        await Worker({WORKFLOW: bench}).serve(client, concurrency=IN_FLIGHT)


# --------------------------------------------------------------- requester


async def _until_served(client: Any, sid: str) -> None:
    """Waits until the worker has registered (a run is `not_found` before)."""
    from nexus_client import SessionNotFound

    deadline = time.monotonic() + 30
    while True:
        try:
            await client.run_and_wait(sid, WORKFLOW, {"steps": 0})
            return
        except SessionNotFound:
            if time.monotonic() > deadline:
                raise
            await trio.sleep(0.05)


async def _latency(target: str, runs: int) -> dict[str, Any]:
    from nexus_client import open_client

    dispatch: list[int] = []
    progress: list[int] = []
    rtt: list[int] = []
    async with open_client(target, channel="api") as client:
        sid = (await client.create_session()).session_id
        await _until_served(client, sid)

        def on_progress(event: Any) -> None:
            progress.append(time.monotonic_ns() - int(event.step))

        for i in range(runs + runs // 10):
            warm = i < runs // 10
            if warm:
                mark = len(progress)
            t0 = time.monotonic_ns()
            result = await client.run_and_wait(sid, WORKFLOW, {"t": t0, "steps": STEPS},
                                               on_progress=on_progress)
            assert result.status == "completed", result
            if warm:
                del progress[mark:]
            else:
                dispatch.append(result.result["dispatch_ns"])
            await trio.sleep(0.002)  # paced: one run at a time, none queued
        for i in range(runs + runs // 10):
            t0 = time.monotonic_ns()
            result = await client.run_and_wait(sid, WORKFLOW, {"steps": 0})
            if i >= runs // 10:
                rtt.append(time.monotonic_ns() - t0)
            await trio.sleep(0.002)
    return {"dispatch": _summary(dispatch), "progress": _summary(progress),
            "execute_unix": _summary(rtt)}


async def _throughput(target: str, window: float) -> dict[str, Any]:
    from nexus_client import open_client

    rows = {}
    async with open_client(target, channel="api") as client:
        sessions = [(await client.create_session()).session_id for _ in range(IN_FLIGHT)]
        counting = [False]
        done = [0]

        async def loop(sid: str) -> None:
            while True:
                result = await client.run_and_wait(sid, WORKFLOW, {"steps": 0})
                assert result.status == "completed", result
                if counting[0]:
                    done[0] += 1

        for in_flight in (1, IN_FLIGHT):
            done[0] = 0

            async with trio.open_nursery() as nursery:
                for sid in sessions[:in_flight]:
                    nursery.start_soon(loop, sid)
                await trio.sleep(min(1.0, window / 2))  # warm-up
                counting[0] = True
                t0 = time.monotonic()
                await trio.sleep(window)
                counting[0] = False
                rows[in_flight] = done[0] / (time.monotonic() - t0)
                nursery.cancel_scope.cancel()
    return {"runs_per_s": {str(k): v for k, v in rows.items()}}


def _http_execute(address: str, runs: int) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/sessions", body=b'{"channel": "api"}')
    created = json.loads(conn.getresponse().read())
    headers = {"Authorization": f"Bearer {created['token']}",
               "Content-Type": "application/json"}
    body = json.dumps({"inputs": {"steps": 0}, "session_id": created["session_id"]}).encode()
    rtt: list[int] = []
    for i in range(runs + runs // 10):
        t0 = time.monotonic_ns()
        conn.request("POST", f"/workflows/{WORKFLOW}/execute", body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        t1 = time.monotonic_ns()
        assert response.status == 200 and answer["state"] == "completed", answer
        if i >= runs // 10:
            rtt.append(t1 - t0)
        time.sleep(0.002)
    conn.close()
    return {"execute_http": _summary(rtt)}


def _requester(target: str, http_address: str, runs: int, window: float) -> dict[str, Any]:
    figures = trio.run(_latency, target, runs)
    figures.update(_http_execute(http_address, runs))
    figures.update(trio.run(_throughput, target, window))
    return figures


# ------------------------------------------------------------------ phase


def workflows(procs: Processes, plan: Plan, nexusd: Server) -> list[dict[str, Any]]:
    """The workflow rows: runs through one worker of `nexusd` (see the module)."""
    unix = nexusd.targets["unix"].address
    http_address = nexusd.targets["http"].address
    runs, window = (200, 2.0) if plan.quick else (1000, 5.0)
    worker_log = (procs.tmp / "bench-worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "bench._workflows", "worker", unix],
                              stdin=subprocess.DEVNULL, stdout=worker_log, stderr=worker_log)
    try:
        requester = subprocess.run(
            [sys.executable, "-m", "bench._workflows", "requester", unix, http_address,
             str(runs), str(window)], capture_output=True, text=True, timeout=600)
        if requester.returncode != 0:
            return [{"case": "workflow runs", "error": requester.stderr.strip()[-600:]}]
        figures = json.loads(requester.stdout)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
    rows: list[dict[str, Any]] = [
        {"case": "dispatch: execute -> worker receives", "runs": runs, **figures["dispatch"]},
        {"case": "progress: worker report -> requester receipt",
         **figures["progress"]},
        {"case": "execute round trip, Unix (nexus_client)", **figures["execute_unix"]},
        {"case": "execute round trip, HTTP POST .../execute", **figures["execute_http"]},
        {"case": "Kailash Nexus HTTP workflow execute (published)", "role": "reference",
         "p50": KAILASH_HTTP_MS * 1000},
    ]
    for in_flight, rate in figures["runs_per_s"].items():
        rows.append({"case": f"runs/s through one worker, {in_flight} in flight",
                     "runs_per_s": rate, "window_s": window})
    return rows


def main(argv: list[str]) -> None:
    role = argv[0]
    if role == "worker":
        trio.run(_worker, argv[1])
    elif role == "requester":
        figures = _requester(argv[1], argv[2], int(argv[3]), float(argv[4]))
        print(json.dumps(figures))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # the bench stops its processes
        main(sys.argv[1:])
