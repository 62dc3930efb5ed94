"""``nexus track``, ``insights``, ``recommend`` and ``analytics`` (with its
channel chart) against a real daemon."""

from __future__ import annotations

import json

from nexus_client import Nexus

from ._procs import Cli, DaemonProcess

WAIT = 10.0


def test_track_insights_recommend_and_the_analytics_chart(cli: Cli,
                                                          daemon: DaemonProcess) -> None:
    with Nexus(str(daemon.socket), save_credentials=True, timeout=WAIT) as app:
        sid = app.create_session(channel="api")
    tracked = cli.run("track", sid, "channel_switch", '{"to_channel": "cli"}')
    assert (tracked.code, tracked.out) == (0, f"tracked channel_switch in {sid} (seq 1)\n")
    for _ in range(10):
        assert cli.run("track", sid, "user_action", '{"action": "export"}').code == 0

    insights = cli.run("insights", sid)
    assert insights.code == 0, insights.err
    assert insights.out == "- 11 events (over 10): a very engaged session  [high_activity]\n"

    pick = cli.run("recommend", sid, "--task", "ai_interaction", "--json")
    assert pick.code == 0, pick.err
    assert json.loads(pick.out)["channel"] == "mcp"
    plain = cli.run("recommend", sid, "--task", "data_analysis", "--experience", "expert")
    assert plain.out == "cli: the default for data_analysis tasks (expert) [default]\n"

    charted = cli.run("analytics", "--chart")
    assert charted.code == 0, charted.err
    lines = charted.out.splitlines()
    assert lines[0].startswith("channel distribution (")
    assert any(line.split()[:1] == ["cli"] and "#" in line for line in lines[1:4])
    assert "channel distribution (" not in cli.run("analytics").out  # not a terminal

    bad = cli.run("track", sid, "user_action", "not json")
    assert bad.code == 2 and "expected a JSON object" in bad.error_line
