"""Channel usage across every session since the daemon started, kept as
sessions are created and changes commit (never a scan per query)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nexus_protocol import Change

from ._state import count_label

__all__ = ["ChannelAnalytics"]


class ChannelAnalytics:
    def __init__(self) -> None:
        # channel label -> count; each bounded by `count_label`.
        self.created_on: Counter[str] = Counter()
        self.changes_on: Counter[str] = Counter()
        self.switches_to: Counter[str] = Counter()

    def session_created(self, channel: str) -> None:
        count_label(self.created_on, channel)

    def committed(self, change: Change) -> None:
        """Counts a change once it is durable."""
        count_label(self.changes_on, change.channel)
        if change.op == "switch_complete" and change.value["success"]:
            count_label(self.switches_to, change.value["to_channel"])

    def report(self) -> dict[str, Any]:
        """The `analytics` report."""
        switches = sum(self.switches_to.values())
        return {
            "sessions_created_by_channel": dict(self.created_on),
            "changes_by_channel": dict(self.changes_on),
            "channel_switches": switches,
            "channel_distribution": {
                c: {"count": n, "percentage": 100.0 * n / switches}
                for c, n in self.switches_to.items()},
            "most_popular_channel": (self.switches_to.most_common(1)[0][0]
                                     if switches else None),
        }
