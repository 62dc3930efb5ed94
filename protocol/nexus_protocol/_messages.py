"""Every message of protocol v1 as a frozen attrs class, and the tag table.

A message travels as a msgpack map: the key ``"t"`` holds the tag, the other
keys are the fields below under the same names. Each field declares its wire
kind (see `Kind`), which the codec checks on the way in. `protocol/SPEC.md` is
the normative description of the same catalogue.

Requests derive from `Request` (which holds `id`) or, when they are about one
session, from `SessionRequest` (`id`, `session_id`); events derive from
`SessionEvent` (`session_id`). Those fields come first in every message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

import attrs

__all__ = [
    "MESSAGE_TYPES",
    "Analytics",
    "Attach",
    "Attached",
    "CancelRun",
    "Change",
    "Create",
    "Created",
    "Delete",
    "Detach",
    "Dispatch",
    "Error",
    "Expired",
    "Get",
    "Grant",
    "Granted",
    "Heartbeat",
    "Hello",
    "Insights",
    "Invalidate",
    "Invalidated",
    "Kind",
    "Lagged",
    "ListSessions",
    "MergeContext",
    "Message",
    "Ok",
    "Patch",
    "Ping",
    "Pong",
    "Presence",
    "Progress",
    "Recommend",
    "Register",
    "Registered",
    "Renew",
    "Renewed",
    "Report",
    "Request",
    "Result",
    "Role",
    "Run",
    "RunComplete",
    "RunFail",
    "RunProgress",
    "RunStarted",
    "SessionEvent",
    "SessionRequest",
    "Sessions",
    "Set",
    "Shutdown",
    "Snapshot",
    "StateReply",
    "Stats",
    "Summary",
    "SwitchBegin",
    "SwitchComplete",
    "Switched",
    "Sync",
    "Track",
    "UpdateContext",
    "Value",
    "Welcome",
    "Written",
]


class Kind(enum.Enum):
    """The wire kind of a field: what the codec accepts for it."""

    UINT = "uint"  # non-negative integer, not a boolean
    FLOAT = "float"  # integer or float, finite; decoded as float
    BOOL = "bool"
    STR = "str"
    KEY = "key"  # non-empty string of at most Limits.max_key UTF-8 bytes
    VALUE = "value"  # any msgpack value; nil allowed; depth-limited
    MAP = "map"  # map of string keys to values; depth-limited
    LIST = "list"  # array of values; depth-limited
    UINTS = "uints"  # array of non-negative integers
    KEYS = "keys"  # array of keys, at most Limits.max_patch
    ENTRIES = "entries"  # map of keys to values, at most Limits.max_patch
    VERSIONS = "versions"  # map of keys to non-negative integers


class Role(enum.Enum):
    """Which side of a connection a message goes from, and what it is."""

    HELLO = "hello"  # client -> server, opens the connection
    WELCOME = "welcome"  # server -> client, answers hello
    REQUEST = "request"  # client -> server, carries an id
    REPLY = "reply"  # server -> client, answers the request with that id
    EVENT = "event"  # server -> client, pushed, no id
    SHUTDOWN = "shutdown"  # server -> client, the server is going away


_REQUIRED: Final = attrs.NOTHING


def _field(kind: Kind, default: Any = _REQUIRED) -> Any:
    return attrs.field(default=default, metadata={"kind": kind})


class Message:
    """Base of every message class. `TAG` is the wire tag, `ROLE` its role."""

    TAG: ClassVar[str]
    ROLE: ClassVar[Role]
    __slots__ = ()


MESSAGE_TYPES: dict[str, type[Message]] = {}


_M = TypeVar("_M", bound=type[Message])


def _message(tag: str, role: Role) -> Callable[[_M], _M]:
    def register(cls: _M) -> _M:
        cls.TAG = tag
        cls.ROLE = role
        if tag in MESSAGE_TYPES:
            raise RuntimeError(f"duplicate tag {tag!r}")
        for base, base_role in _ROLE_BASES.items():
            if issubclass(cls, base) != (role is base_role):
                raise RuntimeError(f"{cls.__name__}: every {base_role.value}, and nothing "
                                   f"else, derives from {base.__name__}")
        MESSAGE_TYPES[tag] = cls
        return cls

    return register


# The bases hold the fields their messages share. attrs puts inherited fields
# first and the codec writes fields in declaration order, so a base may only
# hold fields that every message under it has first, in that order: `token`,
# whose place varies (and which `detach` lacks), stays in each message.


@attrs.frozen(kw_only=True)
class Request(Message):
    """Base of every client -> server request; `id` pairs it with its reply."""

    id: int = _field(Kind.UINT)


@attrs.frozen(kw_only=True)
class SessionRequest(Request):
    """Base of the requests about one session, the one `session_id` names."""

    session_id: str = _field(Kind.STR)


@attrs.frozen(kw_only=True)
class SessionEvent(Message):
    """Base of every server -> client event: each is about one session."""

    session_id: str = _field(Kind.STR)


_ROLE_BASES: Final[dict[type[Message], Role]] = {Request: Role.REQUEST,
                                                 SessionEvent: Role.EVENT}


# ---------------------------------------------------------------- handshake


@_message("hello", Role.HELLO)
@attrs.frozen(kw_only=True)
class Hello(Message):
    """Opens a connection: the protocol versions spoken and who is calling."""

    versions: list[int] = _field(Kind.UINTS)
    channel: str = _field(Kind.STR)
    client: str = _field(Kind.STR, "")
    credential: str | None = _field(Kind.STR, None)


@_message("welcome", Role.WELCOME)
@attrs.frozen(kw_only=True)
class Welcome(Message):
    """Accepts a hello: the chosen version and the connection's identity."""

    version: int = _field(Kind.UINT)
    server: str = _field(Kind.STR)
    connection_id: str = _field(Kind.STR)
    admin: bool = _field(Kind.BOOL, False)
    max_frame: int = _field(Kind.UINT)


@_message("shutdown", Role.SHUTDOWN)
@attrs.frozen(kw_only=True)
class Shutdown(Message):
    """The server stops: no new requests; replies in flight still arrive."""

    reason: str = _field(Kind.STR, "")
    retry_after: float | None = _field(Kind.FLOAT, None)


# ---------------------------------------------------------------- requests


@_message("ping", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Ping(Request):
    """Liveness check; changes nothing."""


@_message("create", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Create(Request):
    """Creates a session. `channel` defaults to the connection's channel."""

    channel: str | None = _field(Kind.STR, None)
    user_id: str | None = _field(Kind.STR, None)
    ttl: float | None = _field(Kind.FLOAT, None)
    idle_timeout: float | None = _field(Kind.FLOAT, None)
    metadata: dict[str, Any] | None = _field(Kind.MAP, None)


@_message("attach", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Attach(SessionRequest):
    """Subscribes to a session's changes, resuming after `since` if given."""

    token: str | None = _field(Kind.STR, None)
    since: int | None = _field(Kind.UINT, None)
    scope: str = _field(Kind.STR, "read")
    channel: str | None = _field(Kind.STR, None)


@_message("detach", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Detach(SessionRequest):
    """Ends the connection's subscription to the session (`ok` also when there was none)."""


@_message("get", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Get(SessionRequest):
    """Reads one key (`key` set) or the whole state (`key` nil)."""

    key: str | None = _field(Kind.KEY, None)
    token: str | None = _field(Kind.STR, None)


@_message("set", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Set(SessionRequest):
    """Writes one key; `expect` is the version the writer last saw (0: absent)."""

    key: str = _field(Kind.KEY)
    value: Any = _field(Kind.VALUE)
    expect: int | None = _field(Kind.UINT, None)
    token: str | None = _field(Kind.STR, None)


@_message("delete", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Delete(SessionRequest):
    key: str = _field(Kind.KEY)
    expect: int | None = _field(Kind.UINT, None)
    token: str | None = _field(Kind.STR, None)


@_message("patch", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Patch(SessionRequest):
    """Sets and deletes several keys in one change, all or nothing."""

    set: dict[str, Any] = _field(Kind.ENTRIES, attrs.Factory(dict))
    delete: list[str] = _field(Kind.KEYS, attrs.Factory(list))
    expect: dict[str, int] | None = _field(Kind.VERSIONS, None)
    token: str | None = _field(Kind.STR, None)


@_message("update_context", Role.REQUEST)
@attrs.frozen(kw_only=True)
class UpdateContext(SessionRequest):
    """Replaces the parts of the session context that are given."""

    channel: str | None = _field(Kind.STR, None)
    preferences: dict[str, Any] | None = _field(Kind.MAP, None)
    history: list[Any] | None = _field(Kind.LIST, None)
    metrics: dict[str, Any] | None = _field(Kind.MAP, None)
    token: str | None = _field(Kind.STR, None)


@_message("switch_begin", Role.REQUEST)
@attrs.frozen(kw_only=True)
class SwitchBegin(SessionRequest):
    """Starts a channel transition; the reply carries its `transition_id`."""

    to_channel: str = _field(Kind.STR)
    from_channel: str | None = _field(Kind.STR, None)
    reason: str | None = _field(Kind.STR, None)
    context: dict[str, Any] | None = _field(Kind.MAP, None)
    token: str | None = _field(Kind.STR, None)


@_message("switch_complete", Role.REQUEST)
@attrs.frozen(kw_only=True)
class SwitchComplete(SessionRequest):
    transition_id: str = _field(Kind.STR)
    success: bool = _field(Kind.BOOL, True)
    token: str | None = _field(Kind.STR, None)


@_message("renew", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Renew(SessionRequest):
    """Extends the absolute expiry to now + `ttl` (default: the session's ttl)."""

    ttl: float | None = _field(Kind.FLOAT, None)
    token: str | None = _field(Kind.STR, None)


@_message("invalidate", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Invalidate(SessionRequest):
    """Ends a session now; its data becomes unrecoverable."""

    reason: str | None = _field(Kind.STR, None)
    token: str | None = _field(Kind.STR, None)


@_message("sync", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Sync(SessionRequest):
    """The session as seen from `channel`; records that channel's activity."""

    channel: str = _field(Kind.STR)
    token: str | None = _field(Kind.STR, None)


@_message("summary", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Summary(SessionRequest):
    """Analytics of one session: duration, events, channels, workflows."""

    token: str | None = _field(Kind.STR, None)


@_message("merge_context", Role.REQUEST)
@attrs.frozen(kw_only=True)
class MergeContext(SessionRequest):
    """Merges free-form keys into the session context (nil removes a key)."""

    values: dict[str, Any] = _field(Kind.MAP)
    channel: str | None = _field(Kind.STR, None)
    token: str | None = _field(Kind.STR, None)


@_message("track", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Track(SessionRequest):
    """Journals a custom analytics event of type `event_type` with `data`."""

    event_type: str = _field(Kind.KEY)
    data: Any = _field(Kind.VALUE, None)
    token: str | None = _field(Kind.STR, None)


@_message("insights", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Insights(SessionRequest):
    """The session's insights: rule-based findings, each saying what it saw."""

    token: str | None = _field(Kind.STR, None)


@_message("recommend", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Recommend(SessionRequest):
    """The channel recommended for `task_type` in the session, and why."""

    task_type: str | None = _field(Kind.STR, None)
    experience: str | None = _field(Kind.STR, None)
    token: str | None = _field(Kind.STR, None)


@_message("grant", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Grant(SessionRequest):
    """Mints another token for the session with `scope` (read, write, admin)."""

    scope: str = _field(Kind.STR)
    token: str | None = _field(Kind.STR, None)


@_message("list_sessions", Role.REQUEST)
@attrs.frozen(kw_only=True)
class ListSessions(Request):
    """Admin: sessions in id order, `limit` at a time, after the id `after`."""

    limit: int | None = _field(Kind.UINT, None)
    after: str | None = _field(Kind.STR, None)


@_message("stats", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Stats(Request):
    """Admin: daemon health, counts and uptime."""


@_message("analytics", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Analytics(Request):
    """Admin: channel usage and workflow performance across sessions."""


@_message("run", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Run(SessionRequest):
    """Runs a workflow in the session: a worker serving `workflow` runs it.
    `resume`: join the run of this workflow in flight, or start one that
    continues from the step the session records."""

    workflow: str = _field(Kind.STR)
    inputs: dict[str, Any] | None = _field(Kind.MAP, None)
    resume: bool = _field(Kind.BOOL, False)
    token: str | None = _field(Kind.STR, None)


@_message("cancel_run", Role.REQUEST)
@attrs.frozen(kw_only=True)
class CancelRun(SessionRequest):
    """Cancels a run in flight; its worker is told with a `result` event."""

    run_id: str = _field(Kind.STR)
    token: str | None = _field(Kind.STR, None)


@_message("register", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Register(Request):
    """Makes this connection a worker serving the `workflows` named: runs of
    them arrive as `dispatch` events, at most `concurrency` at a time."""

    workflows: list[Any] = _field(Kind.LIST)
    concurrency: int = _field(Kind.UINT, 1)


@_message("heartbeat", Role.REQUEST)
@attrs.frozen(kw_only=True)
class Heartbeat(Request):
    """A worker is alive: the leases of the runs it holds are renewed."""


@_message("run_progress", Role.REQUEST)
@attrs.frozen(kw_only=True)
class RunProgress(SessionRequest):
    """A worker reports step `step` of `total` of a run it holds."""

    run_id: str = _field(Kind.STR)
    step: int = _field(Kind.UINT)
    total: int = _field(Kind.UINT)
    message: str = _field(Kind.STR, "")
    data: Any = _field(Kind.VALUE, None)


@_message("run_complete", Role.REQUEST)
@attrs.frozen(kw_only=True)
class RunComplete(SessionRequest):
    """A worker finished a run it holds, with `result` as its outputs."""

    run_id: str = _field(Kind.STR)
    result: Any = _field(Kind.VALUE, None)


@_message("run_fail", Role.REQUEST)
@attrs.frozen(kw_only=True)
class RunFail(SessionRequest):
    """A worker gives up a run it holds. `retry`: dispatch it again (another
    attempt, if any is left); otherwise the run fails with `error`."""

    run_id: str = _field(Kind.STR)
    error: str = _field(Kind.STR)
    retry: bool = _field(Kind.BOOL, False)


# ---------------------------------------------------------------- replies


@_message("pong", Role.REPLY)
@attrs.frozen(kw_only=True)
class Pong(Message):
    id: int = _field(Kind.UINT)


@_message("ok", Role.REPLY)
@attrs.frozen(kw_only=True)
class Ok(Message):
    """Success with nothing to report (detach, invalidate)."""

    id: int = _field(Kind.UINT)


@_message("error", Role.REPLY)
@attrs.frozen(kw_only=True)
class Error(Message):
    """A request failed (`id` set), or the connection did (`id` nil).

    `code` is one of `ErrorCode`; clients treat an unknown code as `internal`.
    """

    id: int | None = _field(Kind.UINT, None)
    code: str = _field(Kind.STR)
    message: str = _field(Kind.STR, "")
    retry_after: float | None = _field(Kind.FLOAT, None)


@_message("created", Role.REPLY)
@attrs.frozen(kw_only=True)
class Created(Message):
    """A new session. `token` (admin scope) is shown this once. `clamped`:
    the ttl or idle timeout asked for was above the server's bound, and the
    bound was given instead."""

    id: int = _field(Kind.UINT)
    session_id: str = _field(Kind.STR)
    token: str = _field(Kind.STR)
    seq: int = _field(Kind.UINT)
    expires_at: float = _field(Kind.FLOAT)
    idle_timeout: float | None = _field(Kind.FLOAT, None)
    clamped: bool = _field(Kind.BOOL, False)


@_message("attached", Role.REPLY)
@attrs.frozen(kw_only=True)
class Attached(Message):
    """Subscribed. `recovered`: the changes after `since` follow as `change`
    events; otherwise a `snapshot` event follows."""

    id: int = _field(Kind.UINT)
    session_id: str = _field(Kind.STR)
    seq: int = _field(Kind.UINT)
    recovered: bool = _field(Kind.BOOL)
    scope: str = _field(Kind.STR)
    presence: list[Any] = _field(Kind.LIST, attrs.Factory(list))


@_message("written", Role.REPLY)
@attrs.frozen(kw_only=True)
class Written(Message):
    """A durable change: its `seq`, and the new version of each key written."""

    id: int = _field(Kind.UINT)
    seq: int = _field(Kind.UINT)
    version: int | None = _field(Kind.UINT, None)
    versions: dict[str, int] | None = _field(Kind.VERSIONS, None)


@_message("value", Role.REPLY)
@attrs.frozen(kw_only=True)
class Value(Message):
    """One entry. A key never written has `version` 0 and nil `value`."""

    id: int = _field(Kind.UINT)
    key: str = _field(Kind.KEY)
    value: Any = _field(Kind.VALUE)
    version: int = _field(Kind.UINT)
    updated_at: float | None = _field(Kind.FLOAT, None)
    channel: str | None = _field(Kind.STR, None)


@_message("state", Role.REPLY)
@attrs.frozen(kw_only=True)
class StateReply(Message):
    """The whole session: entries, context and deadlines, as of `seq`."""

    id: int = _field(Kind.UINT)
    session_id: str = _field(Kind.STR)
    seq: int = _field(Kind.UINT)
    entries: dict[str, Any] = _field(Kind.MAP)
    context: dict[str, Any] = _field(Kind.MAP)
    created_at: float = _field(Kind.FLOAT)
    expires_at: float = _field(Kind.FLOAT)
    idle_expires_at: float | None = _field(Kind.FLOAT, None)



@_message("switched", Role.REPLY)
@attrs.frozen(kw_only=True)
class Switched(Message):
    id: int = _field(Kind.UINT)
    seq: int = _field(Kind.UINT)
    transition_id: str = _field(Kind.STR)


@_message("renewed", Role.REPLY)
@attrs.frozen(kw_only=True)
class Renewed(Message):
    """The new expiry; `clamped`: the ttl asked for was above the server's
    bound, and the bound was given instead."""

    id: int = _field(Kind.UINT)
    seq: int = _field(Kind.UINT)
    expires_at: float = _field(Kind.FLOAT)
    clamped: bool = _field(Kind.BOOL, False)


@_message("granted", Role.REPLY)
@attrs.frozen(kw_only=True)
class Granted(Message):
    id: int = _field(Kind.UINT)
    token: str = _field(Kind.STR)
    scope: str = _field(Kind.STR)


@_message("report", Role.REPLY)
@attrs.frozen(kw_only=True)
class Report(Message):
    """The answer to `summary`, `stats` and `analytics`."""

    id: int = _field(Kind.UINT)
    report: dict[str, Any] = _field(Kind.MAP)


@_message("sessions", Role.REPLY)
@attrs.frozen(kw_only=True)
class Sessions(Message):
    """A page of `list_sessions`; `after` continues it, nil at the end."""

    id: int = _field(Kind.UINT)
    sessions: list[Any] = _field(Kind.LIST)
    after: str | None = _field(Kind.STR, None)


@_message("run_started", Role.REPLY)
@attrs.frozen(kw_only=True)
class RunStarted(Message):
    id: int = _field(Kind.UINT)
    run_id: str = _field(Kind.STR)
    seq: int = _field(Kind.UINT)


@_message("registered", Role.REPLY)
@attrs.frozen(kw_only=True)
class Registered(Message):
    """This connection is a worker; heartbeat at least once per `lease` seconds."""

    id: int = _field(Kind.UINT)
    worker_id: str = _field(Kind.STR)
    lease: float = _field(Kind.FLOAT)


# ---------------------------------------------------------------- events


@_message("snapshot", Role.EVENT)
@attrs.frozen(kw_only=True)
class Snapshot(SessionEvent):
    """The whole state after an attach that could not replay history.

    `recovered` is false when the attach asked to resume (`since`) and the
    missed changes were outside the retention window; true on a fresh attach,
    where there was nothing to recover.
    """

    seq: int = _field(Kind.UINT)
    entries: dict[str, Any] = _field(Kind.MAP)
    context: dict[str, Any] = _field(Kind.MAP)
    recovered: bool = _field(Kind.BOOL)


@_message("change", Role.EVENT)
@attrs.frozen(kw_only=True)
class Change(SessionEvent):
    """One change to a session, in `seq` order. `op` says what changed:
    set, delete, patch, context, switch_begin, switch_complete, renew, run."""

    seq: int = _field(Kind.UINT)
    op: str = _field(Kind.STR)
    ts: float = _field(Kind.FLOAT)
    channel: str = _field(Kind.STR)
    writer: str = _field(Kind.STR)
    key: str | None = _field(Kind.KEY, None)
    value: Any = _field(Kind.VALUE, None)
    version: int | None = _field(Kind.UINT, None)


@_message("presence", Role.EVENT)
@attrs.frozen(kw_only=True)
class Presence(SessionEvent):
    """A connection joined or left the session (`action`: join, leave)."""

    action: str = _field(Kind.STR)
    connection_id: str = _field(Kind.STR)
    channel: str = _field(Kind.STR)
    client: str = _field(Kind.STR, "")


@_message("lagged", Role.EVENT)
@attrs.frozen(kw_only=True)
class Lagged(SessionEvent):
    """This subscriber fell behind and is detached; resume after `seq`."""

    seq: int = _field(Kind.UINT)


@_message("expired", Role.EVENT)
@attrs.frozen(kw_only=True)
class Expired(SessionEvent):
    """The session reached its deadline (`reason`: ttl, idle) and is gone."""

    reason: str = _field(Kind.STR)


@_message("invalidated", Role.EVENT)
@attrs.frozen(kw_only=True)
class Invalidated(SessionEvent):
    reason: str = _field(Kind.STR, "")


@_message("progress", Role.EVENT)
@attrs.frozen(kw_only=True)
class Progress(SessionEvent):
    """Progress of a run, to the connection that asked for it."""

    run_id: str = _field(Kind.STR)
    progress: float = _field(Kind.FLOAT)
    step: str | None = _field(Kind.STR, None)


@_message("result", Role.EVENT)
@attrs.frozen(kw_only=True)
class Result(SessionEvent):
    """A run's outcome (`status`: completed, failed, cancelled), to the
    connection that asked for it, and `cancelled` to the worker holding it."""

    run_id: str = _field(Kind.STR)
    status: str = _field(Kind.STR)
    result: Any = _field(Kind.VALUE, None)


@_message("dispatch", Role.EVENT)
@attrs.frozen(kw_only=True)
class Dispatch(SessionEvent):
    """To a worker: run `workflow` in the session. The worker holds the run
    while it heartbeats within `lease` seconds; the same run may come again
    (`attempt` + 1, same `idempotency_key`) if it did not."""

    run_id: str = _field(Kind.STR)
    workflow: str = _field(Kind.STR)
    inputs: dict[str, Any] = _field(Kind.MAP)
    attempt: int = _field(Kind.UINT)
    idempotency_key: str = _field(Kind.STR)
    lease: float = _field(Kind.FLOAT)
    resume: bool = _field(Kind.BOOL, False)
