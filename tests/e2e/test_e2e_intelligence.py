"""Session intelligence through the blocking `Nexus` against a real daemon:
insights, the recommended channel, validation, the optimal session, endpoint
fallback, and an ended session continued with its context and named keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from nexus_client import CannotConnect, Nexus

from ._procs import DaemonProcess

WAIT = 10.0


def test_insights_recommendation_and_validation(daemon: DaemonProcess) -> None:
    with Nexus(str(daemon.socket), timeout=WAIT, credentials=False) as app:
        sid = app.create_optimal_session({"task_type": "data_analysis",
                                          "experience_level": "expert",
                                          "user_id": "analyst_123"})
        assert app.get_session_summary(sid)["created_channel"] == "cli"
        assert app.validate_session(sid) is True
        assert app.get_recommended_channel(sid, "ai_interaction") == "mcp"

        for to in ("web", "web"):
            tid = app.initiate_channel_switch(sid, None, to)
            app.complete_channel_switch(sid, tid, success=True)
        pick = app.recommend(sid, "ai_interaction")
        assert (pick["channel"], pick["rule"]) == ("web", "history")
        assert pick["reason"].startswith("2 of 2 switches to web succeeded")

        for i in range(11):
            app.track_session_event(sid, "user_action", {"action": f"a{i}"})
        messages = app.generate_insights(sid)
        assert "15 events (over 10): a very engaged session" in messages  # 4 + 11
        transitions = app.get_transition_analytics(sid)
        assert transitions["pairs"]["cli->web"]["succeeded"] == 1
        assert transitions["pairs"]["web->web"]["succeeded"] == 1

        app.invalidate_session(sid)
        assert app.validate_session(sid) is False


def test_an_ended_session_continues_with_its_context_and_the_named_keys(
        daemon: DaemonProcess) -> None:
    with Nexus(str(daemon.socket), timeout=WAIT, credentials=False) as app:
        old = app.create_session(channel="api")
        app.set_session_data(old, "draft", {"title": "Q3 report"})
        app.set_session_data(old, "scratch", [1, 2, 3])
        app.update_session_context(old, "api", {"user_preferences": {"theme": "dark"},
                                                "workflow_state": {"step": 3}})
        with pytest.raises(LookupError):
            app.continue_session(old, ["draft"])  # never synced: nothing to carry
        app.sync_session(old, "api")
        app.invalidate_session(old)

        new = app.continue_session(old, ["draft"])
        assert new != old
        state = app.sync_session(new, "cli")
        assert state["data"] == {"draft": {"title": "Q3 report"}}  # not "scratch"
        assert state["context"]["workflow_state"] == {"step": 3}
        assert state["context"]["preferences"] == {"theme": "dark"}
        assert app.get_session_summary(new)["channels_used"] == ["api", "cli"]


def test_endpoints_are_tried_in_order_and_the_one_used_is_reported(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.sock")
    with Nexus([absent, str(daemon.socket)], timeout=WAIT, credentials=False) as app:
        assert app.endpoint == f"unix:{daemon.socket}"
        sid = app.create_session()
        assert app.validate_session(sid)
    with pytest.raises(CannotConnect) as refused:
        Nexus([absent, str(tmp_path / "also-absent.sock")], credentials=False)
    assert "absent.sock" in str(refused.value) and "also-absent.sock" in str(refused.value)
