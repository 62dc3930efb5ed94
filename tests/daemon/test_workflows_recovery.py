"""The workflow engine at start: a run in flight at the last stop keeps the
start time its session recorded, so its timeout counts from then."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nexus_protocol as p
import pytest
import trio

from nexusd._clock import WallClock
from nexusd._principal import Principal
from nexusd.session._commands import ReadRuns, RecordRun
from nexusd.workflows import RunPolicy, Workflows


class _Session:
    """Serves the engine's requests for one session as its actor would:
    its run records, and the changes the engine journals."""

    def __init__(self, runs: dict[str, dict[str, Any]]) -> None:
        self.runs = runs
        self.recorded: list[tuple[float, dict[str, Any]]] = []
        self.ended = trio.Event()

    async def call(self, principal: Principal, request: p.Message) -> p.Message:
        if isinstance(request, ReadRuns):
            return p.Report(id=request.id, report={"seq": 1, "runs": self.runs})
        assert isinstance(request, RecordRun)
        self.recorded.append((trio.current_time(), request.record))
        if request.record["event"] in ("completed", "failed", "cancelled"):
            self.ended.set()
        return p.Written(id=request.id, seq=1 + len(self.recorded))


@pytest.mark.parametrize("down", [0.0, 60.0, 150.0])
async def test_a_recovered_run_times_out_counting_from_its_recorded_start(
        tmp_path: Path, autojump_clock: object, down: float) -> None:
    # The wall clock follows trio's; the run started `down` seconds before this start.
    offset = 1_000_000.0 - trio.current_time()
    clock = WallClock(lambda: trio.current_time() + offset)
    index = tmp_path / "runs.json"
    index.write_text(json.dumps({"run-1": "s1"}))
    session = _Session({"run-1": {
        "run_id": "run-1", "workflow": "data-processor", "status": "running",
        "attempt": 1, "inputs": {}, "idempotency_key": "run-1",
        "started_at": clock.now() - down}})
    policy = RunPolicy(timeout=100.0, wait=1000.0)
    engine = Workflows(call=session.call, policy=policy, index=index, clock=clock)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        with trio.fail_after(500):
            await session.ended.wait()
        nursery.cancel_scope.cancel()
    at, failed = session.recorded[-1]
    assert failed["event"] == "failed"
    assert failed["error"] == "the run did not end within 100s (run_timeout)"
    # No worker serves it: it ends at its deadline (at once if that has
    # passed), not 100s after this start.
    assert at - t0 == pytest.approx(max(0.0, 100.0 - down), abs=1.0)
    assert failed["duration"] == pytest.approx(max(100.0, down), abs=1.0)
