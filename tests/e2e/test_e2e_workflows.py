"""Workflows end to end: `nexus worker` serving examples/workers.py and
`nexus run` following a run; a run in flight surviving `kill -9` of the daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import trio
from nexus_client import Backoff, Change, Nexus, RunContext, Worker, open_client, steps

from ._procs import NEXUS, Cli, DaemonProcess, clean_environ

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0
FAST = Backoff(base=0.05, max_delay=0.25, max_attempts=None)


def _wait_for_workers(socket: Path, n: int) -> None:
    with Nexus(str(socket), timeout=WAIT) as app:
        deadline = time.monotonic() + WAIT
        while app.stats().get("workers", 0) < n:
            assert time.monotonic() < deadline, "the worker never registered"
            time.sleep(0.05)


def test_nexus_run_follows_the_guides_multi_step_processor(cli: Cli,
                                                           daemon: DaemonProcess) -> None:
    worker = subprocess.Popen([*NEXUS, "worker", str(ROOT / "examples" / "workers.py") +
                               ":worker"], env=cli.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_workers(daemon.socket, 1)
        with Nexus(str(daemon.socket), save_credentials=True, timeout=WAIT) as app:
            sid = app.create_session(channel="api")
        r = cli.run("run", "multi-step-processor", "--session", sid,
                    "--input", '{"data": "initial"}')
        assert r.code == 0, r.err
        lines = [json.loads(line) for line in r.out.splitlines()]
        assert [line["progress"] for line in lines[:-1]] == [0.2, 0.4, 0.6, 0.8, 1.0]
        assert lines[-1]["state"] == "completed"
        assert lines[-1]["result"]["step_5"] == "processed initial"
        r = cli.run("get", sid, "progress")
        assert (r.code, r.out.strip()) == (0, "100.0")
        # Continuing a finished run starts it again (from the recorded step, the last).
        r = cli.run("run", "data-processor", "--session", sid, "--detach", "--json",
                    "--input", '{"values": [1, 2, 3]}')
        assert r.code == 0 and json.loads(r.out)["run_id"].startswith("run-")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=WAIT)
    assert worker.returncode == 0, err
    assert b"Traceback" not in err, err


async def test_a_run_in_flight_survives_kill_9_of_the_daemon(
        tmp_path: Path, socket_dir: Path, home: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    env = clean_environ(home)
    flags = ("--run-lease", "1.5s", "--run-backoff", "0.1s")
    first = DaemonProcess(data, socket, tmp_path / "first.log", *flags, env=env, ws=False)
    second = DaemonProcess(data, socket, tmp_path / "second.log", *flags, env=env, ws=False)
    blocked = trio.Event()

    async def step(ctx: RunContext, inputs: dict[str, Any], data: dict[str, Any]
                   ) -> dict[str, Any]:
        n = len(data) + 1
        if n == 3 and ctx.attempt == 1:
            blocked.set()
            await trio.sleep_forever()  # the daemon dies while this step runs
        return {f"step_{n}": ctx.attempt}

    worker = Worker({"multi": steps(*[step] * 5)})
    try:
        first.start()
        await first.wait_ready_async()
        async with open_client(str(socket), reconnect=FAST, request_timeout=WAIT) as client, \
                open_client(str(socket), channel="worker", reconnect=FAST,
                            request_timeout=WAIT) as wclient, \
                trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: worker.serve(wclient,
                                                                 task_status=task_status))
            sid = (await client.create_session("api")).session_id
            run_id = await client.run(sid, "multi", {"data": "x"})
            with trio.fail_after(WAIT):
                await blocked.wait()
            first.kill()  # SIGKILL, mid-run
            second.start()
            await second.wait_ready_async()
            changes: list[Change] = []
            with trio.fail_after(WAIT):
                async with client.watch(sid, since=0) as events:
                    async for event in events:
                        assert isinstance(event, Change)
                        changes.append(event)
                        if event.op == "run" and event.value["event"] in (
                                "completed", "failed"):
                            break
            nursery.cancel_scope.cancel()
        runs = [c.value for c in changes if c.op == "run"]
        assert {r["run_id"] for r in runs} == {run_id}
        assert runs[-1]["event"] == "completed", runs[-1]
        assert runs[-1]["attempt"] == 2
        assert runs[-1]["result"] == {f"step_{n}": 1 if n < 3 else 2 for n in range(1, 6)}
        progress = [r["step"] for r in runs if r["event"] == "progress"]
        assert progress == [1, 2, 3, 4, 5]  # none lost, none repeated
        assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
        assert "recovered; dispatching them again" in second.log_text()
    finally:
        first.kill()
        second.kill()


def test_the_guides_register_and_execute(daemon: DaemonProcess) -> None:
    def load(ctx: Any, inputs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"loaded": inputs["data"]}

    def size(ctx: Any, inputs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"size": len(data["loaded"])}

    with Nexus(str(daemon.socket), timeout=WAIT) as app:
        app.register("guide-steps", steps(load, size))
        sid = app.create_session(channel="api")
        outcome = app.execute("guide-steps", sid, {"data": "initial"})
        assert outcome["state"] == "completed" and outcome["progress"] == 1.0
        assert outcome["result"] == {"loaded": "initial", "size": 7}
        assert app.get_session_data(sid, "current_step") == 2
        assert app.get_session_data(sid, "progress") == 100.0
