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

__all__ = ["EPSILON", "MAX_TRANSITIONS", "Entry", "SessionState", "count_label"]

#: Deadlines count as reached this close to them: wall-clock times go through
#: float sums with trio's clock, which may land a rounding step short.
EPSILON: Final = 1e-6

#: Channel transitions kept per session (the oldest are dropped).
MAX_TRANSITIONS: Final = 100
#: Workflow-history items kept in the context.
MAX_HISTORY: Final = 1000
#: Distinct channel labels tracked per session, and per daemon-wide counter;
#: labels beyond them are counted as "other". Clients choose labels freely.
MAX_CHANNELS: Final = 64
MAX_LABELS: Final = 256
OTHER: Final = "other"


def count_label(counter: dict[str, int], label: str) -> None:
    """Adds one to `counter[label]`, folding new labels into "other" once the
    counter holds MAX_LABELS of them."""
    if label not in counter and len(counter) >= MAX_LABELS:
        label = OTHER
    counter[label] = counter.get(label, 0) + 1


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

    def __attrs_post_init__(self) -> None:
        if not self.last_activity:
            self.last_activity = self.created_at
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
            self.context = value
        elif op == "switch_begin":
            self.transitions.append(value)
            del self.transitions[:-MAX_TRANSITIONS]
        elif op == "switch_complete":
            for i, t in enumerate(self.transitions):
                if t["transition_id"] == value["transition_id"]:
                    self.transitions[i] = value
            if value["success"]:
                self.context = {**self.context, "current_channel": value["to_channel"],
                                "updated_at": ts}
        elif op == "renew":
            self.expires_at = value["expires_at"]
        else:
            raise ValueError(f"unknown change op {op!r}")
        self.seq = change.seq
        self.last_activity = max(self.last_activity, ts)
        self.counters[op] = self.counters.get(op, 0) + 1
        self._channel(change.channel, ts)["changes"] += 1

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

    def summary(self, now: float) -> dict[str, Any]:
        """The guide's session summary: duration, events, channels, transitions."""
        total = sum(self.counters.values())
        recent = self.transitions[-5:]
        done = [t for t in recent if t.get("completed_at") is not None]
        ok = [t for t in done if t.get("success")]
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "created_channel": self.created_channel,
            "user_id": self.user_id,
            "duration_seconds": now - self.created_at,
            "seq": self.seq,
            "keys": len(self.entries),
            "total_events": total,
            "event_breakdown": dict(self.counters),
            "channels_used": sorted(self.channels),
            "channel_activity": {c: dict(s) for c, s in self.channels.items()},
            "current_channel": self.context.get("current_channel"),
            "transitions": len(self.transitions),
            "preferred_channels": sorted({t["to_channel"] for t in ok}),
            "last_successful_channel": ok[-1]["to_channel"] if ok else None,
            "transition_success_rate": len(ok) / len(done) if done else None,
            "activity_level": "high" if total > 10 else "normal",
            "last_activity_seconds_ago": max(0.0, now - self.last_activity),
            "expires_at": self.expires_at,
            "idle_expires_at": self.idle_expires_at,
        }
