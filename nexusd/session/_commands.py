"""The session requests, as a table of pure functions.

Each request type has one row in `COMMANDS`: the scope it needs (checked by
the actor before anything else), whether it is a write (journaled, then
acknowledged), and a function that decides it from the session's state, the
request and a `Context` (the time, the principal's channel label and writer
name, the limits). A decision is a change to journal with the reply to send
once it is durable, or a reply alone, possibly with an effect the actor
carries out (a subscription, a new token, the session's end); a request that
cannot be served raises `RequestError` and changes nothing.

Deciding never touches the state: the actor applies the change (through
`SessionState.apply`, as replay does), journals it, acknowledges it and
publishes it. A new request type is one function here and one row below.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, ClassVar, Final

import attrs
import msgpack
from nexus_protocol import (
    Attach,
    Change,
    Delete,
    Detach,
    ErrorCode,
    Get,
    Grant,
    Granted,
    Insights,
    Invalidate,
    MergeContext,
    Message,
    Ok,
    Patch,
    Recommend,
    Renew,
    Renewed,
    Report,
    Role,
    SessionRequest,
    Set,
    StateReply,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Switched,
    Sync,
    Track,
    UpdateContext,
    Value,
    Written,
    check_value,
)

from .._auth import hash_token, new_token
from .._errors import RequestError
from ._insights import (
    InsightSettings,
    recommend,
    session_insights,
    transition_report,
    workflow_report,
)
from ._state import MAX_HISTORY, TRACK_WINDOW, SessionState

__all__ = [
    "COMMANDS",
    "AddToken",
    "Command",
    "CommandLimits",
    "Context",
    "Decision",
    "End",
    "ReadRuns",
    "RecordRun",
    "Subscribe",
    "Unsubscribe",
    "state_reply",
]


@attrs.frozen
class CommandLimits:
    """The bounds a request is checked against."""

    max_depth: int = 32
    max_patch: int = 1000
    max_keys: int = 10_000
    max_ttl: float = 30 * 86400.0
    max_context: int = 64 * 1024  # encoded bytes of one context part
    max_context_keys: int = 64  # free-form context keys (merge_context)
    max_track: int = 4096  # encoded bytes of one tracked event's data
    track_rate: int = 600  # tracked events per session per TRACK_WINDOW
    insight: InsightSettings = attrs.Factory(InsightSettings)


@attrs.frozen(slots=True)
class Context:
    """What a decision may depend on besides the state and the request."""

    now: float
    channel: str  # the principal's channel label
    writer: str  # the name its changes record
    limits: CommandLimits
    # The channels watchers are attached on now (asked only by `recommend`).
    attached: Callable[[], Collection[str]] = tuple


# ---------------------------------------------------- the daemon's requests


@attrs.frozen(kw_only=True)
class RecordRun(SessionRequest):
    """Journals a step of a workflow run (a `run` change whose value is
    `record`, stamped with its time); made by the workflows engine, never
    read from the wire. Answered `written`."""

    TAG: ClassVar[str] = "record_run"
    ROLE: ClassVar[Role] = Role.REQUEST
    record: dict[str, Any]
    token: str | None = None


@attrs.frozen(kw_only=True)
class ReadRuns(SessionRequest):
    """The session's runs (`report`: {"runs": {run_id: record}}), for the
    workflows engine; it needs write scope, as `run` does."""

    TAG: ClassVar[str] = "read_runs"
    ROLE: ClassVar[Role] = Role.REQUEST
    token: str | None = None


# ------------------------------------------------------------------ effects


@attrs.frozen
class Subscribe:
    """Attach the principal: replay after `since` (or a snapshot), then live."""

    request_id: int
    channel: str
    scope: str
    since: int | None


@attrs.frozen
class Unsubscribe:
    """Detach the principal."""


@attrs.frozen
class AddToken:
    """A new token's digest and scope; durable before the reply shows the token."""

    digest: str
    scope: str


@attrs.frozen
class End:
    """Invalidate the session: tell its watchers, delete it, end the actor."""

    reason: str


Effect = Subscribe | Unsubscribe | AddToken | End


@attrs.frozen(slots=True)
class Decision:
    """A change to journal (then `reply`), or `reply` alone; `touch` records a
    read on that channel; `effect` is carried out by the actor."""

    reply: Message | None = None
    change: Change | None = None
    touch: str | None = None
    effect: Effect | None = None
    reschedule: bool = False  # the change may bring the deadline earlier


@attrs.frozen
class Command:
    """One row of the table. `scope` is the scope needed, or a function of
    the request giving it (and refusing a bad one); None needs none."""

    decide: Callable[[SessionState, Any, Context], Decision]
    scope: str | Callable[[Any], str] | None
    write: bool = False


# ---------------------------------------------------------------- helpers


def _change(state: SessionState, ctx: Context, op: str, *, key: str | None = None,
            value: Any = None, version: int | None = None) -> Change:
    return Change(session_id=state.session_id, seq=state.seq + 1, op=op, ts=ctx.now,
                  channel=ctx.channel, writer=ctx.writer, key=key, value=value,
                  version=version)


def _check_stored(ctx: Context, name: str, value: Any, room: int = 2) -> None:
    """A stored value travels again inside `state`, `snapshot` and `change`
    messages, up to `room` levels deeper than it arrived; it must still fit
    the depth limit there."""
    limit = ctx.limits.max_depth - room
    try:
        check_value(value, limit)
    except ValueError:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"{name} nests deeper than {limit} levels, the most a "
                           "session can hold") from None


def _check_context(ctx: Context, name: str, value: Any) -> None:
    """A context part is bounded in bytes: the context travels whole in
    every `state` and `snapshot`, and a change to it is journaled whole."""
    _check_stored(ctx, name, value, room=1)
    if value is None:
        return
    size = len(msgpack.packb(value, use_bin_type=True))
    if size > ctx.limits.max_context:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"{name} takes {size} bytes; the most a context part may take "
                           f"is {ctx.limits.max_context}")


def _full(ctx: Context) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST,
                        f"the session already holds the maximum of {ctx.limits.max_keys} keys")


def _expect(state: SessionState, key: str, expect: int | None) -> None:
    if expect is None:
        return
    current = state.version_of(key)
    exists = key in state.entries
    if expect == 0 and not exists:
        return
    if not exists:
        deleted = f" (deleted at version {current})" if current else ""
        raise RequestError(ErrorCode.CONFLICT,
                           f"key {key!r} does not exist{deleted}; expected version {expect}")
    if expect != current:
        raise RequestError(ErrorCode.CONFLICT,
                           f"key {key!r} is at version {current}, not {expect}")


def state_reply(state: SessionState, request_id: int, read_at: float) -> StateReply:
    """The whole session, as a `state` reply to a read at `read_at`: its idle
    deadline counts that read, which the actor records (`touch`)."""
    idle = state.idle_timeout
    return StateReply(id=request_id, session_id=state.session_id, seq=state.seq,
                      entries=state.wire_entries(), context=state.context,
                      created_at=state.created_at, expires_at=state.expires_at,
                      idle_expires_at=(None if idle is None
                                       else max(state.last_activity, read_at) + idle))


# ---------------------------------------------------------------- writes


def _set(state: SessionState, req: Set, ctx: Context) -> Decision:
    _expect(state, req.key, req.expect)
    _check_stored(ctx, "the value", req.value)
    if req.key not in state.entries and len(state.entries) >= ctx.limits.max_keys:
        raise _full(ctx)
    version = state.version_of(req.key) + 1
    change = _change(state, ctx, "set", key=req.key, value=req.value, version=version)
    return Decision(Written(id=req.id, seq=change.seq, version=version), change)


def _delete(state: SessionState, req: Delete, ctx: Context) -> Decision:
    _expect(state, req.key, req.expect)
    if req.key not in state.entries:
        raise RequestError(ErrorCode.NOT_FOUND, f"no key {req.key!r} in the session")
    version = state.version_of(req.key) + 1
    change = _change(state, ctx, "delete", key=req.key, version=version)
    return Decision(Written(id=req.id, seq=change.seq, version=version), change)


def _patch(state: SessionState, req: Patch, ctx: Context) -> Decision:
    both = set(req.set) & set(req.delete)
    if both:
        raise RequestError(ErrorCode.BAD_REQUEST, f"keys both set and deleted: {sorted(both)}")
    if not req.set and not req.delete:
        raise RequestError(ErrorCode.BAD_REQUEST, "an empty patch")
    if len(req.set) + len(req.delete) > ctx.limits.max_patch:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"more than {ctx.limits.max_patch} keys in one patch")
    for key, expect in (req.expect or {}).items():
        _expect(state, key, expect)
    for key, v in req.set.items():
        _check_stored(ctx, f"the value of {key!r}", v)
    missing = [k for k in req.delete if k not in state.entries]
    if missing:
        raise RequestError(ErrorCode.NOT_FOUND, f"no keys {missing} in the session")
    new = sum(1 for k in req.set if k not in state.entries) - len(req.delete)
    if len(state.entries) + new > ctx.limits.max_keys:
        raise _full(ctx)
    versions = {k: state.version_of(k) + 1 for k in (*req.set, *req.delete)}
    value = {"set": req.set, "delete": req.delete, "versions": versions}
    change = _change(state, ctx, "patch", value=value)
    return Decision(Written(id=req.id, seq=change.seq, versions=versions), change)


def _update_context(state: SessionState, req: UpdateContext, ctx: Context) -> Decision:
    for part in ("preferences", "history", "metrics"):
        _check_context(ctx, part, getattr(req, part))
    context = dict(state.context)
    context["current_channel"] = req.channel or ctx.channel
    if req.preferences is not None:
        context["preferences"] = req.preferences
    if req.history is not None:
        context["history"] = req.history[-MAX_HISTORY:]
    if req.metrics is not None:
        context["metrics"] = req.metrics
    context["updated_at"] = ctx.now
    change = _change(state, ctx, "context", value=context)
    return Decision(Written(id=req.id, seq=change.seq), change)


#: Context keys the daemon writes itself; `merge_context` may not.
_OWN_KEYS: Final = frozenset({"current_channel", "updated_at"})


def _merge_context(state: SessionState, req: MergeContext, ctx: Context) -> Decision:
    own = sorted(_OWN_KEYS & set(req.values))
    if own:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"the daemon keeps {', '.join(own)}; merge_context cannot set it")
    context = dict(state.context)
    for key, value in req.values.items():
        if value is None:
            context.pop(key, None)
        else:
            context[key] = value[-MAX_HISTORY:] if key == "history" and isinstance(
                value, list) else value
    free = {k: v for k, v in context.items()
            if k not in _OWN_KEYS | {"preferences", "history", "metrics"}}
    if len(free) > ctx.limits.max_context_keys:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"the context would hold {len(free)} free-form keys; the most is "
                           f"{ctx.limits.max_context_keys}")
    for part in ("preferences", "history", "metrics"):
        if part in req.values:
            _check_context(ctx, part, req.values[part])
    _check_context(ctx, "the free-form context keys", free)
    context["current_channel"] = req.channel or state.context.get("current_channel")
    context["updated_at"] = ctx.now
    change = _change(state, ctx, "context", value=context)
    return Decision(Written(id=req.id, seq=change.seq), change)


def _track(state: SessionState, req: Track, ctx: Context) -> Decision:
    window = int(ctx.now // TRACK_WINDOW)
    if window == state.track_window and state.track_count >= ctx.limits.track_rate:
        raise RequestError(ErrorCode.BUSY,
                           f"the session tracked {state.track_count} events in this "
                           f"{TRACK_WINDOW:g} s window, the most allowed",
                           retry_after=(window + 1) * TRACK_WINDOW - ctx.now)
    _check_stored(ctx, "the event data", req.data, room=3)
    size = len(msgpack.packb(req.data, use_bin_type=True))
    if size > ctx.limits.max_track:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"the event data takes {size} bytes; the most is "
                           f"{ctx.limits.max_track}")
    change = _change(state, ctx, "track",
                     value={"event_type": req.event_type, "data": req.data})
    return Decision(Written(id=req.id, seq=change.seq), change)


def _switch_begin(state: SessionState, req: SwitchBegin, ctx: Context) -> Decision:
    current = state.context.get("current_channel")
    if req.from_channel is not None and req.from_channel != current:
        # A switch begins where the session is; a client that thinks
        # otherwise has missed a change.
        raise RequestError(
            ErrorCode.CONFLICT, f"the session's current channel is {current!r}, "
                                f"not {req.from_channel!r}: cannot switch from it")
    _check_context(ctx, "context", req.context)
    transition_id = new_token()[4:20]
    transition = {
        "transition_id": transition_id,
        "from_channel": current,
        "to_channel": req.to_channel,
        "reason": req.reason or "user_requested",
        "context": req.context or {},
        "started_at": ctx.now, "completed_at": None, "success": None,
    }
    change = _change(state, ctx, "switch_begin", value=transition)
    return Decision(Switched(id=req.id, seq=change.seq, transition_id=transition_id), change)


def _switch_complete(state: SessionState, req: SwitchComplete, ctx: Context) -> Decision:
    for t in state.transitions:
        if t["transition_id"] == req.transition_id:
            break
    else:
        raise RequestError(ErrorCode.NOT_FOUND,
                           f"no transition {req.transition_id!r} in the session")
    if t["completed_at"] is not None:
        raise RequestError(ErrorCode.CONFLICT,
                           f"transition {req.transition_id!r} is already complete")
    done = {**t, "completed_at": ctx.now, "success": req.success,
            "duration": ctx.now - t["started_at"]}
    change = _change(state, ctx, "switch_complete", value=done)
    return Decision(Switched(id=req.id, seq=change.seq, transition_id=req.transition_id),
                    change)


def _renew(state: SessionState, req: Renew, ctx: Context) -> Decision:
    ttl = state.ttl if req.ttl is None else req.ttl
    if not ttl > 0:
        raise RequestError(ErrorCode.BAD_REQUEST, f"ttl must be above 0, not {ttl:g}")
    clamped = ttl > ctx.limits.max_ttl
    expires_at = ctx.now + min(ttl, ctx.limits.max_ttl)
    change = _change(state, ctx, "renew", value={"expires_at": expires_at})
    return Decision(Renewed(id=req.id, seq=change.seq, expires_at=expires_at,
                            clamped=clamped), change, reschedule=True)


# ----------------------------------------------------------------- reads


def _get(state: SessionState, req: Get, ctx: Context) -> Decision:
    if req.key is None:
        return Decision(state_reply(state, req.id, ctx.now), touch=ctx.channel)
    entry = state.entries.get(req.key)
    if entry is None:
        return Decision(Value(id=req.id, key=req.key, value=None,
                              version=state.version_of(req.key)), touch=ctx.channel)
    return Decision(Value(id=req.id, key=req.key, value=entry.value, version=entry.version,
                          updated_at=entry.updated_at, channel=entry.channel),
                    touch=ctx.channel)


def _sync(state: SessionState, req: Sync, ctx: Context) -> Decision:
    return Decision(state_reply(state, req.id, ctx.now), touch=req.channel)


def _summary(state: SessionState, req: Summary, ctx: Context) -> Decision:
    report = state.summary(ctx.now)
    report["transition_analytics"] = transition_report(state.switch_pairs)
    report["performance"] = workflow_report(state.workflows)
    return Decision(Report(id=req.id, report=report))


def _insights(state: SessionState, req: Insights, ctx: Context) -> Decision:
    found = session_insights(state, ctx.now, ctx.limits.insight)
    return Decision(Report(id=req.id, report={"session_id": state.session_id,
                                              "insights": found}))


def _recommend(state: SessionState, req: Recommend, ctx: Context) -> Decision:
    choice = recommend(state, req.task_type, req.experience, ctx.attached(), ctx.now,
                       ctx.limits.insight)
    return Decision(Report(id=req.id, report={"session_id": state.session_id,
                                              "task_type": req.task_type, **choice}))


# ------------------------------------------------------------------- runs


def _record_run(state: SessionState, req: RecordRun, ctx: Context) -> Decision:
    record = req.record
    run = state.runs.get(record["run_id"])
    if record["event"] == "started":
        if run is not None:
            raise RequestError(ErrorCode.CONFLICT, f"run {record['run_id']!r} exists already")
        _check_stored(ctx, "the run's inputs", record.get("inputs"))
    elif run is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"no run {record['run_id']!r} in the session")
    elif run["status"] != "running":
        raise RequestError(ErrorCode.CONFLICT,
                           f"run {record['run_id']!r} has ended ({run['status']})")
    else:
        _check_stored(ctx, "the run's data", record)
    change = _change(state, ctx, "run", value={**record, "ts": ctx.now})
    return Decision(Written(id=req.id, seq=change.seq), change)


def _read_runs(state: SessionState, req: ReadRuns, ctx: Context) -> Decision:
    return Decision(Report(id=req.id, report={"seq": state.seq, "runs": dict(state.runs)}))


# ---------------------------------------------------- subscriptions, admin


def _attach_scope(req: Attach) -> str:
    if req.scope not in ("read", "write"):
        raise RequestError(ErrorCode.BAD_REQUEST, "scope must be read or write")
    return req.scope


def _attach(state: SessionState, req: Attach, ctx: Context) -> Decision:
    return Decision(effect=Subscribe(req.id, req.channel or ctx.channel, req.scope, req.since))


def _detach(state: SessionState, req: Detach, ctx: Context) -> Decision:
    return Decision(Ok(id=req.id), effect=Unsubscribe())


def _grant(state: SessionState, req: Grant, ctx: Context) -> Decision:
    if req.scope not in ("read", "write", "admin"):
        raise RequestError(ErrorCode.BAD_REQUEST, "scope must be one of read, write, admin")
    token = new_token()
    return Decision(Granted(id=req.id, token=token, scope=req.scope),
                    effect=AddToken(hash_token(token), req.scope))


def _invalidate(state: SessionState, req: Invalidate, ctx: Context) -> Decision:
    return Decision(Ok(id=req.id), effect=End(req.reason or ""))


COMMANDS: Final[dict[type[SessionRequest], Command]] = {
    Set: Command(_set, "write", write=True),
    Delete: Command(_delete, "write", write=True),
    Patch: Command(_patch, "write", write=True),
    UpdateContext: Command(_update_context, "write", write=True),
    MergeContext: Command(_merge_context, "write", write=True),
    Track: Command(_track, "write", write=True),
    SwitchBegin: Command(_switch_begin, "write", write=True),
    SwitchComplete: Command(_switch_complete, "write", write=True),
    Renew: Command(_renew, "write", write=True),
    RecordRun: Command(_record_run, "write", write=True),
    ReadRuns: Command(_read_runs, "write"),
    Get: Command(_get, "read"),
    Sync: Command(_sync, "read"),
    Summary: Command(_summary, "read"),
    Insights: Command(_insights, "read"),
    Recommend: Command(_recommend, "read"),
    Attach: Command(_attach, _attach_scope),
    Detach: Command(_detach, None),
    Grant: Command(_grant, "admin"),
    Invalidate: Command(_invalidate, "admin"),
}
