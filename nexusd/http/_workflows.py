"""The workflow routes of the HTTP channel: run a workflow in a session
(`POST /workflows/{name}/execute`), follow a run (`GET
/sessions/{id}/runs/{run_id}`), list the workflows served (`GET /workflows`).

An execute is a `run` request served by the workflow engine (SPEC section
15) with this request's principal; its sink takes the engine's answer
(`run_started` or an error), then the run's `progress` events and its one
`result`. By default the route waits for the result and answers the run's
outcome; asked not to wait, it answers 202 at once with where to follow it.
"""

from __future__ import annotations

from typing import Any

import trio
from nexus_protocol import Error, ErrorCode, Message, Progress, Result, Run, RunStarted
from starlette.responses import Response

from ..session._commands import ReadRuns
from ._app import Exchange, json_response
from ._mapping import HttpError, build, reply_json

__all__ = ["execute", "get_run", "list_workflows"]


class _RunSink:
    """Takes the engine's answer to a `run`, then the run's events. Keeps
    only the last progress: a run may report many."""

    def __init__(self) -> None:
        self.answered = trio.Event()
        self.answer: Message | None = None
        self.progress = 0.0
        self.ended = trio.Event()
        self.result: Result | None = None

    def reply(self, message: Message) -> None:
        if self.answer is None:
            self.answer = message
            self.answered.set()
        elif isinstance(message, Progress):
            self.progress = message.progress
        elif isinstance(message, Result) and self.result is None:
            self.result = message
            self.ended.set()

    def reply_event(self, body: bytes) -> None:
        pass  # a run never attaches


def _wants_async(x: Exchange) -> bool:
    wait = x.query.get("wait")
    if wait is not None and wait.lower() not in ("true", "false", "1", "0"):
        raise HttpError(ErrorCode.BAD_REQUEST, f"wait must be true or false, not {wait[:20]!r}")
    prefer = x.request.headers.get("prefer", "")
    return wait in ("false", "0") or "respond-async" in prefer.lower()


def _run_location(session_id: str, run_id: str) -> str:
    return f"/sessions/{session_id}/runs/{run_id}"


async def _record(x: Exchange, session_id: str, run_id: str) -> dict[str, Any]:
    """The session's record of the run (`not_found` if it has none)."""
    reply = await x.call(ReadRuns(id=0, session_id=session_id, token=x.token))
    report = reply_json(reply)
    record = report["runs"].get(run_id)
    if record is None:
        raise HttpError(ErrorCode.NOT_FOUND, f"no run {run_id!r} in session {session_id}")
    return dict(record)


def _outcome(record: dict[str, Any], session_id: str) -> dict[str, Any]:
    """The JSON of a run as its session records it."""
    state = record["status"]
    document = {
        "run_id": record["run_id"], "session_id": session_id,
        "workflow": record["workflow"], "state": state,
        # A completed run is all done, whatever its worker last reported.
        "progress": 1.0 if state == "completed" else record.get("progress", 0.0),
        "step": record.get("step", 0), "total": record.get("total", 0),
        "attempts": record.get("attempt", 0), "duration": record.get("duration"),
    }
    if state == "completed":
        document["result"] = record.get("result")
    elif state == "failed":
        document["error"] = record.get("error")
    return document


async def execute(x: Exchange) -> Response:
    """Runs workflow `name` in the body's session: 200 with the outcome
    (completed, failed or cancelled), or 202 at once when asked not to wait.

    Raises:
        HttpError: `bad_request` (body, inputs), `not_found` (no such
            workflow or session), `unavailable` (no worker within
            `run_wait`), or the session's refusal.
    """
    asynchronous = _wants_async(x)
    body = await x.json()
    if isinstance(body, dict) and not isinstance(body.get("session_id"), str):
        raise HttpError(ErrorCode.BAD_REQUEST,
                        "the body needs session_id: the session the run belongs to")
    if isinstance(body, dict) and not isinstance(body.get("inputs"), dict | None):
        raise HttpError(ErrorCode.BAD_REQUEST, "inputs must be a JSON object")
    request = build(Run, x.limits, body, ("session_id", "inputs", "resume"),
                    workflow=x.path["name"], token=x.token)
    sink = _RunSink()
    await x.parts.service.submit(x.principal(), request, sink)
    await sink.answered.wait()
    started = sink.answer
    if isinstance(started, Error):
        raise HttpError.from_reply(started)
    assert isinstance(started, RunStarted)
    sid, run_id = request.session_id, started.run_id
    location = {"Location": _run_location(sid, run_id)}
    if not asynchronous:
        async with trio.open_nursery() as nursery:
            # A daemon that drains answers 202: the run stays in flight.
            async def stop_on_drain() -> None:
                await x.parts.stopping.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_drain)
            await sink.ended.wait()
            nursery.cancel_scope.cancel()
    if sink.result is None:
        return json_response({"run_id": run_id, "session_id": sid, "state": "running",
                              "progress": sink.progress, "seq": started.seq},
                             202, location)
    record = await _record(x, sid, run_id)
    if record["status"] == "failed" and not record.get("attempt"):
        # No worker ever took it: the daemon could not serve it, not the workflow failing.
        raise HttpError(ErrorCode.UNAVAILABLE, str(record.get("error")))
    return json_response(_outcome(record, sid), 200, location)


async def get_run(x: Exchange) -> Response:
    """A run of the session as it stands (running or ended)."""
    sid = x.path["session_id"]
    return json_response(_outcome(await _record(x, sid, x.path["run_id"]), sid))


async def list_workflows(x: Exchange) -> Response:
    """The workflows live workers serve now, with those workers."""
    engine = x.parts.service.workflows
    listing = engine.listing() if engine is not None else {}
    return json_response({"workflows": [{"name": name, "workers": workers}
                                        for name, workers in sorted(listing.items())]})
