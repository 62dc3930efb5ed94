"""Insights and the recommended channel: rules over a session's aggregates.

Pure functions of what `SessionState` keeps as changes apply (and of the
daemon-wide aggregates), so the same journal gives the same findings. Each
insight names its rule and says what it saw, with the figures; each
threshold is a setting (`InsightSettings`, from the daemon's configuration).

The recommended channel follows the guide's defaults for a task type,
overridden by the session's own history, in this order (the first rule that
gives a channel not avoided wins):

1. ``history``: the channel of the last successful switch, if switches to it
   succeeded at `success_rate` or more;
2. ``attached``: a channel a watcher is attached on now (the current channel
   first), if the default is not among them;
3. ``default``: the guide's default for the task type;
4. ``fallback``: the current channel, then "api".

A channel is avoided if a switch to it failed within `avoid_for` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, Final

import attrs

from ._state import SessionState, percentile

__all__ = [
    "InsightSettings",
    "default_channel",
    "recommend",
    "session_insights",
    "transition_report",
    "workflow_report",
]

#: The channel of last resort (the guide's fallback).
FALLBACK: Final = "api"


@attrs.frozen
class InsightSettings:
    """Thresholds of the insight and recommendation rules."""

    long_session: float = 3600.0  # seconds
    high_activity: int = 10  # events
    many_channels: int = 2  # more than this many is "multi-channel"
    idle_warning: float = 0.8  # fraction of the idle timeout gone
    expiry_warning: float = 600.0  # seconds before the session's TTL ends
    slow_workflow: float = 30.0  # seconds, p95
    success_rate: float = 0.8  # of switches to a channel, for `history`
    avoid_for: float = 600.0  # seconds a failed switch's channel is avoided


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def _switch_counts(state: SessionState) -> tuple[int, int, dict[str, list[int]]]:
    """(succeeded, completed, channel -> [succeeded, completed] of switches to it)."""
    by_channel: dict[str, list[int]] = {}
    for pair, agg in state.switch_pairs.items():
        to = pair.split("->", 1)[-1]
        counts = by_channel.setdefault(to, [0, 0])
        counts[0] += agg["ok"]
        counts[1] += agg["ok"] + agg["failed"]
    ok = sum(c[0] for c in by_channel.values())
    done = sum(c[1] for c in by_channel.values())
    return ok, done, by_channel


def _insight(rule: str, message: str, **figures: Any) -> dict[str, Any]:
    return {"rule": rule, "message": message, "figures": figures}


def session_insights(state: SessionState, now: float,
                     s: InsightSettings) -> list[dict[str, Any]]:
    """The session's insights at `now`, in a fixed rule order."""
    found = []
    duration = now - state.created_at
    if duration > s.long_session:
        found.append(_insight(
            "long_session", f"open {duration / 60:.0f} minutes (over {s.long_session / 60:.0f})"
            ": save progress more often", duration=duration))
    events = sum(state.counters.values())
    if events > s.high_activity:
        found.append(_insight("high_activity", f"{events} events (over {s.high_activity}): "
                              "a very engaged session", events=events))
    channels = sorted(set(state.channels) | set(state.switched_to))
    ok, done, _ = _switch_counts(state)
    if len(channels) > s.many_channels:
        found.append(_insight(
            "multi_channel", f"{len(channels)} channels used; {ok} of {done} switches succeeded",
            channels=channels, switches_ok=ok, switches=done))
    if done and ok / done < s.success_rate:
        found.append(_insight(
            "failing_switches", f"{done - ok} of {done} switches failed (success rate "
            f"{ok / done:.0%}, under {s.success_rate:.0%})", switches_ok=ok, switches=done))
    idle = state.idle_timeout
    if idle:
        gone = max(0.0, now - state.last_activity)
        if gone >= s.idle_warning * idle:
            at = state.last_activity + idle
            found.append(_insight(
                "idle", f"idle {gone / 60:.0f} of {idle / 60:.0f} minutes: will expire at "
                f"{_clock(at)}", idle_seconds=gone, idle_timeout=idle, expires_at=at))
    left = state.expires_at - now
    if left <= s.expiry_warning:
        found.append(_insight(
            "expiring", f"lifetime ends in {max(0.0, left) / 60:.0f} minutes, at "
            f"{_clock(state.expires_at)}: renew it to keep it", expires_at=state.expires_at))
    for name, w in sorted(state.workflows.items()):
        p95 = percentile(w["samples"], 0.95)
        if p95 is not None and p95 > s.slow_workflow:
            found.append(_insight(
                "slow_workflow", f"workflow {name} p95 {p95:.0f} s, over the "
                f"{s.slow_workflow:.0f} s threshold", workflow=name, p95=p95))
    return found


def workflow_report(workflows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The guide's performance analytics of `workflows` (name -> aggregate)."""
    report = {}
    for name, w in sorted(workflows.items()):
        n = w["count"]
        report[name] = {
            "total_executions": n,
            "success_rate": w["ok"] / n,
            "avg_execution_time": w["total"] / n,
            "min_execution_time": w["min"],
            "p50_execution_time": percentile(w["samples"], 0.5),
            "p95_execution_time": percentile(w["samples"], 0.95),
            "max_execution_time": w["max"],
            "total_time": w["total"],
            "performance_trend": ("improving" if n > 1 and w["last"] < w["first"]
                                  else "degrading" if n > 1 and w["last"] > w["first"]
                                  else "stable"),
        }
    return report


def transition_report(pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Transitions by from -> to pair: count, successes, success rate, mean duration."""
    out = {}
    for pair, p in sorted(pairs.items()):
        n = p["ok"] + p["failed"]
        out[pair] = {"count": n, "succeeded": p["ok"], "failed": p["failed"],
                     "success_rate": p["ok"] / n if n else None,
                     "avg_duration": p["total_duration"] / n if n else None}
    return {"total": sum(v["count"] for v in out.values()),
            "succeeded": sum(v["succeeded"] for v in out.values()), "pairs": out}


def default_channel(task_type: str | None, experience: str | None) -> str:
    """The guide's starting channel for a task type and experience level."""
    if task_type == "data_analysis" and experience == "expert":
        return "cli"
    if task_type == "ai_interaction":
        return "mcp"
    return FALLBACK


def recommend(state: SessionState, task_type: str | None, experience: str | None,
              attached: Collection[str], now: float, s: InsightSettings) -> dict[str, Any]:
    """The channel recommended for `task_type` now, with the rule and reason
    (see the module's docstring for the rules and their order)."""
    avoided: dict[str, float] = {}
    for t in state.transitions:
        if t.get("success") is False and now - t["completed_at"] <= s.avoid_for:
            avoided[t["to_channel"]] = t["completed_at"]
    default = default_channel(task_type, experience)
    current = state.context.get("current_channel")

    def pick(channel: str, rule: str, reason: str) -> dict[str, Any]:
        note = ""
        if avoided:
            note = "; avoided " + ", ".join(
                f"{c} (a switch to it failed at {_clock(at)})" for c, at in sorted(avoided.items()))
        return {"channel": channel, "rule": rule, "reason": reason + note,
                "default": default, "avoided": sorted(avoided)}

    _, _, by_channel = _switch_counts(state)
    for t in reversed(state.transitions):
        if t.get("success"):
            to = t["to_channel"]
            ok, done = by_channel.get(to, (0, 0))
            if done and ok / done >= s.success_rate and to not in avoided:
                return pick(to, "history", f"{ok} of {done} switches to {to} succeeded "
                            f"(at least {s.success_rate:.0%}), the last at "
                            f"{_clock(t['completed_at'])}")
            break
    live = [c for c in attached if c not in avoided]
    if live and default not in live:
        channel = current if current in live else sorted(live)[0]
        return pick(channel, "attached", f"attached on {channel} now; the default for "
                    f"{task_type or 'general'} tasks is {default}, where nobody is attached")
    if default not in avoided:
        return pick(default, "default", f"the default for {task_type or 'general'} tasks"
                    + (f" ({experience})" if experience else ""))
    for channel in (current, FALLBACK):
        if isinstance(channel, str) and channel not in avoided:
            return pick(channel, "fallback", f"the default {default} failed recently; "
                        f"{channel} is the {'current' if channel == current else 'fallback'}"
                        " channel")
    return pick(FALLBACK, "fallback", "every candidate failed recently; api is the guide's "
                "fallback")
