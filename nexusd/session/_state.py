"""A session's state, and how each change applies to it.

Pure data and pure functions: the actor builds a `Change`, applies it here,
journals it, and fans it out; activation replays journaled changes through the
same `apply`, so a session restored from the store is identical to the one
that wrote it.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import msgpack
from nexus_protocol import Change

__all__ = ["EPSILON", "MAX_RUNS", "MAX_TRANSITIONS", "RUN_ENDS", "Entry", "SessionState",
           "count_label", "pair_label", "percentile"]

#: Deadlines count as reached this close to them: wall-clock times go through
#: float sums with trio's clock, which may land a rounding step short.
EPSILON: Final = 1e-6

#: Channel transitions kept per session (the oldest are dropped).
MAX_TRANSITIONS: Final = 100
#: Ended workflow runs kept per session (the oldest are dropped; runs in
#: flight are always kept).
MAX_RUNS: Final = 100
#: The events that end a run.
RUN_ENDS: Final = frozenset({"completed", "failed", "cancelled"})
#: Workflow-history items kept in the context.
MAX_HISTORY: Final = 1000
#: Distinct channel labels tracked per session, and per daemon-wide counter;
#: labels beyond them are counted as "other". Clients choose labels freely.
MAX_CHANNELS: Final = 64
MAX_LABELS: Final = 256
OTHER: Final = "other"
#: Durations kept per workflow for its percentiles (the most recent).
MAX_SAMPLES: Final = 100
#: The window of the per-session `track` rate, in seconds.
TRACK_WINDOW: Final = 60.0


def count_label(counter: dict[str, int], label: str) -> None:
    """Adds one to `counter[label]`, folding new labels into "other" once the
    counter holds MAX_LABELS of them."""
    if label not in counter and len(counter) >= MAX_LABELS:
        label = OTHER
    counter[label] = counter.get(label, 0) + 1


def pair_label(from_channel: str | None, to_channel: str) -> str:
    """The key of a from -> to channel pair in the transition aggregates."""
    return f"{from_channel}->{to_channel}"


def percentile(samples: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of `samples`, nearest rank; None if empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil, at least the first
    return ordered[int(rank) - 1]


def add_run(workflows: dict[str, dict[str, Any]], name: str, seconds: float,
            success: bool) -> None:
    """Adds one workflow run to `workflows` (name -> aggregate), folding new
    names into "other" beyond MAX_LABELS."""
    if name not in workflows and len(workflows) >= MAX_LABELS:
        name = OTHER
    w = workflows.get(name)
    if w is None:
        w = workflows[name] = {"count": 0, "ok": 0, "total": 0.0, "min": seconds,
                               "max": seconds, "first": seconds, "last": seconds,
                               "samples": []}
    w["count"] += 1
    w["ok"] += 1 if success else 0
    w["total"] += seconds
    w["min"] = min(w["min"], seconds)
    w["max"] = max(w["max"], seconds)
    w["last"] = seconds
    w["samples"].append(seconds)
    del w["samples"][:-MAX_SAMPLES]


def add_switch(pairs: dict[str, dict[str, Any]], transition: dict[str, Any]) -> None:
    """Adds one completed transition to `pairs` (from->to -> aggregate)."""
    key = pair_label(transition["from_channel"], transition["to_channel"])
    if key not in pairs and len(pairs) >= MAX_LABELS:
        key = OTHER
    p = pairs.setdefault(key, {"ok": 0, "failed": 0, "total_duration": 0.0})
    p["ok" if transition["success"] else "failed"] += 1
    p["total_duration"] += transition.get("duration") or 0.0


def tracked_run(value: dict[str, Any]) -> tuple[str, float] | None:
    """(workflow name, seconds) of a tracked `workflow_executed` event that
    names them, as the guide records them; None for any other event."""
    data = value.get("data")
    if value.get("event_type") != "workflow_executed" or not isinstance(data, dict):
        return None
    name, seconds = data.get("workflow_name"), data.get("execution_time", 0)
    if not isinstance(name, str) or type(seconds) not in (int, float) or seconds < 0:
        return None
    return name, float(seconds)


def ended_run(value: dict[str, Any]) -> tuple[str, float, bool] | None:
    """(workflow, seconds, succeeded) of a `run` record that ends a run
    with its duration; None for any other record."""
    if value.get("event") not in RUN_ENDS or "duration" not in value:
        return None
    return str(value["workflow"]), float(value["duration"]), value["event"] == "completed"


def tracked_switch(value: dict[str, Any]) -> str | None:
    """The `to_channel` of a tracked `channel_switch` event; None otherwise."""
    data = value.get("data")
    if value.get("event_type") != "channel_switch" or not isinstance(data, dict):
        return None
    to = data.get("to_channel")
    return to if isinstance(to, str) else None


def count_tracked(value: dict[str, Any], tracked: dict[str, int],
                  workflows: dict[str, dict[str, Any]], switched_to: dict[str, int]) -> None:
    """Counts a tracked event (the value of a `track` change) into the
    aggregates it feeds: by its type, and as a workflow run or a channel
    switch when it records one as the guide does."""
    count_label(tracked, value["event_type"])
    run = tracked_run(value)
    if run is not None:
        add_run(workflows, run[0], run[1], True)
    to = tracked_switch(value)
    if to is not None:
        count_label(switched_to, to)


@attrs.define
class Entry:
    value: Any
    version: int
    updated_at: float
    channel: str

    def to_wire(self) -> dict[str, Any]:
        return {"value": self.value, "version": self.version,
                "updated_at": self.updated_at, "channel": self.channel}


@attrs.define
class SessionState:
    """Everything a session holds. Owned by exactly one actor at a time."""

    session_id: str
    created_at: float
    created_channel: str
    ttl: float
    expires_at: float
    idle_timeout: float | None
    user_id: str | None = None
    metadata: dict[str, Any] = attrs.Factory(dict)
    seq: int = 0
    last_activity: float = 0.0
    entries: dict[str, Entry] = attrs.Factory(dict)
    # Last version of each deleted key, so that a key deleted and written again
    # never reuses a version a stale writer might hold.
    tombstones: dict[str, int] = attrs.Factory(dict)
    context: dict[str, Any] = attrs.Factory(dict)
    transitions: list[dict[str, Any]] = attrs.Factory(list)
    # channel -> {"first_seen", "last_seen", "changes", "reads"}
    channels: dict[str, dict[str, Any]] = attrs.Factory(dict)
    # op -> count of changes
    counters: dict[str, int] = attrs.Factory(dict)
    # Aggregates kept as changes apply (so replay gives the same figures):
    # tracked event type -> count
    tracked: dict[str, int] = attrs.Factory(dict)
    # channel -> seconds it was the current channel, up to `current_since`
    channel_time: dict[str, float] = attrs.Factory(dict)
    current_since: float = 0.0
    # "from->to" -> {"ok", "failed", "total_duration"} of completed switches
    switch_pairs: dict[str, dict[str, Any]] = attrs.Factory(dict)
    # channel -> switches to it (succeeded, and tracked `channel_switch`)
    switched_to: dict[str, int] = attrs.Factory(dict)
    # workflow name -> run aggregate (see `add_run`): runs the daemon ran,
    # and tracked `workflow_executed` events
    workflows: dict[str, dict[str, Any]] = attrs.Factory(dict)
    # The `track` rate window: its index (ts // TRACK_WINDOW) and count.
    track_window: int = -1
    track_count: int = 0
    # run_id -> the run's record, as its `run` changes left it (SPEC section 15)
    runs: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        if not self.last_activity:
            self.last_activity = self.created_at
        if not self.current_since:
            self.current_since = self.created_at
        if not self.context:
            self.context = {"current_channel": self.created_channel, "preferences": {},
                            "history": [], "metrics": {}, "updated_at": self.created_at}

    # ----------------------------------------------------------- deadlines

    @property
    def idle_expires_at(self) -> float | None:
        if self.idle_timeout is None:
            return None
        return self.last_activity + self.idle_timeout

    @property
    def deadline(self) -> float:
        idle = self.idle_expires_at
        return self.expires_at if idle is None else min(self.expires_at, idle)

    def expiry_reason(self, now: float) -> str | None:
        now += EPSILON
        if now >= self.expires_at:
            return "ttl"
        idle = self.idle_expires_at
        if idle is not None and now >= idle:
            return "idle"
        return None

    # ------------------------------------------------------------- reading

    def version_of(self, key: str) -> int:
        entry = self.entries.get(key)
        if entry is not None:
            return entry.version
        return self.tombstones.get(key, 0)

    def wire_entries(self) -> dict[str, Any]:
        return {k: e.to_wire() for k, e in self.entries.items()}

    def touch(self, channel: str, now: float, *, read: bool) -> None:
        """Records activity on `channel` that is not a change (a read, a sync)."""
        self.last_activity = max(self.last_activity, now)
        stats = self._channel(channel, now)
        if read:
            stats["reads"] += 1

    def _channel(self, channel: str, now: float) -> dict[str, Any]:
        if channel not in self.channels and len(self.channels) >= MAX_CHANNELS:
            channel = OTHER
        stats = self.channels.get(channel)
        if stats is None:
            stats = self.channels[channel] = {"first_seen": now, "last_seen": now,
                                              "changes": 0, "reads": 0}
        stats["last_seen"] = max(stats["last_seen"], now)
        return stats

    # ------------------------------------------------------------ changing

    def apply(self, change: Change) -> None:
        """Applies one change; `change.seq` must be the next seq.

        Raises:
            ValueError: the change is out of order or malformed.
        """
        if change.seq != self.seq + 1:
            raise ValueError(f"change {change.seq} applied at seq {self.seq}")
        op, ts, value = change.op, change.ts, change.value
        if op == "set":
            assert change.key is not None and change.version is not None
            self.entries[change.key] = Entry(value, change.version, ts, change.channel)
            self.tombstones.pop(change.key, None)
        elif op == "delete":
            assert change.key is not None and change.version is not None
            self.entries.pop(change.key, None)
            self.tombstones[change.key] = change.version
        elif op == "patch":
            versions = value["versions"]
            for key, v in value["set"].items():
                self.entries[key] = Entry(v, versions[key], ts, change.channel)
                self.tombstones.pop(key, None)
            for key in value["delete"]:
                self.entries.pop(key, None)
                self.tombstones[key] = versions[key]
        elif op == "context":
            if value.get("current_channel") != self.context.get("current_channel"):
                self._leave_channel(ts)
            self.context = value
        elif op == "switch_begin":
            self.transitions.append(value)
            del self.transitions[:-MAX_TRANSITIONS]
        elif op == "switch_complete":
            for i, t in enumerate(self.transitions):
                if t["transition_id"] == value["transition_id"]:
                    self.transitions[i] = value
            add_switch(self.switch_pairs, value)
            if value["success"]:
                self._leave_channel(ts)
                self.context = {**self.context, "current_channel": value["to_channel"],
                                "updated_at": ts}
                count_label(self.switched_to, value["to_channel"])
        elif op == "track":
            count_tracked(value, self.tracked, self.workflows, self.switched_to)
            window = int(ts // TRACK_WINDOW)
            if window != self.track_window:
                self.track_window, self.track_count = window, 0
            self.track_count += 1
        elif op == "renew":
            self.expires_at = value["expires_at"]
        elif op == "run":
            self._apply_run(value)
            ended = ended_run(value)
            if ended is not None:
                add_run(self.workflows, *ended)
        else:
            raise ValueError(f"unknown change op {op!r}")
        self.seq = change.seq
        self.last_activity = max(self.last_activity, ts)
        self.counters[op] = self.counters.get(op, 0) + 1
        self._channel(change.channel, ts)["changes"] += 1

    def _leave_channel(self, ts: float) -> None:
        """The current channel stops being current at `ts`: its time counts."""
        current = str(self.context.get("current_channel"))
        if current not in self.channel_time and len(self.channel_time) >= MAX_CHANNELS:
            current = OTHER
        self.channel_time[current] = (self.channel_time.get(current, 0.0)
                                      + max(0.0, ts - self.current_since))
        self.current_since = max(self.current_since, ts)

    def time_on_channels(self, now: float) -> dict[str, float]:
        """Seconds each channel has been the session's current one, to `now`."""
        times = dict(self.channel_time)
        current = str(self.context.get("current_channel"))
        times[current] = times.get(current, 0.0) + max(0.0, now - self.current_since)
        return times

    def _apply_run(self, value: dict[str, Any]) -> None:
        event = value["event"]
        run = self.runs.get(value["run_id"])
        if run is None:
            run = self.runs[value["run_id"]] = {
                "run_id": value["run_id"], "workflow": value["workflow"],
                "status": "running", "attempt": 0, "step": 0, "total": 0, "progress": 0.0,
                "started_at": value["ts"], "ended_at": None}
        for key in ("inputs", "idempotency_key", "attempt", "step", "total", "progress",
                    "message", "result", "error", "worker", "duration"):
            if key in value:
                run[key] = value[key]
        if event in RUN_ENDS:
            run["status"] = event
            run["ended_at"] = value["ts"]
            ended = [k for k, r in self.runs.items() if r["status"] in RUN_ENDS]
            for k in ended[:-MAX_RUNS]:
                del self.runs[k]

    def runs_in_flight(self) -> list[dict[str, Any]]:
        """The runs that have not ended, oldest first."""
        return [r for r in self.runs.values() if r["status"] not in RUN_ENDS]

    # ------------------------------------------------------------- storing

    def to_snapshot(self) -> bytes:
        doc = attrs.asdict(self, recurse=False)
        doc["entries"] = {k: [e.value, e.version, e.updated_at, e.channel]
                          for k, e in self.entries.items()}
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_snapshot(cls, data: bytes) -> SessionState:
        doc = msgpack.unpackb(data, raw=False)
        doc["entries"] = {k: Entry(*e) for k, e in doc["entries"].items()}
        return cls(**doc)

    # ----------------------------------------------------------- analytics

    def event_breakdown(self) -> dict[str, int]:
        """Events by type: each change op, with tracked events by their own type."""
        breakdown = {op: n for op, n in self.counters.items() if op != "track"}
        for kind, n in self.tracked.items():
            breakdown[kind] = breakdown.get(kind, 0) + n
        return breakdown

    def summary(self, now: float) -> dict[str, Any]:
        """The guide's session summary: duration, events, channels, transitions,
        workflows (from tracked `workflow_executed` events)."""
        total = sum(self.counters.values())
        recent = self.transitions[-5:]
        done = [t for t in recent if t.get("completed_at") is not None]
        ok = [t for t in done if t.get("success")]
        run_time = sum(w["total"] for w in self.workflows.values())
        runs = sum(w["count"] for w in self.workflows.values())
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "created_channel": self.created_channel,
            "user_id": self.user_id,
            "duration_seconds": now - self.created_at,
            "duration_minutes": (now - self.created_at) / 60,
            "seq": self.seq,
            "keys": len(self.entries),
            "total_events": total,
            "event_breakdown": self.event_breakdown(),
            "channels_used": sorted(self.channels),
            # The guide's `channels_used`: the channels switched to.
            "channels_switched_to": sorted(self.switched_to),
            "channel_activity": {c: dict(s) for c, s in self.channels.items()},
            "time_on_channels": self.time_on_channels(now),
            "current_channel": self.context.get("current_channel"),
            "transitions": len(self.transitions),
            "preferred_channels": sorted({t["to_channel"] for t in ok}),
            "last_successful_channel": ok[-1]["to_channel"] if ok else None,
            "transition_success_rate": len(ok) / len(done) if done else None,
            "workflows_executed": sorted(self.workflows),
            "total_execution_time": run_time,
            # The guide's figure: total time over the workflows run (not runs).
            "avg_execution_time": run_time / len(self.workflows) if self.workflows else 0,
            "avg_execution_time_per_run": run_time / runs if runs else 0,
            "activity_level": "high" if total > 10 else "normal",
            "last_activity_seconds_ago": max(0.0, now - self.last_activity),
            "last_activity_minutes_ago": max(0.0, now - self.last_activity) / 60,
            "expires_at": self.expires_at,
            "idle_expires_at": self.idle_expires_at,
        }
