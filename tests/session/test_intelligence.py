"""Session intelligence, decided and applied as the actor does: tracked
events, the analytics they give (the guide's figures), insights and the
recommended channel, each rule on its own."""

from __future__ import annotations

import calendar
from typing import Any

import nexus_protocol as p
import pytest
import trio
import trio.testing

from nexusd._errors import RequestError
from nexusd.session._analytics import ChannelAnalytics
from nexusd.session._commands import COMMANDS, CommandLimits, Context, RecordRun
from nexusd.session._insights import InsightSettings, recommend, session_insights
from nexusd.session._state import SessionState
from nexusd.store import MemoryStore

# 2026-12-01 13:35:00 UTC: the clock reads 13:35 in messages.
T0 = float(calendar.timegm((2026, 12, 1, 13, 35, 0)))
SETTINGS = InsightSettings()

# The guide's analytics example, event for event.
GUIDE_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("session_created", {"channel": "api"}),
    ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 15.5}),
    ("channel_switch", {"from_channel": "api", "to_channel": "cli"}),
    ("workflow_executed", {"workflow_name": "data-validator", "execution_time": 8.2}),
    ("user_action", {"action": "export_results", "user_id": "test_user"}),
    ("channel_switch", {"from_channel": "cli", "to_channel": "mcp"}),
    ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 12.1}),
]


class Session:
    """A session state driven through the command table, changes kept."""

    def __init__(self, *, idle: float | None = 1800.0, ttl: float = 86400.0,
                 limits: CommandLimits | None = None) -> None:
        self.state = SessionState("s", T0, "api", ttl, T0 + ttl, idle)
        self.changes: list[p.Change] = []
        self.limits = limits or CommandLimits()
        self.analytics = ChannelAnalytics()

    def do(self, request: p.Message, at: float, channel: str = "api",
           attached: tuple[str, ...] = ()) -> Any:
        decision = COMMANDS[type(request)].decide(
            self.state, request, Context(at, channel, "w", self.limits, lambda: attached))
        if decision.change is not None:
            self.state.apply(decision.change)
            self.changes.append(decision.change)
            self.analytics.committed(decision.change)
        return decision.reply

    def track(self, kind: str, data: Any, at: float) -> Any:
        return self.do(p.Track(id=1, session_id="s", event_type=kind, data=data), at)

    def switch(self, to: str, success: bool, at: float) -> None:
        begun = self.do(p.SwitchBegin(id=1, session_id="s", to_channel=to), at)
        self.do(p.SwitchComplete(id=2, session_id="s", transition_id=begun.transition_id,
                                 success=success), at + 2)

    def report(self, request: p.Message, at: float, **kw: Any) -> dict[str, Any]:
        reply = self.do(request, at, **kw)
        assert isinstance(reply, p.Report)
        return reply.report


def _rules(found: list[dict[str, Any]]) -> dict[str, str]:
    return {i["rule"]: i["message"] for i in found}


def test_the_guides_seven_events_give_the_guides_figures() -> None:
    s = Session()
    for n, (kind, data) in enumerate(GUIDE_EVENTS):
        s.track(kind, data, T0 + 0.1 * n)
    summary = s.report(p.Summary(id=1, session_id="s"), T0 + 1)
    assert summary["total_events"] == 7
    assert summary["event_breakdown"] == {"session_created": 1, "workflow_executed": 3,
                                          "channel_switch": 2, "user_action": 1}
    assert summary["channels_switched_to"] == ["cli", "mcp"]  # the guide's channels_used
    assert summary["channels_used"] == ["api"]  # where the requests came from
    assert summary["workflows_executed"] == ["data-processor", "data-validator"]
    assert summary["total_execution_time"] == pytest.approx(35.8)
    assert summary["avg_execution_time"] == pytest.approx(17.9)  # the guide's: per workflow
    assert summary["activity_level"] == "normal"
    perf = summary["performance"]
    assert perf["data-processor"] | {"p50_execution_time": None, "p95_execution_time": None} \
        == pytest.approx({
            "total_executions": 2, "success_rate": 1.0, "avg_execution_time": 13.8,
            "min_execution_time": 12.1, "max_execution_time": 15.5, "total_time": 27.6,
            "performance_trend": "improving", "p50_execution_time": None,
            "p95_execution_time": None})
    assert perf["data-validator"]["performance_trend"] == "stable"
    channels = s.analytics.report()
    assert channels["total_channel_switches"] == 2
    assert channels["channel_distribution"] == {"cli": {"count": 1, "percentage": 50.0},
                                                "mcp": {"count": 1, "percentage": 50.0}}
    assert channels["most_popular_channel"] == "cli"
    assert channels["performance"]["data-processor"]["avg_execution_time"] == \
        pytest.approx(13.8)
    # The guide's three session insights stay silent: short, normal, two
    # channels switched to (the third is "api", where the events came from).
    assert set(_rules(session_insights(s.state, T0 + 1, SETTINGS))) == {"multi_channel"}


def test_replayed_and_restored_states_give_the_same_analytics() -> None:
    s = Session()
    for n, (kind, data) in enumerate(GUIDE_EVENTS):
        s.track(kind, data, T0 + n)
    s.switch("cli", True, T0 + 100)
    s.switch("mcp", False, T0 + 200)
    replayed = SessionState("s", T0, "api", 86400.0, T0 + 86400.0, 1800.0)
    for change in s.changes:
        replayed.apply(change)
    restored = SessionState.from_snapshot(s.state.to_snapshot())
    now = T0 + 500
    assert replayed.summary(now) == restored.summary(now) == s.state.summary(now)
    assert replayed.time_on_channels(now) == {"api": 102.0, "cli": 398.0}
    restarted = ChannelAnalytics()
    restarted.restore(s.analytics.to_doc())
    assert restarted.report() == s.analytics.report()


def test_track_is_bounded_in_size_and_rate() -> None:
    s = Session(limits=CommandLimits(max_track=64, track_rate=3))
    with pytest.raises(RequestError) as big:
        s.track("blob", "x" * 100, T0)
    assert big.value.code is p.ErrorCode.BAD_REQUEST and "the most is 64" in str(big.value)
    for i in range(3):
        s.track("tick", i, T0 + 60 + i)  # the window of [T0 + 60, T0 + 120)
    with pytest.raises(RequestError) as fast:
        s.track("tick", 3, T0 + 63)
    assert fast.value.code is p.ErrorCode.BUSY
    assert fast.value.retry_after == pytest.approx(57.0)
    assert s.state.seq == 3  # nothing refused was journaled
    s.track("tick", 3, T0 + 120)  # the next window
    assert s.state.tracked == {"tick": 4}


def test_merge_context_takes_free_form_keys_within_bounds() -> None:
    s = Session(limits=CommandLimits(max_context_keys=2, max_context=100))
    s.do(p.MergeContext(id=1, session_id="s",
                        values={"workflow_state": {"step": 3}, "draft": "x"}), T0)
    assert s.state.context["workflow_state"] == {"step": 3}
    assert s.state.context["current_channel"] == "api"  # kept
    s.do(p.MergeContext(id=1, session_id="s", values={"draft": None}), T0 + 1)
    assert "draft" not in s.state.context
    refusals = [{"current_channel": "cli"}, {"a": 1, "b": 2}, {"big": "x" * 200}]
    for values in refusals:
        with pytest.raises(RequestError) as refused:
            s.do(p.MergeContext(id=1, session_id="s", values=values), T0 + 2)
        assert refused.value.code is p.ErrorCode.BAD_REQUEST
    assert s.state.seq == 2


# ------------------------------------------------------------------ insights


def test_each_insight_says_what_it_saw() -> None:
    s = Session(idle=1800.0, ttl=5 * 3600.0)
    assert session_insights(s.state, T0 + 60, SETTINGS) == []
    for i in range(11):
        s.track("user_action", {"i": i}, T0 + i)
    s.switch("cli", True, T0 + 20)
    s.switch("mcp", True, T0 + 30)
    s.switch("web", False, T0 + 40)
    for seconds in (20, 25, 41):
        s.track("workflow_executed", {"workflow_name": "data-processor",
                                      "execution_time": seconds}, T0 + 50)
    # 25 minutes idle after the last event (at T0 + 50): 14:00:50; expires 14:25.
    now = T0 + 50 + 25 * 60
    found = _rules(session_insights(s.state, now, SETTINGS))
    assert found["high_activity"] == "20 events (over 10): a very engaged session"
    assert found["multi_channel"] == "3 channels used; 2 of 3 switches succeeded"
    assert found["failing_switches"] == "1 of 3 switches failed (success rate 67%, under 80%)"
    assert found["idle"] == "idle 25 of 30 minutes: will expire at 14:05"
    assert found["slow_workflow"] == "workflow data-processor p95 41 s, over the 30 s threshold"
    assert "long_session" not in found and "expiring" not in found
    later = T0 + 4.95 * 3600
    found = _rules(session_insights(s.state, later, SETTINGS))
    assert found["long_session"] == "open 297 minutes (over 60): save progress more often"
    assert found["expiring"] == "lifetime ends in 3 minutes, at 18:35: renew it to keep it"


def test_insight_thresholds_are_settings() -> None:
    s = Session()
    s.track("user_action", {}, T0)
    strict = InsightSettings(high_activity=0, long_session=10.0, idle_warning=0.001)
    assert set(_rules(session_insights(s.state, T0 + 11, strict))) == {
        "high_activity", "long_session", "idle"}


# ------------------------------------------------------------- recommending


def _pick(s: Session, task: str | None, at: float, experience: str | None = None,
          attached: tuple[str, ...] = ()) -> dict[str, Any]:
    return s.report(p.Recommend(id=1, session_id="s", task_type=task, experience=experience),
                    at, attached=attached)


def test_the_guides_defaults_by_task_type() -> None:
    s = Session()
    assert _pick(s, "data_analysis", T0, "expert")["channel"] == "cli"
    assert _pick(s, "data_analysis", T0)["channel"] == "api"
    assert _pick(s, "ai_interaction", T0)["channel"] == "mcp"
    general = _pick(s, None, T0)
    assert (general["channel"], general["rule"]) == ("api", "default")
    assert general["reason"] == "the default for general tasks"


def test_history_overrides_the_default_when_switches_succeeded() -> None:
    s = Session()
    s.switch("web", True, T0)
    s.switch("web", True, T0 + 10)
    pick = _pick(s, "ai_interaction", T0 + 20)
    assert (pick["channel"], pick["rule"]) == ("web", "history")
    assert pick["reason"] == ("2 of 2 switches to web succeeded (at least 80%), "
                              "the last at 13:35")


def test_history_below_the_success_rate_is_not_followed() -> None:
    s = Session()
    s.switch("web", False, T0)
    s.switch("web", True, T0 + 1000)  # 1 of 2: 50%, under 80%
    assert _pick(s, "ai_interaction", T0 + 2000)["rule"] == "default"


def test_an_attached_channel_overrides_a_default_nobody_is_on() -> None:
    s = Session()
    pick = _pick(s, "ai_interaction", T0, attached=("cli", "web"))
    assert (pick["channel"], pick["rule"]) == ("cli", "attached")
    both = _pick(s, "ai_interaction", T0, attached=("mcp", "web"))
    assert (both["channel"], both["rule"]) == ("mcp", "default")


def test_a_recently_failed_channel_is_avoided_for_a_while() -> None:
    s = Session()
    s.switch("mcp", False, T0)  # completed (failed) at T0 + 2
    pick = _pick(s, "ai_interaction", T0 + 60)
    assert (pick["channel"], pick["rule"], pick["avoided"]) == ("api", "fallback", ["mcp"])
    assert "mcp (a switch to it failed at 13:35)" in pick["reason"]
    assert _pick(s, "ai_interaction", T0 + 2 + 601)["channel"] == "mcp"  # avoid_for passed


def test_a_history_channel_that_then_failed_is_avoided() -> None:
    s = Session()
    for i in range(4):
        s.switch("web", True, T0 + 10 * i)
    s.switch("web", False, T0 + 100)  # 4 of 5: still 80%, but it failed just now
    pick = _pick(s, None, T0 + 110, attached=("web",))
    assert (pick["channel"], pick["rule"]) == ("api", "default")


def test_the_recommendation_is_deterministic() -> None:
    s = Session()
    s.switch("cli", True, T0)
    picks = {repr(recommend(s.state, "ai_interaction", None, ["web", "cli"], T0 + 5, SETTINGS))
             for _ in range(5)}
    assert len(picks) == 1


async def test_daemon_wide_analytics_are_stored_every_period_when_changed(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    analytics = ChannelAnalytics()
    async with trio.open_nursery() as nursery:
        await nursery.start(analytics.keep, store, 5.0)
        analytics.session_created("cli")
        await trio.sleep(4.9)
        assert await store.load_analytics() is None  # not yet: one period
        await trio.sleep(0.2)
        stored = await store.load_analytics()
        assert stored is not None
        restored = ChannelAnalytics()
        restored.restore(stored)
        assert restored.report()["sessions_created_by_channel"] == {"cli": 1}
        nursery.cancel_scope.cancel()


def test_runs_the_daemon_ran_count_in_the_workflow_figures() -> None:
    s = Session()
    for n, (outcome, seconds) in enumerate((("completed", 20.0), ("failed", 45.0),
                                            ("completed", 41.0))):
        run = {"run_id": f"r{n}", "workflow": "data-processor"}
        s.do(RecordRun(id=1, session_id="s", record={**run, "event": "started"}), T0 + n)
        s.do(RecordRun(id=1, session_id="s", record={**run, "event": outcome,
                                                     "duration": seconds}), T0 + n)
    perf = s.report(p.Summary(id=1, session_id="s"), T0 + 10)["performance"]
    processor = perf["data-processor"]
    assert (processor["total_executions"], processor["success_rate"]) == (3, pytest.approx(2 / 3))
    assert (processor["p50_execution_time"], processor["p95_execution_time"]) == (41.0, 45.0)
    assert processor["performance_trend"] == "degrading"
    assert s.analytics.report()["performance"] == perf
    assert _rules(session_insights(s.state, T0 + 10, SETTINGS))["slow_workflow"] == \
        "workflow data-processor p95 45 s, over the 30 s threshold"
