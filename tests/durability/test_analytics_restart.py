"""Analytics survive a restart: per session (replayed from the journal) and
daemon-wide (stored at shutdown), with the same figures before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nexus_protocol as p
from daemon_process import daemon_process
from raw_client import RawClient, connect_unix

GUIDE_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("session_created", {"channel": "api"}),
    ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 15.5}),
    ("channel_switch", {"from_channel": "api", "to_channel": "cli"}),
    ("workflow_executed", {"workflow_name": "data-validator", "execution_time": 8.2}),
    ("user_action", {"action": "export_results", "user_id": "test_user"}),
    ("channel_switch", {"from_channel": "cli", "to_channel": "mcp"}),
    ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 12.1}),
]
# Figures that move with the clock between two reads.
MOVING = {"duration_seconds", "duration_minutes", "last_activity_seconds_ago",
          "last_activity_minutes_ago", "time_on_channels"}


async def _report(c: RawClient, request: type[p.Message], **fields: Any) -> dict[str, Any]:
    reply = await c.call(request, **fields)
    assert isinstance(reply, p.Report), reply
    return reply.report


async def test_analytics_after_a_restart_equal_analytics_before(
        tmp_path: Path, socket_dir: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    async with daemon_process(data, socket, tmp_path / "first.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket, channel="api") as c:
            created = await c.call(p.Create, ttl=3600)
            assert isinstance(created, p.Created)
            sid = created.session_id
            for kind, event in GUIDE_EVENTS:
                written = await c.call(p.Track, session_id=sid, event_type=kind, data=event)
                assert isinstance(written, p.Written), written
            begun = await c.call(p.SwitchBegin, session_id=sid, to_channel="web")
            assert isinstance(begun, p.Switched)
            assert isinstance(await c.call(p.SwitchComplete, session_id=sid,
                                           transition_id=begun.transition_id, success=False),
                              p.Switched)
            summary = await _report(c, p.Summary, session_id=sid)
            daemon_wide = await _report(c, p.Analytics)
        assert await daemon.terminate() == 0, daemon.log_text()

    assert daemon_wide["total_channel_switches"] == 2
    assert daemon_wide["performance"]["data-processor"]["total_executions"] == 2
    async with daemon_process(data, socket, tmp_path / "second.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket, channel="api") as c:
            assert await _report(c, p.Analytics) == daemon_wide
            after = await _report(c, p.Summary, session_id=sid, token=created.token)
            assert {k: v for k, v in after.items() if k not in MOVING} == \
                {k: v for k, v in summary.items() if k not in MOVING}
            assert after["event_breakdown"]["workflow_executed"] == 3
        assert await daemon.terminate() == 0, daemon.log_text()
