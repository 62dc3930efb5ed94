"""Writes valid.json, invalid.json and json.json, the golden vectors (see README.md).

    python protocol/vectors/generate.py

The meaning of every vector is written out by hand below; the bytes are built
with plain `msgpack` from a wire map written here too (the canonical form: "t"
first, then every field in the order of SPEC.md, defaults filled in), or by
hand where a vector is about a particular encoding. Nothing here decodes bytes
to find out what they mean. The committed JSON files are the reference: tests
load them and never call this script. Rerun it only to add vectors, and review
the diff of the JSON.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import attrs
import msgpack
from nexus_protocol import MESSAGE_TYPES

HERE = Path(__file__).resolve().parent

SID = "5f0c8a3e9b2d4c71a6e8f0b3d2c1a9e7"
TOKEN = "nxs_Qm9uam91ciBsZXMgdmVjdGV1cnMgZCdvciAhIQ"
TS = 1_700_000_000.5
CONTEXT = {"current_channel": "websocket", "preferences": {"theme": "dark"},
           "history": [], "metrics": {}, "updated_at": TS}


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def to_wire(value: Any) -> Any:
    """JSON meaning -> Python value: {"$bytes": hex} becomes bytes."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


def canonical_wire(message: dict[str, Any]) -> dict[str, Any]:
    """The canonical wire map of a meaning: "t", then every field in order."""
    cls = MESSAGE_TYPES[message["t"]]
    names = [f.name for f in attrs.fields(cls)]  # type: ignore[arg-type]
    unknown = set(message) - {"t", *names}
    assert not unknown, f"{message['t']}: no fields {unknown}"
    wire: dict[str, Any] = {"t": message["t"]}
    for f in attrs.fields(cls):  # type: ignore[arg-type]
        if f.name in message:
            wire[f.name] = to_wire(message[f.name])
        elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            wire[f.name] = f.default.factory()
        else:
            wire[f.name] = f.default
    return wire


VALID: list[dict[str, Any]] = []


def valid(name: str, description: str, message: dict[str, Any], *,
          wire: dict[str, Any] | None = None, body: bytes | None = None) -> None:
    """A valid vector. `wire` or `body`: a non-canonical encoding of `message`."""
    canonical = packb(canonical_wire(message))
    if body is None:
        body = packb(wire) if wire is not None else canonical
    vector = {"name": name, "description": description, "message": message,
              "hex": body.hex(), "framed_hex": framed(body).hex()}
    if body != canonical:
        vector["canonical_hex"] = canonical.hex()
    VALID.append(vector)


INVALID: list[dict[str, Any]] = []


def invalid(name: str, reason: str, stream: bytes, error: str, *, fatal: bool = False,
            request_id: int | None = None, eof: bool = False,
            before: list[str] | None = None) -> None:
    vector: dict[str, Any] = {"name": name, "reason": reason, "hex": stream.hex(),
                              "error": error, "fatal": fatal, "request_id": request_id}
    if eof:
        vector["eof"] = True
    if before:
        vector["before"] = before
    INVALID.append(vector)


def nested(depth: int) -> Any:
    """An array nesting `depth` deep around the integer 1 ([[1]] has depth 2)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ------------------------------------------------------------------ handshake

valid("hello", "A CLI client speaking version 1.",
      {"t": "hello", "versions": [1], "channel": "cli", "client": "nexus-cli/0.1.0"})
valid("hello_credential", "A client offering versions 1 to 3 and an admin credential.",
      {"t": "hello", "versions": [1, 2, 3], "channel": "api", "client": "",
       "credential": "nxa_admin-credential"})
valid("welcome", "The server's answer: version 1, the default frame limit (uint 32 on the wire).",
      {"t": "welcome", "version": 1, "server": "nexusd/0.1.0", "connection_id": "c-1a2b",
       "admin": False, "max_frame": 1048576})
valid("welcome_admin", "A welcome to a connection with admin rights.",
      {"t": "welcome", "version": 1, "server": "nexusd/0.1.0", "connection_id": "c-9",
       "admin": True, "max_frame": 65536})
valid("shutdown", "The server is going away; come back in 1.5 s.",
      {"t": "shutdown", "reason": "daemon stopping", "retry_after": 1.5})
valid("shutdown_minimal", "Only the tag: every field takes its default.",
      {"t": "shutdown"}, wire={"t": "shutdown"})

# ------------------------------------------------------------------- requests

valid("ping", "The smallest request. Bytes: 82 (map of 2) a1 74 ('t') a4 70696e67 ('ping') "
      "a2 6964 ('id') 01 (1).", {"t": "ping", "id": 1})
valid("ping_id_zero", "Request id 0 is valid.", {"t": "ping", "id": 0})
valid("ping_id_max", "The largest request id, 2^64-1 (uint 64 on the wire).",
      {"t": "ping", "id": 18446744073709551615})
valid("ping_id_wide", "The id 1 written as a uint 64 (cf 00..01) instead of a fixint.",
      {"t": "ping", "id": 1},
      body=bytes.fromhex("82" "a174" "a470696e67" "a26964" "cf0000000000000001"))
valid("ping_str8", "Short strings written as str 8 (d9 len) instead of fixstr.",
      {"t": "ping", "id": 2},
      body=bytes.fromhex("82" "d90174" "d90470696e67" "d9026964" "02"))
valid("ping_map16", "The envelope as a map 16 (de 0002) instead of a fixmap.",
      {"t": "ping", "id": 3}, body=bytes.fromhex("de0002" "a174" "a470696e67" "a26964" "03"))
valid("ping_fields_first", "Keys in another order: 't' need not come first.",
      {"t": "ping", "id": 4}, wire={"id": 4, "t": "ping"})
valid("ping_unknown_keys", "Unknown keys, of any type, are ignored (forward compatibility).",
      {"t": "ping", "id": 5},
      wire={"t": "ping", "id": 5, "trace": {"span": "a1", "sampled": True}, "hint": [1, None]})
valid("create", "Creates a session with every field given.",
      {"t": "create", "id": 1, "channel": "websocket", "user_id": "user-42", "ttl": 3600.0,
       "idle_timeout": 900.0, "metadata": {"plan": "pro", "locale": "fr-FR"}})
valid("create_minimal", "Only the required field: the optional ones are absent, not nil.",
      {"t": "create", "id": 2}, wire={"t": "create", "id": 2})
valid("create_ttl_int", "An integer where a float is expected is read as that float.",
      {"t": "create", "id": 3, "ttl": 60.0, "idle_timeout": 30.0},
      wire={"t": "create", "id": 3, "ttl": 60, "idle_timeout": 30})
valid("create_ttl_float32", "A float 32 where a float is expected (ca 42700000 is 60.0).",
      {"t": "create", "id": 4, "ttl": 60.0},
      body=bytes.fromhex("83" "a174" "a6637265617465" "a26964" "04" "a374746c" "ca42700000"))
valid("attach_fresh", "A fresh attach, read scope by default.",
      {"t": "attach", "id": 7, "session_id": SID, "token": TOKEN})
valid("attach_resume", "Resume after seq 41, with write scope, as the 'mcp' channel.",
      {"t": "attach", "id": 8, "session_id": SID, "token": TOKEN, "since": 41,
       "scope": "write", "channel": "mcp"})
valid("attach_scope_nil", "Nil for an optional field means absent: scope takes its default 'read'.",
      {"t": "attach", "id": 9, "session_id": SID},
      wire={"t": "attach", "id": 9, "session_id": SID, "token": None, "since": None,
            "scope": None, "channel": None})
valid("detach", "Ends the subscription.", {"t": "detach", "id": 10, "session_id": SID})
valid("get_key", "Reads one key.", {"t": "get", "id": 11, "session_id": SID, "key": "cart"})
valid("get_state", "No key: reads the whole state.", {"t": "get", "id": 12, "session_id": SID})
valid("set", "Writes a string.",
      {"t": "set", "id": 13, "session_id": SID, "key": "theme", "value": "dark",
       "token": TOKEN})
valid("set_nil", "Nil is a value: the key then exists and holds nil.",
      {"t": "set", "id": 14, "session_id": SID, "key": "draft", "value": None})
valid("set_nested", "A nested value: maps, arrays, every scalar type.",
      {"t": "set", "id": 15, "session_id": SID, "key": "cart", "expect": 6,
       "value": {"items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
                 "total": 31.5, "paid": False, "coupon": None, "count": -3,
                 "big": 18446744073709551615, "small": -9223372036854775808}})
valid("set_unicode", "A key and a value outside ASCII (UTF-8 on the wire).",
      {"t": "set", "id": 16, "session_id": SID, "key": "préférences/语言",
       "value": {"ключ": "значение", "emoji": "🎉"}})
valid("set_bytes", "A bin value; in JSON written as {\"$bytes\": hex}.",
      {"t": "set", "id": 17, "session_id": SID, "key": "blob",
       "value": {"$bytes": "00ff10c4"}})
valid("set_float_value", "A float value stays a float, an integer stays an integer.",
      {"t": "set", "id": 18, "session_id": SID, "key": "scores", "value": [1.0, 1, -0.5]})
valid("set_expect_zero", "expect 0: the key must not exist yet.",
      {"t": "set", "id": 19, "session_id": SID, "key": "once", "value": True, "expect": 0})
valid("set_depth_32", "A value exactly max_depth (32) deep is allowed.",
      {"t": "set", "id": 20, "session_id": SID, "key": "deep", "value": nested(32)})
valid("set_key_256_bytes", "A key of exactly max_key (256) bytes: 64 four-byte characters.",
      {"t": "set", "id": 21, "session_id": SID, "key": "😀" * 64, "value": 1})
valid("delete", "Deletes a key at version 3.",
      {"t": "delete", "id": 22, "session_id": SID, "key": "theme", "expect": 3,
       "token": TOKEN})
valid("patch", "Sets two keys and deletes one in one change, with expectations.",
      {"t": "patch", "id": 23, "session_id": SID,
       "set": {"cart": {"items": []}, "step": 2}, "delete": ["draft"],
       "expect": {"cart": 6, "step": 0}})
valid("patch_delete_only", "Only deletes; 'set' takes its default {}.",
      {"t": "patch", "id": 24, "session_id": SID, "delete": ["a", "b"]},
      wire={"t": "patch", "id": 24, "session_id": SID, "delete": ["a", "b"]})
valid("patch_256_keys", "A patch of exactly max_patch (256) keys, set and deleted together.",
      {"t": "patch", "id": 25, "session_id": SID,
       "set": {f"k{i:03d}": i for i in range(200)},
       "delete": [f"d{i:03d}" for i in range(56)]})
valid("update_context", "Replaces preferences, history and metrics.",
      {"t": "update_context", "id": 26, "session_id": SID, "channel": "mobile",
       "preferences": {"theme": "dark", "language": "en"},
       "history": [{"workflow": "onboarding", "status": "completed"}],
       "metrics": {"page_views": 12, "time_on_site": 301.5}})
valid("switch_begin", "Starts a move from the web page to the CLI.",
      {"t": "switch_begin", "id": 27, "session_id": SID, "to_channel": "cli",
       "from_channel": "websocket", "reason": "user_requested",
       "context": {"cwd": "/home/ada"}})
valid("switch_complete", "Completes it, unsuccessfully.",
      {"t": "switch_complete", "id": 28, "session_id": SID, "transition_id": "tr-5b1c",
       "success": False})
valid("renew", "Extends the session by an hour.",
      {"t": "renew", "id": 29, "session_id": SID, "ttl": 3600.0})
valid("invalidate", "Ends the session now.",
      {"t": "invalidate", "id": 30, "session_id": SID, "reason": "logout", "token": TOKEN})
valid("sync", "The session as seen from the 'api' channel.",
      {"t": "sync", "id": 31, "session_id": SID, "channel": "api"})
valid("summary", "Analytics of one session.", {"t": "summary", "id": 32, "session_id": SID})
valid("grant", "Mints a read-only token.",
      {"t": "grant", "id": 33, "session_id": SID, "scope": "read", "token": TOKEN})
valid("list_sessions", "The second page of 50 sessions.",
      {"t": "list_sessions", "id": 34, "limit": 50, "after": SID})
valid("stats", "Daemon statistics.", {"t": "stats", "id": 35})
valid("analytics", "Cross-session analytics.", {"t": "analytics", "id": 36})
valid("run", "Runs a workflow (reserved in v1).",
      {"t": "run", "id": 37, "session_id": SID, "workflow": "data_analysis",
       "inputs": {"dataset": "sales_q3"}, "resume": True})
valid("cancel_run", "Cancels a run in flight.",
      {"t": "cancel_run", "id": 38, "session_id": SID, "run_id": "run-77", "token": TOKEN})
valid("register", "A worker serving two workflows, two runs at a time.",
      {"t": "register", "id": 39, "workflows": ["data-processor", "multi-step-processor"],
       "concurrency": 2})
valid("register_default_concurrency", "A worker serving one workflow; concurrency defaults to 1.",
      {"t": "register", "id": 40, "workflows": ["data-processor"]},
      wire={"t": "register", "id": 40, "workflows": ["data-processor"]})
valid("heartbeat", "A worker is alive.", {"t": "heartbeat", "id": 41})
valid("run_progress", "Step 2 of 5 done, with a little data.",
      {"t": "run_progress", "id": 42, "session_id": SID, "run_id": "run-77", "step": 2,
       "total": 5, "message": "aggregate", "data": {"rows": 600}})
valid("run_complete", "A run finished with its outputs.",
      {"t": "run_complete", "id": 43, "session_id": SID, "run_id": "run-77",
       "result": {"rows": 1200}})
valid("run_fail", "A worker gives up a run and asks for another attempt.",
      {"t": "run_fail", "id": 44, "session_id": SID, "run_id": "run-77",
       "error": "database unreachable", "retry": True})
valid("merge_context", "Sets two of the guide's free-form context keys and removes a third.",
      {"t": "merge_context", "id": 45, "session_id": SID,
       "values": {"workflow_state": {"step": 3, "of": 5}, "user_preferences": {"theme": "dark"},
                  "draft": None}})
valid("track", "Tracks the guide's workflow run: data-processor took 15.5 s.",
      {"t": "track", "id": 46, "session_id": SID, "event_type": "workflow_executed",
       "data": {"workflow_name": "data-processor", "execution_time": 15.5}})
valid("insights", "The session's insights.", {"t": "insights", "id": 47, "session_id": SID})
valid("recommend", "The channel for an expert's data analysis.",
      {"t": "recommend", "id": 48, "session_id": SID, "task_type": "data_analysis",
       "experience": "expert"})

# -------------------------------------------------------------------- replies

valid("pong", "Answers ping 1.", {"t": "pong", "id": 1})
valid("ok", "Answers a detach or an invalidate.", {"t": "ok", "id": 10})
valid("error", "A conflict on request 19.",
      {"t": "error", "id": 19, "code": "conflict",
       "message": "key 'once' is at version 1, not 0"})
valid("error_busy", "Busy, with a retry hint.",
      {"t": "error", "id": 13, "code": "busy", "message": "session is busy",
       "retry_after": 0.25})
valid("error_connection", "No id: the connection failed (fatal).",
      {"t": "error", "code": "too_large",
       "message": "frame of 2000000 bytes exceeds the limit of 1048576"})
valid("created", "A new session and its admin token, as servers before `clamped` sent "
      "it: an absent `clamped` is false.",
      {"t": "created", "id": 1, "session_id": SID, "token": TOKEN, "seq": 0,
       "expires_at": TS + 3600, "idle_timeout": 900.0, "clamped": False},
      wire={"t": "created", "id": 1, "session_id": SID, "token": TOKEN, "seq": 0,
            "expires_at": TS + 3600, "idle_timeout": 900.0})
valid("created_clamped", "A session whose requested ttl was above the server's bound: "
      "it got the bound instead.",
      {"t": "created", "id": 2, "session_id": SID, "token": TOKEN, "seq": 0,
       "expires_at": TS + 2592000, "idle_timeout": 900.0, "clamped": True})
valid("attached", "Subscribed; a snapshot follows.",
      {"t": "attached", "id": 7, "session_id": SID, "seq": 41, "recovered": False,
       "scope": "read",
       "presence": [{"connection_id": "c-1a2b", "channel": "websocket", "client": "web/2.1"},
                    {"connection_id": "c-9", "channel": "cli", "client": ""}]})
valid("attached_recovered", "Resumed; the missed changes follow.",
      {"t": "attached", "id": 8, "session_id": SID, "seq": 44, "recovered": True,
       "scope": "write"})
valid("written", "A set or delete: seq and the key's new version.",
      {"t": "written", "id": 13, "seq": 42, "version": 4})
valid("written_patch", "A patch: the new version of every key.",
      {"t": "written", "id": 23, "seq": 43, "versions": {"cart": 7, "step": 1, "draft": 2}})
valid("value", "One entry.",
      {"t": "value", "id": 11, "key": "cart", "value": {"items": []}, "version": 7,
       "updated_at": TS, "channel": "websocket"})
valid("value_absent", "A key never written: nil value, version 0.",
      {"t": "value", "id": 11, "key": "nothing", "value": None, "version": 0})
valid("state", "The whole session.",
      {"t": "state", "id": 12, "session_id": SID, "seq": 44,
       "entries": {"theme": {"value": "dark", "version": 3, "updated_at": TS,
                             "channel": "api"}},
       "context": CONTEXT, "created_at": TS - 60, "expires_at": TS + 3540,
       "idle_expires_at": TS + 900})
valid("switched", "A transition begun or completed.",
      {"t": "switched", "id": 27, "seq": 45, "transition_id": "tr-5b1c"})
valid("renewed", "The new expiry, as servers before `clamped` sent it.",
      {"t": "renewed", "id": 29, "seq": 46, "expires_at": TS + 3600, "clamped": False},
      wire={"t": "renewed", "id": 29, "seq": 46, "expires_at": TS + 3600})
valid("renewed_clamped", "A renew whose ttl was above the server's bound.",
      {"t": "renewed", "id": 30, "seq": 47, "expires_at": TS + 2592000, "clamped": True})
valid("granted", "The new token.",
      {"t": "granted", "id": 33, "token": "nxs_cmVhZC1vbmx5LXRva2VuLWZvci10ZXN0cw",
       "scope": "read"})
valid("report", "A session summary.",
      {"t": "report", "id": 32,
       "report": {"session_id": SID, "duration_seconds": 60.5, "total_events": 3,
                  "channels_used": ["api", "cli"], "transition_success_rate": None}})
valid("sessions", "A page of sessions, with more to come.",
      {"t": "sessions", "id": 34,
       "sessions": [{"session_id": SID, "created_at": TS, "expires_at": TS + 3600}],
       "after": SID})
valid("run_started", "A workflow run started (reserved).",
      {"t": "run_started", "id": 37, "run_id": "run-77", "seq": 47})
valid("registered", "This connection is a worker; heartbeat within 30 s.",
      {"t": "registered", "id": 39, "worker_id": "w-1f3a", "lease": 30.0})

# --------------------------------------------------------------------- events

valid("snapshot_fresh", "After a fresh attach: recovered is true.",
      {"t": "snapshot", "session_id": SID, "seq": 41,
       "entries": {"theme": {"value": "dark", "version": 3, "updated_at": TS,
                             "channel": "api"},
                   "cart": {"value": {"items": [{"sku": "A-1", "qty": 2}]}, "version": 6,
                            "updated_at": TS + 1, "channel": "websocket"}},
       "context": CONTEXT, "recovered": True})
valid("snapshot_not_recovered", "A resume that came too late: recovered is false.",
      {"t": "snapshot", "session_id": SID, "seq": 500, "entries": {}, "context": CONTEXT,
       "recovered": False})
valid("change_set", "op set: key, new version, the value.",
      {"t": "change", "session_id": SID, "seq": 42, "op": "set", "ts": TS,
       "channel": "websocket", "writer": "c-1a2b", "key": "cart",
       "value": {"items": [{"sku": "A-1", "qty": 2}], "total": 31.5}, "version": 7})
valid("change_set_nil", "op set with a nil value.",
      {"t": "change", "session_id": SID, "seq": 43, "op": "set", "ts": TS,
       "channel": "cli", "writer": "c-9", "key": "draft", "value": None, "version": 1})
valid("change_delete", "op delete: nil value, the new version.",
      {"t": "change", "session_id": SID, "seq": 44, "op": "delete", "ts": TS,
       "channel": "cli", "writer": "c-9", "key": "draft", "version": 2})
valid("change_patch", "op patch: the keys set, deleted, and their new versions.",
      {"t": "change", "session_id": SID, "seq": 45, "op": "patch", "ts": TS,
       "channel": "api", "writer": "c-3",
       "value": {"set": {"cart": {"items": []}, "step": 2}, "delete": ["draft"],
                 "versions": {"cart": 8, "step": 1, "draft": 3}}})
valid("change_context", "op context: the new context, whole.",
      {"t": "change", "session_id": SID, "seq": 46, "op": "context", "ts": TS,
       "channel": "api", "writer": "c-3", "value": CONTEXT})
valid("change_switch_begin", "op switch_begin: the transition as begun.",
      {"t": "change", "session_id": SID, "seq": 47, "op": "switch_begin", "ts": TS,
       "channel": "websocket", "writer": "c-1a2b",
       "value": {"transition_id": "tr-5b1c", "from_channel": "websocket",
                 "to_channel": "cli", "reason": "user_requested", "started_at": TS,
                 "completed_at": None, "success": None}})
valid("change_switch_complete", "op switch_complete: the transition as completed.",
      {"t": "change", "session_id": SID, "seq": 48, "op": "switch_complete", "ts": TS + 2,
       "channel": "cli", "writer": "c-9",
       "value": {"transition_id": "tr-5b1c", "from_channel": "websocket",
                 "to_channel": "cli", "reason": "user_requested", "started_at": TS,
                 "completed_at": TS + 2, "success": True}})
valid("change_renew", "op renew: the new absolute expiry.",
      {"t": "change", "session_id": SID, "seq": 49, "op": "renew", "ts": TS,
       "channel": "api", "writer": "c-3", "value": {"expires_at": TS + 3600}})
valid("presence_join", "A connection attached.",
      {"t": "presence", "session_id": SID, "action": "join", "connection_id": "c-9",
       "channel": "cli", "client": "nexus-cli/0.1.0"})
valid("presence_leave", "A connection left.",
      {"t": "presence", "session_id": SID, "action": "leave", "connection_id": "c-9",
       "channel": "cli"})
valid("lagged", "This subscriber fell behind after seq 41 and is detached.",
      {"t": "lagged", "session_id": SID, "seq": 41})
valid("expired", "The idle timeout ended the session.",
      {"t": "expired", "session_id": SID, "reason": "idle"})
valid("invalidated", "An invalidate ended the session.",
      {"t": "invalidated", "session_id": SID, "reason": "logout"})
valid("progress", "Workflow progress (reserved).",
      {"t": "progress", "session_id": SID, "run_id": "run-77", "progress": 0.5,
       "step": "aggregate"})
valid("result", "Workflow outcome (reserved).",
      {"t": "result", "session_id": SID, "run_id": "run-77", "status": "completed",
       "result": {"rows": 1200}})
valid("dispatch", "Run data-processor, second attempt, continuing from the session's step.",
      {"t": "dispatch", "session_id": SID, "run_id": "run-77", "workflow": "data-processor",
       "inputs": {"dataset": "sales_q3"}, "attempt": 2, "idempotency_key": "run-77",
       "lease": 30.0, "resume": True})


# -------------------------------------------------------------------- invalid

PING = packb({"t": "ping", "id": 1})
assert PING.hex() == "82a174a470696e67a2696401"  # checked by hand against the msgpack spec


def set_body(rid: int, **fields: Any) -> bytes:
    return packb({"t": "set", "id": rid, "session_id": SID, **fields})


invalid("truncated_body",
        "The length prefix matches, but the map inside announces 3 entries and holds 2.",
        framed(bytes.fromhex("83a174a470696e67a2696401")), "bad_request")
invalid("empty_body", "A length prefix of 0: an empty body is not msgpack.",
        bytes.fromhex("00000000"), "bad_request")
invalid("not_msgpack", "0xc1 is never used in msgpack.", framed(b"\xc1"), "bad_request")
invalid("oversized_prefix",
        "The prefix says 1048577 bytes, one more than max_frame: refused from the 4-byte "
        "header alone, nothing of the body is awaited or kept.",
        bytes.fromhex("00100001"), "too_large", fatal=True)
invalid("oversized_prefix_max", "The largest possible prefix, followed by a few bytes.",
        bytes.fromhex("ffffffff") + PING, "too_large", fatal=True)
invalid("prefix_shorter_than_body",
        "The prefix says 10 bytes; the 12-byte ping is cut inside the key 'id', so the frame "
        "does not decode (and the 2 bytes left over are garbage).",
        struct.pack(">I", 10) + PING, "bad_request")
invalid("prefix_longer_than_body",
        "The prefix says 20 bytes, 12 follow, then the stream ends: the connection closed "
        "inside a frame.", struct.pack(">I", 20) + PING, "bad_request", fatal=True, eof=True)
invalid("eof_inside_prefix", "The stream ends after 2 bytes of a length prefix.",
        bytes.fromhex("0000"), "bad_request", fatal=True, eof=True)
invalid("non_map_body", "The body is an array, not a map.", framed(packb(["ping", 1])),
        "bad_request")
invalid("nil_body", "The body is nil.", framed(b"\xc0"), "bad_request")
invalid("track_empty_event_type",
        "A track whose event_type is the empty string: an event type is a key, never empty.",
        framed(packb({"t": "track", "id": 49, "session_id": SID, "event_type": ""})),
        "bad_request", request_id=49)
invalid("trailing_bytes", "A valid map followed, inside the same frame, by one more byte.",
        framed(PING + b"\xc0"), "bad_request")
invalid("unknown_type", "No message has the tag 'frobnicate'; the id can be read.",
        framed(packb({"t": "frobnicate", "id": 7})), "bad_request", request_id=7)
invalid("missing_type", "No 't' key.", framed(packb({"id": 3, "session_id": SID})),
        "bad_request", request_id=3)
invalid("nil_type", "'t' is nil.", framed(packb({"t": None, "id": 3})), "bad_request",
        request_id=3)
invalid("non_string_type", "'t' is an integer.", framed(packb({"t": 5, "id": 4})),
        "bad_request", request_id=4)
invalid("wrong_field_type", "set.key is an integer, not a string.",
        framed(set_body(8, key=5, value="x")), "bad_request", request_id=8)
invalid("bin_for_str", "set.session_id is a bin, not a str.",
        framed(packb({"t": "set", "id": 9, "session_id": SID.encode(), "key": "k",
                      "value": 1})), "bad_request", request_id=9)
invalid("missing_required_field", "set without 'value' (nil would be a value; absent is not).",
        framed(set_body(10, key="k")), "bad_request", request_id=10)
invalid("nil_required_field", "set.key is nil, which counts as absent.",
        framed(set_body(11, key=None, value=1)), "bad_request", request_id=11)
invalid("register_workflows_not_a_list", "register.workflows must be an array.",
        framed(packb({"t": "register", "id": 12, "workflows": "data-processor",
                      "concurrency": 1})), "bad_request", request_id=12)
invalid("missing_session_id", "get without its required session_id.",
        framed(packb({"t": "get", "id": 12, "key": "k"})), "bad_request", request_id=12)
invalid("bad_utf8",
        "set.key is a str whose bytes are not UTF-8 (6b ff): the whole body is invalid, its id "
        "unreadable.",
        framed(bytes.fromhex("85" "a174" "a3736574" "a26964" "20" "aa73657373696f6e5f6964" "a173"
                             "a36b6579" "a26bff" "a576616c7565" "01")),
        "bad_request")
invalid("negative_id", "id -1 is not a request id.", framed(packb({"t": "ping", "id": -1})),
        "bad_request")
invalid("bool_id", "id true is not an integer.", framed(packb({"t": "ping", "id": True})),
        "bad_request")
invalid("float_id", "id 1.0 is a float, not an integer.",
        framed(packb({"t": "ping", "id": 1.0})), "bad_request")
invalid("string_id", "id '7' is a string.", framed(packb({"t": "ping", "id": "7"})),
        "bad_request")
invalid("bool_where_uint", "attach.since is true: booleans are not integers.",
        framed(packb({"t": "attach", "id": 13, "session_id": SID, "since": True})),
        "bad_request", request_id=13)
invalid("negative_uint", "set.expect is -1.", framed(set_body(14, key="k", value=1, expect=-1)),
        "bad_request", request_id=14)
invalid("int_where_bool", "switch_complete.success is 1: integers are not booleans.",
        framed(packb({"t": "switch_complete", "id": 15, "session_id": SID,
                      "transition_id": "tr", "success": 1})), "bad_request", request_id=15)
invalid("nan_float", "create.ttl is NaN.",
        framed(packb({"t": "create", "id": 16, "ttl": math.nan})), "bad_request",
        request_id=16)
invalid("infinite_float", "renew.ttl is +infinity.",
        framed(packb({"t": "renew", "id": 17, "session_id": SID, "ttl": math.inf})),
        "bad_request", request_id=17)
invalid("string_where_float", "renew.ttl is a string.",
        framed(packb({"t": "renew", "id": 18, "session_id": SID, "ttl": "60"})),
        "bad_request", request_id=18)
invalid("empty_key", "A key must not be empty.", framed(set_body(19, key="", value=1)),
        "bad_request", request_id=19)
invalid("key_too_long", "A key of 257 ASCII bytes, one more than max_key.",
        framed(set_body(20, key="k" * 257, value=1)), "bad_request", request_id=20)
invalid("key_too_long_unicode",
        "86 characters, but 258 bytes in UTF-8 ('€' is 3 bytes): the limit counts bytes.",
        framed(set_body(21, key="€" * 86, value=1)), "bad_request", request_id=21)
invalid("nesting_too_deep", "A value 33 deep, one more than max_depth.",
        framed(set_body(22, key="k", value=nested(33))), "bad_request", request_id=22)
invalid("non_string_map_key", "A map inside a value with an integer key.",
        framed(set_body(23, key="k", value={"a": {1: "one"}})), "bad_request", request_id=23)
invalid("bin_map_key", "A map inside a value with a bin key.",
        framed(set_body(24, key="k", value={b"k": 1})), "bad_request", request_id=24)
invalid("array_map_key",
        "An array ([1], 91 01) used as a map key inside a value: the body itself cannot be read.",
        framed(bytes.fromhex("85" "a174" "a3736574" "a26964" "21" "aa73657373696f6e5f6964" "a173"
                             "a36b6579" "a16b" "a576616c7565" "81" "9101" "01")),
        "bad_request")
invalid("non_string_key_in_map_field", "create.metadata with an integer key.",
        framed(packb({"t": "create", "id": 26, "metadata": {7: "x"}})), "bad_request",
        request_id=26)
invalid("ext_type",
        "A msgpack ext type (fixext 1, type 5: d4 05 00) as set.value: no ext types anywhere.",
        framed(bytes.fromhex("85" "a174" "a3736574" "a26964" "22" "aa73657373696f6e5f6964" "a173"
                             "a36b6579" "a16b" "a576616c7565" "d40500")),
        "bad_request")
invalid("timestamp_ext",
        "The predefined timestamp ext (type -1, d6 ff + 4 bytes) under an unknown key: "
        "refused too.",
        framed(bytes.fromhex("83" "a174" "a470696e67" "a26964" "01" "a26174" "d6ff00000001")),
        "bad_request")
invalid("patch_set_over_limit", "patch.set with 257 keys, one more than max_patch.",
        framed(packb({"t": "patch", "id": 27, "session_id": SID,
                      "set": {f"k{i:03d}": i for i in range(257)}})),
        "bad_request", request_id=27)
invalid("patch_delete_over_limit", "patch.delete with 257 keys.",
        framed(packb({"t": "patch", "id": 28, "session_id": SID,
                      "delete": [f"k{i:03d}" for i in range(257)]})),
        "bad_request", request_id=28)
invalid("patch_together_over_limit",
        "200 keys set and 57 deleted: 257 keys in one patch, one more than max_patch.",
        framed(packb({"t": "patch", "id": 29, "session_id": SID,
                      "set": {f"k{i:03d}": i for i in range(200)},
                      "delete": [f"d{i:03d}" for i in range(57)]})),
        "bad_request", request_id=29)
invalid("patch_set_not_a_map", "patch.set is an array.",
        framed(packb({"t": "patch", "id": 30, "session_id": SID, "set": ["a", 1]})),
        "bad_request", request_id=30)
invalid("patch_negative_expect", "A version in patch.expect is -1.",
        framed(packb({"t": "patch", "id": 31, "session_id": SID, "delete": ["a"],
                      "expect": {"a": -1}})), "bad_request", request_id=31)
invalid("second_hello", "A hello after the handshake: not allowed in state open.",
        framed(packb({"t": "hello", "versions": [1], "channel": "cli"})), "bad_request")
invalid("client_sends_reply", "A client may not send replies.",
        framed(packb({"t": "pong", "id": 1})), "bad_request")
invalid("client_sends_event", "A client may not send events.",
        framed(packb({"t": "lagged", "session_id": SID, "seq": 1})), "bad_request")
invalid("duplicate_in_flight_id",
        "Two pings with id 5; the first is not answered yet, so the second cannot be.",
        framed(packb({"t": "ping", "id": 5})) + framed(packb({"t": "ping", "id": 5})),
        "bad_request", before=["ping"])


def json_text(wire: Any) -> str:
    """The canonical JSON body of a wire map (SPEC.md section 2.4), built
    here by its rules: bin as {"$bytes": base64}, a key beginning with "$"
    with one more "$", NaN and the infinities as null, no spaces."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {("$" + k if k.startswith("$") else k): convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, bytes):
            return {"$bytes": base64.b64encode(value).decode("ascii")}
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps(convert(wire), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def json_vectors() -> dict[str, Any]:
    """Every valid vector's message as canonical JSON, and JSON bodies a
    server must refuse."""
    valid_json = [{"name": v["name"], "message": v["message"],
                   "json": json_text(canonical_wire(v["message"]))} for v in VALID]
    ping = '{"t":"ping","id":7}'

    def bad(name: str, reason: str, text: str, request_id: int | None = None) -> dict[str, Any]:
        return {"name": name, "reason": reason, "json": text, "error": "bad_request",
                "fatal": False, "request_id": request_id}

    set_prefix = f'{{"t":"set","id":4,"session_id":"{SID}","key":"k","value":'
    invalid_json = [
        bad("json_not_json", "Not JSON at all.", "ping"),
        bad("json_truncated", "The object is not closed.", ping[:-1]),
        bad("json_not_object", "A body is a JSON object, not an array.", "[" + ping + "]"),
        bad("json_nan", "NaN is not JSON (nor are Infinity and -Infinity).",
            set_prefix + "NaN}"),
        bad("json_reserved_key",
            "A key beginning with a single '$' other than the lone '$bytes' is reserved; "
            "the id can be read.", set_prefix + '{"$ref":1}}', request_id=4),
        bad("json_bad_base64", "'$bytes' must hold standard base64 with padding.",
            set_prefix + '{"$bytes":"not base64!"}}', request_id=4),
        bad("json_bytes_not_alone",
            "'$bytes' with another key beside it is no byte string, and reserved.",
            set_prefix + '{"$bytes":"AA==","x":1}}', request_id=4),
        bad("json_bytes_as_key", "Map keys are strings: bytes cannot be a key, and a "
            "string is where a key of kind `key` is required.",
            f'{{"t":"get","id":5,"session_id":"{SID}","key":{{"$bytes":"AA=="}}}}',
            request_id=5),
        bad("json_float_id", "An id is a uint: 7.0 is a float.", '{"t":"ping","id":7.0}'),
    ]
    return {"version": 1, "valid": valid_json, "invalid": invalid_json}


def main() -> None:
    tags = {v["message"]["t"] for v in VALID}
    missing = set(MESSAGE_TYPES) - tags
    assert not missing, f"no valid vector for {sorted(missing)}"
    names = [v["name"] for v in VALID + INVALID]
    assert len(names) == len(set(names)), "vector names must be unique"
    for filename, vectors in (("valid.json", VALID), ("invalid.json", INVALID)):
        text = json.dumps({"version": 1, "vectors": vectors}, indent=1, ensure_ascii=False)
        (HERE / filename).write_text(text + "\n", encoding="utf-8")
        print(f"{filename}: {len(vectors)} vectors")
    doc = json_vectors()
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    (HERE / "json.json").write_text(text + "\n", encoding="utf-8")
    print(f"json.json: {len(doc['valid'])} valid, {len(doc['invalid'])} invalid")


if __name__ == "__main__":
    main()
