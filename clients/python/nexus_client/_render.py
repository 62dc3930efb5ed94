"""Text the CLI prints: JSON encoding, times, durations, events, reports.

Pure functions of their arguments (the current time is passed in), so tests
can check exact output.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs
from nexus_protocol import (
    Change,
    Expired,
    Invalidated,
    Message,
    Presence,
    Progress,
    Result,
    Snapshot,
)

from ._types import SessionState

__all__ = [
    "channel_chart",
    "format_duration",
    "format_event",
    "format_report",
    "format_state",
    "format_time",
    "parse_duration",
    "parse_value",
    "to_json",
]

_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smhdw]?)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in `text`: ``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1w`` or a
    sum like ``1h30m``.

    Raises:
        ValueError: not a duration, or not positive.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (use e.g. 90s, 30m, 2h, 1d)")
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return total


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """`text` as JSON if it is valid JSON, else the string itself.

    ``NaN`` and ``Infinity`` (which Python's JSON reader would accept) stay
    strings: they are not JSON.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
    if attrs.has(type(obj)):
        return attrs.asdict(obj, recurse=False)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def to_json(value: Any, *, indent: int | None = None) -> str:
    """JSON text; bytes become ``{"$bytes": "<base64>"}``."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=indent,
                      sort_keys=indent is not None)


def event_to_json(event: Message) -> str:
    """One event as one line of JSON: ``{"type": <tag>, ...fields}``."""
    fields = attrs.asdict(cast(Any, event), recurse=False)
    return to_json({"type": event.TAG, **fields})


def format_duration(seconds: float) -> str:
    """``1d 2h``, ``2h 5m``, ``5m 3s``, ``42s``, ``0.25s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.2g}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts[:2]) or "0s"


def format_time(ts: float | None, now: float | None = None) -> str:
    """Local time, plus how far from `now` when given: ``2024-05-01 12:00:00 (in 29m)``."""
    if ts is None:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    if now is None:
        return text
    delta = ts - now
    rel = f"in {format_duration(delta)}" if delta >= 0 else f"{format_duration(-delta)} ago"
    return f"{text} ({rel})"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _short(value: Any, limit: int = 200) -> str:
    text = to_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_event(event: Message) -> str:
    """One human-readable line for a watched event."""
    if isinstance(event, Change):
        return f"{_clock(event.ts)} #{event.seq} {_describe_change(event)}  " \
               f"[{event.channel} {event.writer}]"
    if isinstance(event, Snapshot):
        keys = ", ".join(sorted(event.entries)) or "no keys"
        line = f"#{event.seq} snapshot: {len(event.entries)} keys ({keys})"
        if not event.recovered:
            line += "; missed changes were beyond the daemon's history: state replaced"
        return line
    if isinstance(event, Presence):
        verb = {"join": "joined", "leave": "left"}.get(event.action, event.action)
        who = f" ({event.client})" if event.client else ""
        return f"presence: {event.connection_id}{who} {verb} on {event.channel}"
    if isinstance(event, Expired):
        return f"session {event.session_id} expired ({event.reason})"
    if isinstance(event, Invalidated):
        why = f" ({event.reason})" if event.reason else ""
        return f"session {event.session_id} invalidated{why}"
    if isinstance(event, Progress):
        step = f" {event.step}" if event.step else ""
        return f"run {event.run_id}: {event.progress:g}%{step}"
    if isinstance(event, Result):
        return f"run {event.run_id} {event.status}: {_short(event.result)}"
    return event_to_json(event)


def _describe_change(c: Change) -> str:
    value = c.value
    if c.op == "set":
        return f"set {c.key} = {_short(value)} (v{c.version})"
    if c.op == "delete":
        return f"delete {c.key} (v{c.version})"
    if c.op == "patch" and isinstance(value, Mapping):
        parts = [f"{k}={_short(v, 60)}" for k, v in (value.get("set") or {}).items()]
        parts += [f"-{k}" for k in value.get("delete") or []]
        return "patch " + ", ".join(parts)
    if c.op == "context" and isinstance(value, Mapping):
        return f"context: current channel {value.get('current_channel')}"
    if c.op == "switch_begin" and isinstance(value, Mapping):
        reason = f" ({value['reason']})" if value.get("reason") else ""
        return (f"switch {value.get('from_channel')} -> {value.get('to_channel')}{reason} "
                f"[{value.get('transition_id')}]")
    if c.op == "switch_complete" and isinstance(value, Mapping):
        outcome = "done" if value.get("success") else "failed"
        return f"switch to {value.get('to_channel')} {outcome} [{value.get('transition_id')}]"
    if c.op == "renew" and isinstance(value, Mapping) and "expires_at" in value:
        return f"renew: expires {format_time(value['expires_at'])}"
    key = f" {c.key}" if c.key else ""
    return f"{c.op}{key} {_short(value)}" if value is not None else f"{c.op}{key}"


def format_report(report: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Nested ``key: value`` lines. Numbers named like durations (``uptime``,
    ``*seconds*``) read as durations, those named like times (``*_at``,
    ``*_seen``) as local times."""
    pad = "  " * indent
    lines: list[str] = []
    for key in report:
        value = report[key]
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(format_report(value, indent + 1))
        elif _is_number(value) and ("uptime" in key or "seconds" in key):
            ago = " ago" if key.endswith("_ago") else ""
            lines.append(f"{pad}{key}: {format_duration(value)}{ago}")
        elif _is_number(value) and key.endswith(_TIME_SUFFIXES) and value > 1e8:
            lines.append(f"{pad}{key}: {format_time(value)}")
        elif isinstance(value, str):
            lines.append(f"{pad}{key}: {value}")
        else:
            lines.append(f"{pad}{key}: {_short(value)}")
    return lines


_TIME_SUFFIXES: Final = ("_at", "_seen", "_time")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_state(state: SessionState, now: float) -> list[str]:
    """`nexus session show`: deadlines, context, then the data entries."""
    lines = [
        f"session   {state.session_id}",
        f"seq       {state.seq}",
        f"created   {format_time(state.created_at, now)}",
        f"expires   {format_time(state.expires_at, now)}",
    ]
    if state.idle_expires_at is not None:
        lines.append(f"idle      {format_time(state.idle_expires_at, now)}")
    ctx = state.context
    lines.append("context:")
    if ctx:
        lines.extend(format_report(ctx, 1))
    else:
        lines.append("  (empty)")
    lines.append(f"data ({len(state.entries)} keys):")
    for key in sorted(state.entries):
        e = state.entries[key]
        meta = f"v{e.version}"
        if e.channel:
            meta += f", {e.channel}"
        if e.updated_at is not None:
            meta += f", {format_time(e.updated_at)}"
        lines.append(f"  {key} = {_short(e.value)}  ({meta})")
    return lines


def channel_chart(distribution: Mapping[str, Mapping[str, Any]], width: int = 30) -> list[str]:
    """A text bar chart of the `analytics` channel distribution
    (``{channel: {"count", "percentage"}}``), most used first."""
    if not distribution:
        return ["channel distribution: no channel switches yet"]
    rows = sorted(distribution.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
    total = sum(v["count"] for _, v in rows)
    most = rows[0][1]["count"]
    name_width = max(len(c) for c, _ in rows)
    lines = [f"channel distribution ({total} switches)"]
    for channel, v in rows:
        bar = "#" * max(1, round(width * v["count"] / most))
        lines.append(f"  {channel:<{name_width}}  {bar:<{width}}  {v['count']:>5}  "
                     f"{v['percentage']:5.1f}%")
    return lines
