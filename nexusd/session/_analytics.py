"""Daemon-wide analytics: channel usage, transitions, tracked events and
workflow runs across every session, kept as sessions are created and changes
commit (never a scan per query), and kept durable by `keep`.

Durability is a snapshot, not a journal: `keep` stores the aggregates in the
store every `every` seconds when they changed, and the daemon stores them
once more at shutdown, after the last commit. A clean restart gives the same
figures; a crash loses at most the last `every` seconds of daemon-wide
counts. Updating a counter row in every group commit would make each commit
of every session write one more row, on the path that acknowledges writes,
for figures that are statistics; the per-session figures (which insights and
recommendations read) need no snapshot: they live in each session's state
and replay from its journal exactly.

The aggregates hold counts keyed by labels clients choose (channels, event
types, workflow names, each bounded by `MAX_LABELS`), never session data, so
an expired session's values stay shredded.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Final

import msgpack
import trio
from nexus_protocol import Change

from ..store import Store
from ._insights import InsightSettings, transition_report, workflow_report
from ._state import (
    add_run,
    add_switch,
    count_label,
    count_tracked,
    ended_run,
    percentile,
)

__all__ = ["ChannelAnalytics"]

log = logging.getLogger("nexusd.analytics")

#: The version of the stored document; a newer one is not read.
DOC_VERSION: Final = 1


class ChannelAnalytics:
    """The daemon-wide aggregates; `report()` is the `analytics` report."""

    def __init__(self, insight: InsightSettings | None = None) -> None:
        self.insight = insight or InsightSettings()
        # channel label -> count; each bounded by `count_label`.
        self.created_on: Counter[str] = Counter()
        self.changes_on: Counter[str] = Counter()
        self.switches_to: Counter[str] = Counter()
        self.tracked: Counter[str] = Counter()
        self.pairs: dict[str, dict[str, Any]] = {}
        self.workflows: dict[str, dict[str, Any]] = {}
        self.version = 0  # counts updates, so that `keep` stores only changes
        self._saved = 0

    def session_created(self, channel: str) -> None:
        count_label(self.created_on, channel)
        self.version += 1

    def committed(self, change: Change) -> None:
        """Counts a change once it is durable."""
        count_label(self.changes_on, change.channel)
        op, value = change.op, change.value
        if op == "switch_complete":
            add_switch(self.pairs, value)
            if value["success"]:
                count_label(self.switches_to, value["to_channel"])
        elif op == "track":
            count_tracked(value, self.tracked, self.workflows, self.switches_to)
        elif op == "run":
            ended = ended_run(value)
            if ended is not None:
                add_run(self.workflows, *ended)
        self.version += 1

    # ------------------------------------------------------------- storing

    def to_doc(self) -> bytes:
        doc = {"v": DOC_VERSION, "created_on": dict(self.created_on),
               "changes_on": dict(self.changes_on), "switches_to": dict(self.switches_to),
               "tracked": dict(self.tracked), "pairs": self.pairs,
               "workflows": self.workflows}
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]

    def restore(self, data: bytes | None) -> None:
        """Takes up the aggregates stored by `to_doc` (None: none stored)."""
        if data is None:
            return
        doc = msgpack.unpackb(data, raw=False)
        if doc.get("v") != DOC_VERSION:
            log.warning("stored analytics have version %r; starting from zero", doc.get("v"))
            return
        self.created_on = Counter(doc["created_on"])
        self.changes_on = Counter(doc["changes_on"])
        self.switches_to = Counter(doc["switches_to"])
        self.tracked = Counter(doc["tracked"])
        self.pairs = doc["pairs"]
        self.workflows = doc["workflows"]

    async def save(self, store: Store) -> None:
        """Stores the aggregates now."""
        version = self.version
        await store.save_analytics(self.to_doc())
        self._saved = version

    async def keep(self, store: Store, every: float, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stores the aggregates every `every` seconds when they changed; a
        failed store is logged and tried again next time."""
        self._saved = self.version
        task_status.started()
        while True:
            await trio.sleep(every)
            if self.version != self._saved:
                try:
                    await self.save(store)
                except Exception:
                    log.exception("storing the daemon-wide analytics failed")

    # ------------------------------------------------------------- reports

    def report(self) -> dict[str, Any]:
        """The `analytics` report: the guide's channel analytics, then
        transitions, tracked events, workflow performance and insights."""
        switches = sum(self.switches_to.values())
        return {
            "sessions_created_by_channel": dict(self.created_on),
            "changes_by_channel": dict(self.changes_on),
            "channel_switches": switches,
            "total_channel_switches": switches,
            "channel_distribution": {
                c: {"count": n, "percentage": 100.0 * n / switches}
                for c, n in self.switches_to.items()},
            "most_popular_channel": (self.switches_to.most_common(1)[0][0]
                                     if switches else None),
            "events_by_type": dict(self.tracked),
            "transition_analytics": transition_report(self.pairs),
            "performance": workflow_report(self.workflows),
            "insights": self.insights(),
        }

    def insights(self) -> list[dict[str, Any]]:
        """Daemon-wide insights, each saying what it saw."""
        s = self.insight
        found = []
        switches = sum(self.switches_to.values())
        if switches:
            channel, n = self.switches_to.most_common(1)[0]
            found.append({"rule": "most_popular_channel",
                          "message": f"most popular channel: {channel} ({n} of {switches} "
                                     f"switches, {100 * n / switches:.0f}%)",
                          "figures": {"channel": channel, "switches": n, "of": switches}})
        for name, w in sorted(self.workflows.items()):
            p95 = percentile(w["samples"], 0.95)
            if p95 is not None and p95 > s.slow_workflow:
                found.append({"rule": "slow_workflow",
                              "message": f"workflow {name} p95 {p95:.0f} s, over the "
                                         f"{s.slow_workflow:.0f} s threshold",
                              "figures": {"workflow": name, "p95": p95}})
        for pair, p in sorted(self.pairs.items()):
            n = p["ok"] + p["failed"]
            if n and p["ok"] / n < s.success_rate:
                found.append({"rule": "failing_switches",
                              "message": f"switches {pair}: {p['ok']} of {n} succeeded "
                                         f"(under {s.success_rate:.0%})",
                              "figures": {"pair": pair, "succeeded": p["ok"], "of": n}})
        return found
