"""The tools: one row per call of the Session Management Guide.

Each `Tool` names its input schema (JSON Schema, checked by the SDK's
client and again here) and how its arguments become one protocol request.
The writer channel of everything done through MCP is ``mcp``: the channel
of the connection (the daemon's principal, the bridge's client), and the
channel these requests name where they name one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from nexus_protocol import (
    Create,
    Delete,
    Get,
    Insights,
    Message,
    Patch,
    Recommend,
    Renew,
    Run,
    Set,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Sync,
    Track,
    UpdateContext,
)

__all__ = ["CHANNEL", "TOOLS", "Tool"]

#: The channel label of every change made over MCP.
CHANNEL: Final = "mcp"

Args = Mapping[str, Any]

_SESSION: Final = {"session_id": {"type": "string", "description": "The session's id."},
                   "token": {"type": "string", "description":
                             "The session's token, needed once per MCP session unless the "
                             "server already holds it (bridge credentials, HTTP bearer)."}}
_KEY: Final = {"type": "string", "minLength": 1, "description": "The data key."}
_VERSION: Final = {"type": "integer", "minimum": 0, "description":
                   "Compare-and-set: the version last read (0: the key must not exist); "
                   "a mismatch changes nothing and reports a conflict."}
_OBJECT: Final = {"type": "object", "additionalProperties": True}


@attrs.frozen
class Tool:
    """One tool: `request(args, token)` is the protocol request it makes
    (`token`: the one the binding holds for the session, if any)."""

    name: str
    description: str
    properties: Mapping[str, Any]
    required: tuple[str, ...]
    request: Callable[[Args, str | None], Message]
    session: bool = True

    @property
    def input_schema(self) -> dict[str, Any]:
        properties = {**_SESSION, **self.properties} if self.session else dict(self.properties)
        required = ["session_id", *self.required] if self.session else list(self.required)
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}


def _create(a: Args, token: str | None) -> Message:
    return Create(id=0, channel=a.get("channel") or CHANNEL, ttl=a.get("ttl"),
                  idle_timeout=a.get("idle_timeout"), user_id=a.get("user_id"),
                  metadata=a.get("metadata"))


def _sid(a: Args) -> str:
    return str(a["session_id"])


TOOLS: Final[tuple[Tool, ...]] = (
    Tool("create_session",
         "Create a session. Returns its session_id; this MCP session keeps its token.",
         {"channel": {"type": "string", "description": "Channel it starts on (default mcp)."},
          "ttl": {"type": "number", "exclusiveMinimum": 0, "description": "Lifetime, seconds."},
          "idle_timeout": {"type": "number", "exclusiveMinimum": 0,
                           "description": "Expire after this many idle seconds."},
          "user_id": {"type": "string"}, "metadata": _OBJECT},
         (), _create, session=False),
    Tool("sync_session",
         "The session as channel mcp sees it: data with versions, context (current channel, "
         "preferences, history, metrics), seq and deadlines. Records mcp's activity.",
         {}, (), lambda a, t: Sync(id=0, session_id=_sid(a), channel=CHANNEL, token=t)),
    Tool("get_session_data",
         "Read one key (value, version, writer channel), or every entry without key.",
         {"key": _KEY}, (),
         lambda a, t: Get(id=0, session_id=_sid(a), key=a.get("key"), token=t)),
    Tool("set_session_data",
         "Write one key to any JSON value. Pass expected_version to avoid overwriting "
         "another channel's write.",
         {"key": _KEY, "value": {"description": "Any JSON value."},
          "expected_version": _VERSION}, ("key", "value"),
         lambda a, t: Set(id=0, session_id=_sid(a), key=a["key"], value=a["value"],
                          expect=a.get("expected_version"), token=t)),
    Tool("delete_session_data", "Delete one key (optionally only at expected_version).",
         {"key": _KEY, "expected_version": _VERSION}, ("key",),
         lambda a, t: Delete(id=0, session_id=_sid(a), key=a["key"],
                             expect=a.get("expected_version"), token=t)),
    Tool("patch_session_data",
         "Set and delete several keys as one change, all or nothing; expect maps keys to "
         "the versions last read.",
         {"set": _OBJECT, "delete": {"type": "array", "items": {"type": "string"}},
          "expect": {"type": "object", "additionalProperties": {"type": "integer",
                                                                 "minimum": 0}}}, (),
         lambda a, t: Patch(id=0, session_id=_sid(a), set=dict(a.get("set") or {}),
                            delete=list(a.get("delete") or []), expect=a.get("expect"),
                            token=t)),
    Tool("update_session_context",
         "Replace the parts of the session context given, and make mcp the current channel.",
         {"preferences": _OBJECT, "history": {"type": "array"}, "metrics": _OBJECT}, (),
         lambda a, t: UpdateContext(id=0, session_id=_sid(a), channel=CHANNEL,
                                    preferences=a.get("preferences"), history=a.get("history"),
                                    metrics=a.get("metrics"), token=t)),
    Tool("initiate_channel_switch",
         "Begin moving the session to another channel; returns a transition_id for "
         "complete_channel_switch.",
         {"to_channel": {"type": "string"},
          "from_channel": {"type": "string",
                           "description": "The current channel, checked (conflict if not)."},
          "reason": {"type": "string"}, "context": _OBJECT}, ("to_channel",),
         lambda a, t: SwitchBegin(id=0, session_id=_sid(a), to_channel=a["to_channel"],
                                  from_channel=a.get("from_channel"), reason=a.get("reason"),
                                  context=a.get("context"), token=t)),
    Tool("complete_channel_switch",
         "Complete a transition; on success its target becomes the current channel.",
         {"transition_id": {"type": "string"}, "success": {"type": "boolean", "default": True}},
         ("transition_id",),
         lambda a, t: SwitchComplete(id=0, session_id=_sid(a), transition_id=a["transition_id"],
                                     success=a.get("success", True), token=t)),
    Tool("renew_session", "Extend the session's lifetime to now + ttl (default: its ttl).",
         {"ttl": {"type": "number", "exclusiveMinimum": 0}}, (),
         lambda a, t: Renew(id=0, session_id=_sid(a), ttl=a.get("ttl"), token=t)),
    Tool("run_workflow",
         "Run a workflow in the session (a worker serving it does the work); reports "
         "progress while it runs and returns its result (status completed, failed or "
         "cancelled).",
         {"workflow": {"type": "string", "minLength": 1}, "inputs": _OBJECT,
          "resume": {"type": "boolean", "default": False, "description":
                     "Join the run in flight, or continue from the step the session records."}},
         ("workflow",),
         lambda a, t: Run(id=0, session_id=_sid(a), workflow=a["workflow"],
                          inputs=a.get("inputs"), resume=bool(a.get("resume", False)),
                          token=t)),
    Tool("get_recommended_channel",
         "The channel recommended for a task in the session (the guide's defaults, what "
         "switches have shown), with the rule and the reason.",
         {"task_type": {"type": "string", "description": "e.g. data_analysis, "
                                                         "ai_interaction"},
          "experience": {"type": "string", "description": "e.g. expert, beginner"}}, (),
         lambda a, t: Recommend(id=0, session_id=_sid(a), task_type=a.get("task_type"),
                                experience=a.get("experience"), token=t)),
    Tool("generate_insights",
         "Findings about the session (long, busy, idle, failing switches, slow workflows), "
         "each saying what it saw.",
         {}, (), lambda a, t: Insights(id=0, session_id=_sid(a), token=t)),
    Tool("track_session_event", "Record a custom analytics event in the session.",
         {"event_type": _KEY, "data": {"description": "Any JSON value."}}, ("event_type",),
         lambda a, t: Track(id=0, session_id=_sid(a), event_type=a["event_type"],
                            data=a.get("data"), token=t)),
    Tool("get_session_summary",
         "The session's analytics: duration, events by kind, channels used, transitions.",
         {}, (), lambda a, t: Summary(id=0, session_id=_sid(a), token=t)),
)
