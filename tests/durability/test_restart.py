"""A graceful restart (SIGTERM, exit 0, start again on the same data
directory) keeps everything a client relies on: sessions, their tokens and
scopes, their deadlines, and the resume window."""

from __future__ import annotations

import time
from pathlib import Path

import nexus_protocol as p
from daemon_process import daemon_process, db_check, wait_until
from raw_client import RawClient, connect_unix

RETENTION = 5


async def _sessions_listed(c: RawClient) -> dict[str, dict[str, object]]:
    listed = await c.call(p.ListSessions, limit=1000)
    assert isinstance(listed, p.Sessions), listed
    return {s["session_id"]: s for s in listed.sessions}


async def test_graceful_restart_keeps_sessions_tokens_deadlines_and_resume(
        tmp_path: Path, socket_dir: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    flags = ("--retention", str(RETENTION))

    async with daemon_process(data, socket, tmp_path / "first.log", *flags) as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket, channel="cli") as c, \
                connect_unix(socket, channel="web") as watcher:
            created = await c.call(p.Create, ttl=3600, idle_timeout=600)
            other = await c.call(p.Create, ttl=7200)
            for x in (created, other):
                assert isinstance(x, p.Created), x
            sid, token = created.session_id, created.token
            granted = await c.call(p.Grant, session_id=sid, scope="read")
            assert isinstance(granted, p.Granted)
            read_token = granted.token

            attached = await watcher.call(p.Attach, session_id=sid, token=read_token)
            assert isinstance(attached, p.Attached)
            await watcher.next_of(p.Snapshot)
            for i in range(9):
                written = await c.call(p.Set, session_id=sid, key=f"k{i % 4}",
                                       value={"i": i, "s": "x" * i})
                assert isinstance(written, p.Written), written
            for request in (p.Patch(id=c.new_id(), session_id=sid, set={"p": 1, "q": [2]},
                                    delete=["k0"]),
                            p.Delete(id=c.new_id(), session_id=sid, key="k1"),
                            p.UpdateContext(id=c.new_id(), session_id=sid,
                                            preferences={"lang": "fr"})):
                assert isinstance(await c.request(request), p.Written)
            assert isinstance(await c.call(p.Set, session_id=other.session_id, key="o",
                                           value=1), p.Written)
            seen = [await watcher.next_of(p.Change) for _ in range(12)]
            assert [ch.seq for ch in seen] == list(range(1, 13))

            # Due a few seconds after the restart, the last thing made before
            # the stop (so that a slow machine still restarts before it is
            # due): the reaper must find it.
            short = await c.call(p.Create, ttl=10)
            assert isinstance(short, p.Created), short
            before = await c.call(p.Get, session_id=sid)
            assert isinstance(before, p.StateReply) and before.seq == 12
            other_before = await c.call(p.Get, session_id=other.session_id)
            assert isinstance(other_before, p.StateReply)
        assert await daemon.terminate() == 0, daemon.log_text()
    db_check(data)

    async with daemon_process(data, socket, tmp_path / "second.log", *flags) as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket, channel="api") as c:
            # Deadlines, as the store has them, before anything touches the
            # session: the idle deadline counts from the last read before the stop.
            listed = await _sessions_listed(c)
            assert set(listed) == {sid, other.session_id, short.session_id}
            assert (listed[sid]["expires_at"], listed[sid]["idle_expires_at"]) == (
                before.expires_at, before.idle_expires_at)
            assert listed[other.session_id]["expires_at"] == other_before.expires_at
            assert listed[short.session_id]["expires_at"] == short.expires_at

            # A new connection has proven nothing: the old tokens still work,
            # with their scopes.
            for wrong in (None, token[:-2] + "xx"):
                refused = await c.call(p.Get, session_id=sid, token=wrong)
                assert isinstance(refused, p.Error) and refused.code == "unauthorized"
            async with connect_unix(socket) as reader:
                state = await reader.call(p.Get, session_id=sid, token=read_token)
                assert isinstance(state, p.StateReply)
                denied = await reader.call(p.Set, session_id=sid, key="k", value=0)
                assert isinstance(denied, p.Error) and denied.code == "forbidden"
            after = await c.call(p.Get, session_id=sid, token=token)
            assert isinstance(after, p.StateReply)
            assert (after.seq, after.entries, after.context, after.created_at,
                    after.expires_at) == (before.seq, before.entries, before.context,
                                          before.created_at, before.expires_at)
            assert after.idle_expires_at is not None and before.idle_expires_at is not None
            assert after.idle_expires_at >= before.idle_expires_at  # this read is activity
            other_after = await c.call(p.Get, session_id=other.session_id, token=other.token)
            assert isinstance(other_after, p.StateReply)
            assert (other_after.seq, other_after.entries, other_after.expires_at) == (
                other_before.seq, other_before.entries, other_before.expires_at)

            # The resume window survived: exactly the changes after N for any
            # N within the last RETENTION, byte for byte as first published.
            for since in (12 - RETENTION, 10, 12):
                attached = await c.call(p.Attach, session_id=sid, since=since)
                assert isinstance(attached, p.Attached), attached
                assert (attached.recovered, attached.seq) == (True, 12)
                replayed = [await c.next_of(p.Change) for _ in range(12 - since)]
                assert replayed == seen[since:]
                await c.no_event_within(0.05)
            # One change more than the window: a fresh snapshot, and told so.
            attached = await c.call(p.Attach, session_id=sid, since=12 - RETENTION - 1)
            assert isinstance(attached, p.Attached) and not attached.recovered
            snapshot = await c.next_of(p.Snapshot)
            assert (snapshot.seq, snapshot.recovered, snapshot.entries) == (
                12, False, before.entries)

            # Writing carries on from the same seq.
            written = await c.call(p.Set, session_id=sid, key="after", value=True)
            assert isinstance(written, p.Written) and written.seq == 13
            assert (await c.next_of(p.Change)).seq == 13

            # The short session's deadline holds across the restart: the
            # reaper expires it, dormant, through the store's index.
            async def reaped() -> bool:
                return short.session_id not in await _sessions_listed(c)
            await wait_until(reaped, "the short session reaped",
                             bound=short.expires_at - time.time() + 10, interval=0.05)
            assert time.time() >= short.expires_at - 1e-3
            gone = await c.call(p.Get, session_id=short.session_id, token=short.token)
            assert isinstance(gone, p.Error) and gone.code == "expired"
        assert await daemon.terminate() == 0, daemon.log_text()
    assert f"session {short.session_id} expired while dormant (ttl)" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()
    db_check(data)
