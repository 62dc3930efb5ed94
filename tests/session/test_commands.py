"""Deciding a request is a pure function of the session's state and the
request: the decision says what would change, and nothing changes until the
actor applies it."""

from __future__ import annotations

import nexus_protocol as p
import pytest

from nexusd._errors import RequestError
from nexusd.session._commands import COMMANDS, CommandLimits, Context, ReadRuns, RecordRun
from nexusd.session._state import SessionState

NOW = 1_000.0


def _state() -> SessionState:
    return SessionState("s", NOW - 100, "api", 3600.0, NOW + 3500, 600.0)


def _ctx(limits: CommandLimits | None = None) -> Context:
    return Context(NOW, "cli", "term", limits or CommandLimits())


def _decide(state: SessionState, request: p.Message, ctx: Context | None = None):  # type: ignore[no-untyped-def]
    return COMMANDS[type(request)].decide(state, request, ctx or _ctx())


def test_a_write_decides_a_change_and_leaves_the_state_alone() -> None:
    state = _state()
    before = state.to_snapshot()
    decision = _decide(state, p.Set(id=7, session_id="s", key="k", value={"a": 1}))
    assert state.to_snapshot() == before
    change = decision.change
    assert change is not None
    assert (change.seq, change.op, change.key, change.version, change.channel,
            change.writer, change.ts) == (1, "set", "k", 1, "cli", "term", NOW)
    assert decision.reply == p.Written(id=7, seq=1, version=1)
    state.apply(change)
    assert state.entries["k"].value == {"a": 1} and state.seq == 1


def test_a_refused_request_raises_and_decides_nothing() -> None:
    state = _state()
    with pytest.raises(RequestError) as refused:
        _decide(state, p.Set(id=1, session_id="s", key="k", value=1, expect=3))
    assert refused.value.code is p.ErrorCode.CONFLICT
    with pytest.raises(RequestError) as refused:
        _decide(state, p.Set(id=1, session_id="s", key="new", value=1),
                _ctx(CommandLimits(max_keys=0)))
    assert refused.value.code is p.ErrorCode.BAD_REQUEST
    assert state.seq == 0 and state.entries == {}


def test_a_read_replies_as_of_the_read_it_records() -> None:
    state = _state()
    decision = _decide(state, p.Get(id=3, session_id="s"))
    assert decision.change is None and decision.touch == "cli"
    reply = decision.reply
    assert isinstance(reply, p.StateReply)
    assert reply.idle_expires_at == NOW + 600.0  # the read itself counts as activity
    state.touch("cli", NOW, read=True)
    assert state.idle_expires_at == reply.idle_expires_at


def test_each_row_declares_the_scope_its_request_needs() -> None:
    scopes = {cls: row.scope for cls, row in COMMANDS.items() if isinstance(row.scope, str)}
    assert {scopes[c] for c in (p.Get, p.Sync, p.Summary, p.Insights, p.Recommend)} == {"read"}
    assert {scopes[c] for c in (p.Set, p.Delete, p.Patch, p.UpdateContext, p.SwitchBegin,
                                p.SwitchComplete, p.Renew, p.MergeContext, p.Track)
            } == {"write"}
    assert scopes[p.Grant] == scopes[p.Invalidate] == "admin"
    assert COMMANDS[p.Detach].scope is None
    attach_scope = COMMANDS[p.Attach].scope
    assert callable(attach_scope)
    assert attach_scope(p.Attach(id=1, session_id="s", scope="write")) == "write"
    with pytest.raises(RequestError):
        attach_scope(p.Attach(id=1, session_id="s", scope="admin"))
    writes = {cls for cls, row in COMMANDS.items() if row.write}
    assert writes == {p.Set, p.Delete, p.Patch, p.UpdateContext, p.SwitchBegin,
                      p.SwitchComplete, p.Renew, p.MergeContext, p.Track, RecordRun}
    # A run's records and reads need what `run` needs.
    assert scopes[RecordRun] == scopes[ReadRuns] == "write"
