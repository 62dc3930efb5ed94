"""The Session Management Guide's analytics example, run against nexusd.

Only the imports differ from the guide: `Nexus` comes from `nexus_client`, and
`SessionAnalytics` from `nexus_client.guide` instead of the guide's in-memory
class, so the figures are the daemon's (durable, per session and daemon-wide).
Start a daemon and point $NEXUS_SOCKET at it (or use its default socket)::

    nexusd serve --socket /tmp/nx/n.sock --data /tmp/nx/data &
    NEXUS_SOCKET=/tmp/nx/n.sock python examples/guide_analytics.py

Channel and performance analytics are daemon-wide: on a fresh daemon they are
the guide's figures (2 switches, cli and mcp at 50% each; data-processor
2 runs, 13.8 s on average, improving).
"""

import time

from nexus_client import Nexus
from nexus_client.guide import SessionAnalytics

app = Nexus()

# Usage example
analytics = SessionAnalytics(app)

# Test session analytics
def test_session_analytics():
    """Test comprehensive session analytics"""

    session_id = app.create_session(channel="api")

    # Simulate session events
    events = [
        ("session_created", {"channel": "api"}),
        ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 15.5}),
        ("channel_switch", {"from_channel": "api", "to_channel": "cli"}),
        ("workflow_executed", {"workflow_name": "data-validator", "execution_time": 8.2}),
        ("user_action", {"action": "export_results", "user_id": "test_user"}),
        ("channel_switch", {"from_channel": "cli", "to_channel": "mcp"}),
        ("workflow_executed", {"workflow_name": "data-processor", "execution_time": 12.1})
    ]

    for event_type, event_data in events:
        analytics.track_session_event(session_id, event_type, event_data)
        time.sleep(0.1)  # Small delay between events

    # Get analytics
    session_summary = analytics.get_session_summary(session_id)
    channel_analytics = analytics.get_channel_analytics()
    performance_analytics = analytics.get_performance_analytics()
    insights = analytics.generate_insights(session_id)

    print(f"Session Summary: {session_summary}")
    print(f"Channel Analytics: {channel_analytics}")
    print(f"Performance Analytics: {performance_analytics}")
    print(f"Insights: {insights}")

    return session_id

analytics_session = test_session_analytics()
app.close()
