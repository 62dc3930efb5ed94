"""The blocking `Nexus` facade from plain code: no trio, no event loop, the
guide's method names, and a watch consumed as an ordinary generator."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

import pytest
from nexus_client import Change, Nexus, Snapshot

from ._procs import DaemonProcess

#: Hard bound on each wait, in seconds.
WAIT = 10.0

PREFERENCES = {"output_format": "json", "verbose": True, "theme": "dark"}
WORKFLOW = {"current_step": 1, "total_steps": 5, "data_source": "database"}


def test_blocking_facade_from_plain_code(daemon: DaemonProcess) -> None:
    # Plain code: no event loop of any kind is running here.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    with Nexus(str(daemon.socket), timeout=WAIT) as app:
        sid = app.create_session(channel="api")
        assert app.set_session_data(sid, "user_preferences", PREFERENCES) == 1
        assert app.set_session_data(sid, "workflow_context", WORKFLOW) == 1
        assert app.get_session_data(sid, "user_preferences") == PREFERENCES
        assert app.get_session_data(sid, "missing") is None
        assert app.get_session_data(sid) == {"user_preferences": PREFERENCES,
                                             "workflow_context": WORKFLOW}

        seq = app.update_session_context(sid, "api", {
            "preferences": {"language": "en"},
            "history": [{"workflow": "data-processor", "step": 1}]})
        assert seq == 3

        state = app.sync_session(sid, "mcp")
        assert (state["session_id"], state["channel"], state["seq"]) == (sid, "mcp", 3)
        assert state["data"] == {"user_preferences": PREFERENCES, "workflow_context": WORKFLOW}
        assert state["context"]["current_channel"] == "api"
        assert state["context"]["preferences"] == {"language": "en"}
        assert state["context"]["history"] == [{"workflow": "data-processor", "step": 1}]

        # watch() as a generator, consumed by a thread until the change it waits for.
        received: queue.Queue[Any] = queue.Queue()

        def consume() -> None:
            try:
                with contextlib.closing(app.watch(sid)) as events:
                    for event in events:
                        received.put(event)
                        if isinstance(event, Change) and event.key == "done":
                            return
            except BaseException as exc:  # the test thread reports it
                received.put(exc)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        first = received.get(timeout=WAIT)
        assert isinstance(first, Snapshot), first
        assert first.seq == 3 and set(first.entries) == {"user_preferences", "workflow_context"}

        # Another program, on another channel and transport, carries on.
        token = app.token_for(sid)
        assert token is not None
        with Nexus(daemon.ws_url, channel="mcp", tokens={sid: token}, timeout=WAIT) as agent:
            step2 = {**WORKFLOW, "current_step": 2}
            assert agent.set_session_data(sid, "workflow_context", step2, expect=1) == 2
            agent.set_session_data(sid, "done", True)

        changes = [received.get(timeout=WAIT), received.get(timeout=WAIT)]
        consumer.join(timeout=WAIT)
        assert not consumer.is_alive()
        assert all(isinstance(c, Change) for c in changes), changes
        assert [(c.seq, c.op, c.key, c.channel) for c in changes] == [
            (4, "set", "workflow_context", "mcp"), (5, "set", "done", "mcp")]
        assert changes[0].value == step2
        assert received.empty()

        # The generator was closed, so the watch was let go: watching again works.
        events = app.watch(sid, since=4)
        try:
            replayed = next(events)
        finally:
            events.close()
        assert isinstance(replayed, Change) and replayed.seq == 5

        assert app.get_session_data(sid, "workflow_context") == step2
