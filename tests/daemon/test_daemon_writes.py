"""Writes: optimistic concurrency, atomic patches, context and channel
transitions, and the channel analytics they feed."""

from __future__ import annotations

import nexus_protocol as p
from raw_client import RawClient, connect_unix

from nexusd import Daemon


async def _session(c: RawClient, **fields: object) -> tuple[str, str]:
    created = await c.call(p.Create, **fields)
    assert isinstance(created, p.Created)
    return created.session_id, created.token


async def _value(c: RawClient, sid: str, key: str) -> tuple[object, int]:
    value = await c.call(p.Get, session_id=sid, key=key)
    assert isinstance(value, p.Value)
    return value.value, value.version


async def test_stale_expect_is_a_conflict_and_changes_nothing(daemon: Daemon,
                                                              autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, _ = await _session(c)
        # expect=0: "only if absent" succeeds on a missing key...
        written = await c.call(p.Set, session_id=sid, key="doc", value="v1", expect=0)
        assert isinstance(written, p.Written) and written.version == 1
        # ...and is a conflict once the key exists.
        error = await c.call(p.Set, session_id=sid, key="doc", value="again", expect=0)
        assert isinstance(error, p.Error) and error.code == "conflict"
        written = await c.call(p.Set, session_id=sid, key="doc", value="v2", expect=1)
        assert isinstance(written, p.Written)
        assert (written.seq, written.version) == (2, 2)

        # A writer still holding version 1 is told, and overwrites nothing.
        error = await c.call(p.Set, session_id=sid, key="doc", value="stale", expect=1)
        assert isinstance(error, p.Error) and error.code == "conflict"
        assert "version 2" in error.message
        assert await _value(c, sid, "doc") == ("v2", 2)
        error = await c.call(p.Delete, session_id=sid, key="doc", expect=1)
        assert isinstance(error, p.Error) and error.code == "conflict"
        assert await _value(c, sid, "doc") == ("v2", 2)
        # Expecting a version on a key that does not exist is a conflict too.
        error = await c.call(p.Set, session_id=sid, key="nope", value=1, expect=3)
        assert isinstance(error, p.Error) and error.code == "conflict"
        # None of the refused writes took a seq.
        state = await c.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert state.seq == 2 and set(state.entries) == {"doc"}


async def test_versions_never_go_back_after_a_delete(daemon: Daemon,
                                                     autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, _ = await _session(c)
        for expected in (1, 2):
            written = await c.call(p.Set, session_id=sid, key="k", value=expected)
            assert isinstance(written, p.Written) and written.version == expected
        deleted = await c.call(p.Delete, session_id=sid, key="k", expect=2)
        assert isinstance(deleted, p.Written) and deleted.version == 3
        assert await _value(c, sid, "k") == (None, 3)
        # Deleting what is gone is "not found", not a new version.
        error = await c.call(p.Delete, session_id=sid, key="k")
        assert isinstance(error, p.Error) and error.code == "not_found"
        # Written again: version 4, so a writer holding 1 or 2 still conflicts.
        written = await c.call(p.Set, session_id=sid, key="k", value="back", expect=0)
        assert isinstance(written, p.Written) and written.version == 4
        for stale in (1, 2):
            error = await c.call(p.Set, session_id=sid, key="k", value="x", expect=stale)
            assert isinstance(error, p.Error) and error.code == "conflict"
        assert await _value(c, sid, "k") == ("back", 4)


async def test_patch_is_all_or_nothing(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with (connect_unix(daemon.socket_path, channel="api", client="w") as c,
                connect_unix(daemon.socket_path) as sub):
        sid, token = await _session(c)
        await c.call(p.Set, session_id=sid, key="a", value=1)
        await c.call(p.Set, session_id=sid, key="b", value=2)
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)

        # One stale expectation among good ones: nothing at all changes.
        error = await c.call(p.Patch, session_id=sid, set={"a": 10, "c": 30}, delete=["b"],
                             expect={"a": 1, "b": 5})
        assert isinstance(error, p.Error) and error.code == "conflict"
        # Deleting a key that is not there spoils the whole patch too.
        error = await c.call(p.Patch, session_id=sid, set={"a": 10}, delete=["zz"])
        assert isinstance(error, p.Error) and error.code == "not_found"
        state = await c.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert state.seq == 2
        assert {k: (e["value"], e["version"]) for k, e in state.entries.items()} == {
            "a": (1, 1), "b": (2, 1)}
        await sub.no_event_within(1.0)

        written = await c.call(p.Patch, session_id=sid, set={"a": 10, "c": 30}, delete=["b"],
                               expect={"a": 1, "b": 1, "c": 0})
        assert isinstance(written, p.Written)
        assert written.seq == 3
        assert written.versions == {"a": 2, "c": 1, "b": 2}
        # Subscribers see one change for the whole patch.
        change = await sub.next_of(p.Change)
        assert (change.seq, change.op, change.channel, change.writer) == (3, "patch", "api", "w")
        assert change.value == {"set": {"a": 10, "c": 30}, "delete": ["b"],
                                "versions": {"a": 2, "c": 1, "b": 2}}
        await sub.no_event_within(1.0)
        state = await c.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert {k: (e["value"], e["version"]) for k, e in state.entries.items()} == {
            "a": (10, 2), "c": (30, 1)}


async def test_context_and_channel_switches_are_changes(daemon: Daemon,
                                                        autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with (connect_unix(daemon.socket_path, channel="web") as c,
                connect_unix(daemon.socket_path, channel="cli") as sub):
        sid, token = await _session(c)
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)

        written = await c.call(p.UpdateContext, session_id=sid,
                               preferences={"theme": "dark"}, metrics={"clicks": 3})
        assert isinstance(written, p.Written) and written.seq == 1
        change = await sub.next_of(p.Change)
        assert (change.seq, change.op, change.channel) == (1, "context", "web")
        assert change.value["preferences"] == {"theme": "dark"}
        assert change.value["metrics"] == {"clicks": 3}
        assert change.value["current_channel"] == "web"

        switched = await c.call(p.SwitchBegin, session_id=sid, to_channel="mobile",
                                reason="user_requested", context={"page": 4})
        assert isinstance(switched, p.Switched) and switched.seq == 2
        change = await sub.next_of(p.Change)
        assert (change.seq, change.op) == (2, "switch_begin")
        assert change.value["transition_id"] == switched.transition_id
        assert (change.value["from_channel"], change.value["to_channel"]) == ("web", "mobile")
        assert change.value["completed_at"] is None

        done = await c.call(p.SwitchComplete, session_id=sid,
                            transition_id=switched.transition_id, success=True)
        assert isinstance(done, p.Switched) and done.seq == 3
        change = await sub.next_of(p.Change)
        assert (change.seq, change.op) == (3, "switch_complete")
        assert change.value["success"] is True and change.value["completed_at"] is not None
        # Completing it twice is a conflict, and an unknown one is not found.
        error = await c.call(p.SwitchComplete, session_id=sid,
                             transition_id=switched.transition_id)
        assert isinstance(error, p.Error) and error.code == "conflict"
        error = await c.call(p.SwitchComplete, session_id=sid, transition_id="nope")
        assert isinstance(error, p.Error) and error.code == "not_found"
        await sub.no_event_within(1.0)

        state = await c.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert state.context["current_channel"] == "mobile"
        assert state.context["preferences"] == {"theme": "dark"}

        # A sync from the MCP channel is recorded in the session's analytics.
        synced = await c.call(p.Sync, session_id=sid, channel="mcp")
        assert isinstance(synced, p.StateReply) and synced.seq == 3
        report = await c.call(p.Summary, session_id=sid)
        assert isinstance(report, p.Report)
        summary = report.report
        assert "mcp" in summary["channels_used"]
        assert {"web", "cli", "mcp"} <= set(summary["channels_used"])
        assert summary["channel_activity"]["mcp"]["reads"] == 1
        assert summary["event_breakdown"] == {"context": 1, "switch_begin": 1,
                                              "switch_complete": 1}
        assert summary["last_successful_channel"] == "mobile"
        assert summary["transition_success_rate"] == 1.0
        assert summary["seq"] == 3


async def test_a_switch_from_another_channel_than_the_current_is_a_conflict(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with (connect_unix(daemon.socket_path, channel="web") as c,
                connect_unix(daemon.socket_path, channel="cli") as sub):
        sid, token = await _session(c)  # created on "web": its current channel
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)

        error = await c.call(p.SwitchBegin, session_id=sid, from_channel="cli",
                             to_channel="mcp")
        assert isinstance(error, p.Error) and error.code == "conflict"
        assert error.message == ("the session's current channel is 'web', not 'cli': "
                                 "cannot switch from it")
        # Nothing changed: no transition, no change seen, the same seq.
        state = await c.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert (state.seq, state.context["current_channel"]) == (0, "web")
        await sub.no_event_within(1.0)

        # Named right, it begins; completed, the current channel moves on.
        begun = await c.call(p.SwitchBegin, session_id=sid, from_channel="web",
                             to_channel="cli")
        assert isinstance(begun, p.Switched) and begun.seq == 1
        done = await c.call(p.SwitchComplete, session_id=sid, transition_id=begun.transition_id)
        assert isinstance(done, p.Switched)
        error = await c.call(p.SwitchBegin, session_id=sid, from_channel="web",
                             to_channel="mcp")
        assert isinstance(error, p.Error) and error.code == "conflict"
        assert "is 'cli', not 'web'" in error.message
