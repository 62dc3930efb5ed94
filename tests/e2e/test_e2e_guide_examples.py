"""The guide's analytics and best-practice snippets (examples/guide_*.py, the
guide's code with only the imports changed) run against a fresh daemon of
their own and print the guide's figures."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._procs import CLI_TIMEOUT, DaemonProcess, clean_environ

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, daemon: DaemonProcess, home: Path) -> dict[str, Any]:
    """Runs an example; returns what it printed, by label, as Python values."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
        timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
        env={**clean_environ(home), "NEXUS_SOCKET": str(daemon.socket)})
    assert done.returncode == 0, done.stderr
    printed = dict(re.findall(r"^([A-Za-z ]+): (.*)$", done.stdout, re.MULTILINE))
    return {label: (ast.literal_eval(text) if text[:1] in "{[" else text)
            for label, text in printed.items()}


def test_the_guides_analytics_example_prints_the_guides_figures(
        daemon: DaemonProcess, home: Path) -> None:
    out = _run("guide_analytics.py", daemon, home)
    summary = out["Session Summary"]
    assert summary["total_events"] == 7
    assert summary["event_breakdown"] == {"session_created": 1, "workflow_executed": 3,
                                          "channel_switch": 2, "user_action": 1}
    assert summary["channels_switched_to"] == ["cli", "mcp"]  # the guide's channels_used
    assert summary["workflows_executed"] == ["data-processor", "data-validator"]
    assert round(summary["total_execution_time"], 6) == 35.8
    assert round(summary["avg_execution_time"], 6) == 17.9
    assert summary["activity_level"] == "normal"
    assert out["Channel Analytics"] == {
        "total_channel_switches": 2,
        "channel_distribution": {"cli": {"count": 1, "percentage": 50.0},
                                 "mcp": {"count": 1, "percentage": 50.0}},
        "most_popular_channel": "cli"}
    processor = out["Performance Analytics"]["data-processor"]
    assert processor["total_executions"] == 2
    assert round(processor["avg_execution_time"], 6) == 13.8
    assert (processor["min_execution_time"], processor["max_execution_time"]) == (12.1, 15.5)
    assert processor["performance_trend"] == "improving"
    assert out["Performance Analytics"]["data-validator"]["performance_trend"] == "stable"
    assert isinstance(out["Insights"], list)


def test_the_guides_best_practices_example_runs(daemon: DaemonProcess, home: Path) -> None:
    out = _run("guide_best_practices.py", daemon, home)
    assert re.fullmatch(r"[0-9a-f]{32}", out["Optimal session created"])
    assert out["Performance optimization"]["performance_improvement"] is None
    plan = out["Error handling strategy"]
    assert (plan["action"], plan["preserve_context"]) == ("create_new_session", True)
