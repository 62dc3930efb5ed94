"""Tokens and scopes on session requests; the admin credential on daemon-wide
ones; tokens kept only as hashes."""

from __future__ import annotations

from pathlib import Path

import nexus_protocol as p
from raw_client import connect_unix, connect_ws

from nexusd import Daemon
from nexusd._daemon import read_or_create_admin_key

WRONG = "nxs_" + "A" * 43


async def test_session_requests_need_a_valid_token(daemon: Daemon,
                                                   autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with connect_unix(daemon.socket_path) as owner:
        created = await owner.call(p.Create)
        assert isinstance(created, p.Created)
        sid = created.session_id
        await owner.call(p.Set, session_id=sid, key="k", value="v")

        # Another connection (even the daemon's own user, over the Unix
        # socket) has proven nothing for this session.
        async with (connect_unix(daemon.socket_path) as unix,
                    connect_ws(daemon.ws_port) as ws):
            for c in (unix, ws):
                for token in (None, WRONG, created.token[:-1]):
                    for request, fields in ((p.Get, {}), (p.Attach, {}),
                                            (p.Set, {"key": "k", "value": "x"}),
                                            (p.Summary, {}), (p.Grant, {"scope": "admin"})):
                        if c is unix and token is None and request is p.Grant:
                            continue  # the daemon's admin may (see below)
                        error = await c.call(request, session_id=sid, token=token, **fields)
                        assert isinstance(error, p.Error), (request, token, error)
                        assert error.code == "unauthorized", (request, token, error)
                # A token of another session is no good here either.
                other = await owner.call(p.Create)
                assert isinstance(other, p.Created)
                error = await c.call(p.Get, session_id=sid, token=other.token)
                assert isinstance(error, p.Error) and error.code == "unauthorized"
            # None of it was a subscription or a change.
            assert unix.pending_events() == ws.pending_events() == []
            # The daemon's own user (admin over the Unix socket) needs no token
            # for a session's admin requests, such as minting a token.
            assert unix.welcome is not None and unix.welcome.admin
            granted = await unix.call(p.Grant, session_id=sid, scope="read")
            assert isinstance(granted, p.Granted)
        value = await owner.call(p.Get, session_id=sid, key="k")
        assert isinstance(value, p.Value) and (value.value, value.version) == ("v", 1)


async def test_read_scope_reads_but_cannot_write(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with connect_unix(daemon.socket_path) as owner:
        created = await owner.call(p.Create)
        assert isinstance(created, p.Created)
        sid = created.session_id
        granted = await owner.call(p.Grant, session_id=sid, scope="read")
        assert isinstance(granted, p.Granted) and granted.scope == "read"
        read_token = granted.token
        assert read_token != created.token
        await owner.call(p.Set, session_id=sid, key="k", value="v")

        async with connect_ws(daemon.ws_port) as reader:
            state = await reader.call(p.Get, session_id=sid, token=read_token)
            assert isinstance(state, p.StateReply) and state.entries["k"]["value"] == "v"
            attached = await reader.call(p.Attach, session_id=sid, token=read_token)
            assert isinstance(attached, p.Attached) and attached.scope == "read"
            await reader.next_of(p.Snapshot)
            for request, fields in ((p.Set, {"key": "k", "value": "x"}),
                                    (p.Delete, {"key": "k"}),
                                    (p.Patch, {"set": {"k": "x"}}),
                                    (p.UpdateContext, {"preferences": {}}),
                                    (p.Grant, {"scope": "write"}),
                                    (p.Invalidate, {})):
                error = await reader.call(request, session_id=sid, token=read_token, **fields)
                assert isinstance(error, p.Error), (request, error)
                assert error.code == "forbidden", (request, error)
            error = await reader.call(p.Attach, session_id=sid, token=read_token, scope="write")
            assert isinstance(error, p.Error) and error.code == "forbidden"
            # A write token, shown on the same connection, does allow writes.
            granted = await owner.call(p.Grant, session_id=sid, scope="write")
            assert isinstance(granted, p.Granted)
            written = await reader.call(p.Set, session_id=sid, key="k", value="w",
                                        token=granted.token)
            assert isinstance(written, p.Written) and written.seq == 2
            change = await reader.next_of(p.Change)
            assert (change.seq, change.value) == (2, "w")
            # A wrong token is refused even on a connection that proved a good one.
            error = await reader.call(p.Set, session_id=sid, key="k", value="z", token=WRONG)
            assert isinstance(error, p.Error) and error.code == "unauthorized"
        value = await owner.call(p.Get, session_id=sid, key="k")
        assert isinstance(value, p.Value) and (value.value, value.version) == ("w", 2)


async def test_daemon_wide_requests_need_the_admin_credential(daemon: Daemon,
                                                              autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port and daemon.admin_key
    async with connect_unix(daemon.socket_path) as owner:
        created = await owner.call(p.Create)
        assert isinstance(created, p.Created)

    async with connect_ws(daemon.ws_port) as anonymous:
        assert anonymous.welcome is not None and not anonymous.welcome.admin
        for request in (p.Stats, p.ListSessions, p.Analytics):
            error = await anonymous.call(request)
            assert isinstance(error, p.Error) and error.code == "forbidden", (request, error)
        # Anyone may create a session and ping.
        assert isinstance(await anonymous.call(p.Ping), p.Pong)
        assert isinstance(await anonymous.call(p.Create), p.Created)

    async with connect_ws(daemon.ws_port, credential=daemon.admin_key) as admin:
        assert admin.welcome is not None and admin.welcome.admin
        stats = await admin.call(p.Stats)
        assert isinstance(stats, p.Report) and stats.report["sessions_stored"] == 2
        sessions = await admin.call(p.ListSessions)
        assert isinstance(sessions, p.Sessions)
        assert created.session_id in {s["session_id"] for s in sessions.sessions}
        assert isinstance(await admin.call(p.Analytics), p.Report)
        # The admin credential also reaches into any session.
        error = await admin.call(p.Invalidate, session_id=created.session_id)
        assert isinstance(error, p.Ok)

    async with connect_ws(daemon.ws_port, hello=False) as intruder:
        refusal = await intruder.hello(credential=daemon.admin_key + "x")
        assert isinstance(refusal, p.Error)
        assert (refusal.id, refusal.code) == (None, "unauthorized")
        assert await intruder.wait_closed() == []

    # The daemon's own user on the Unix socket is the admin.
    async with connect_unix(daemon.socket_path) as local:
        assert local.welcome is not None and local.welcome.admin
        assert isinstance(await local.call(p.Stats), p.Report)


async def test_tokens_are_stored_only_as_hashes(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as owner:
        created = await owner.call(p.Create)
        assert isinstance(created, p.Created)
        sid = created.session_id
        tokens = [created.token]
        for scope in ("read", "write", "admin"):
            granted = await owner.call(p.Grant, session_id=sid, scope=scope)
            assert isinstance(granted, p.Granted)
            tokens.append(granted.token)
        await owner.call(p.Set, session_id=sid, key="k", value="v")
        assert len(set(tokens)) == 4

    loaded = await daemon.store.load(sid)
    assert loaded is not None
    stored = [repr(loaded.meta).encode(), loaded.snapshot or b"",
              *(e.payload for e in (*loaded.history, *loaded.events))]
    for token in tokens:
        for blob in stored:
            assert token.encode() not in blob
            assert token[4:].encode() not in blob
    # One digest per token, each with its scope.
    assert sorted(loaded.meta.tokens.values()) == ["admin", "admin", "read", "write"]
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in loaded.meta.tokens)


def test_a_new_admin_key_is_never_read_as_a_command_line_flag(tmp_path: Path) -> None:
    # A key starting with "-" would make `nexus status --admin-key KEY` fail
    # to parse; random URL-safe text starts with "-" once in 64 draws.
    keys = [read_or_create_admin_key(tmp_path / str(i)) for i in range(400)]
    assert len(set(keys)) == len(keys)
    assert not [k for k in keys if k.startswith("-")]
    # The key is kept: the daemon's next start reads the same one.
    assert read_or_create_admin_key(tmp_path / "0") == keys[0]
