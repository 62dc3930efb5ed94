"""Watch: ordered delivery, resume without gaps or duplicates, slow consumers."""

from __future__ import annotations

import nexus_client as nc
import pytest
import trio
import trio.testing
from nexus_protocol import Message

from .fakeserver import FakeServer

FIXED = nc.Backoff(base=1.0, max_delay=8.0, max_attempts=10, jitter=lambda: 0.5)


async def next_event(events: nc.Watch, *skip: type[Message]) -> Message:
    """The next event that is not of a type in `skip`."""
    while True:
        event = await events.__anext__()
        if not isinstance(event, skip):
            return event


async def changes(events: nc.Watch, n: int) -> list[nc.Change]:
    out = []
    while len(out) < n:
        event = await next_event(events, nc.Presence)
        assert isinstance(event, nc.Change), event
        out.append(event)
    return out


async def test_fresh_watch_starts_with_a_snapshot(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        await c.set(sid, "a", 1)
        async with c.watch(sid) as events:
            snap = await events.__anext__()
            assert isinstance(snap, nc.Snapshot)
            assert (snap.seq, snap.recovered, snap.entries["a"]["value"]) == (1, True, 1)
            join = await events.__anext__()
            assert isinstance(join, nc.Presence) and join.action == "join"
            assert join.connection_id == c.connection_id
            await c.set(sid, "b", 2)
            await server.write(sid, "c", 3)
            got = await changes(events, 2)
            assert [(e.seq, e.key, e.value) for e in got] == [(2, "b", 2), (3, "c", 3)]
            assert events.cursor == 3
            assert events.attached is not None and events.attached.scope == "read"
        # Leaving detaches.
        await server.wait_for(lambda: bool(server.requests_of("detach")))
        assert server.sessions[sid].subscribers == {}


async def test_watch_with_since_replays_the_missed_changes(server: FakeServer,
                                                           sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        for i in range(5):
            await c.set(sid, "k", i)
        async with c.watch(sid, since=2) as events:
            got = await changes(events, 3)
            assert [e.seq for e in got] == [3, 4, 5]
            assert events.attached is not None and events.attached.recovered


async def test_resume_after_a_drop_has_no_gap_and_no_duplicate(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    server.overlap = 2  # the daemon re-sends two changes the client already has
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)  # the snapshot
            for i in range(3):
                await server.write(sid, "k", i)
            assert [e.seq for e in await changes(events, 3)] == [1, 2, 3]

            server.stop_listening()
            server.drop_connections()
            await trio.testing.wait_all_tasks_blocked()
            await server.write(sid, "k", 3)  # missed while disconnected
            await server.write(sid, "k", 4)
            await server.listen(sock_path)

            resumed = await changes(events, 2)
            assert [(e.seq, e.value) for e in resumed] == [(4, 3), (5, 4)]
            await server.write(sid, "k", 5)
            assert [e.seq for e in await changes(events, 1)] == [6]

            attaches = server.requests_of("attach")
            assert [a.since for a in attaches] == [None, 3]  # type: ignore[attr-defined]
            stats = events.statistics()
            assert stats.duplicates_dropped == 2 and stats.attaches == 2 and stats.live


async def test_resume_beyond_retention_yields_snapshot_not_recovered(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            await server.write(sid, "a", 1)
            await changes(events, 1)

            server.drop_connections()
            await trio.testing.wait_all_tasks_blocked()
            await server.write(sid, "a", 2)
            await server.write(sid, "b", 3)
            server.forget_history(sid)

            snap = await next_event(events, nc.Presence)
            assert isinstance(snap, nc.Snapshot)
            assert snap.recovered is False
            assert snap.seq == 3
            assert {k: e["value"] for k, e in snap.entries.items()} == {"a": 2, "b": 3}
            await server.write(sid, "a", 4)
            assert [e.seq for e in await changes(events, 1)] == [4]


async def test_lagged_watch_resumes_from_its_cursor(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            await server.write(sid, "k", 1)
            await changes(events, 1)
            await server.lag(sid)
            await server.write(sid, "k", 2)  # sent to nobody: the watch was dropped
            await server.write(sid, "k", 3)
            assert [e.seq for e in await changes(events, 2)] == [2, 3]
            assert events.statistics().lagged == 1
            assert [a.since for a in server.requests_of("attach")] == [  # type: ignore[attr-defined]
                None, 1]


async def test_a_resume_answered_unavailable_is_retried_as_the_daemon_says(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            await server.write(sid, "k", 1)
            await changes(events, 1)
            # The session's daemon is being replaced: resumes fail for a while.
            server.inject("attach", "unavailable", "the daemon that had it stopped; retry",
                          retry_after=1.5, times=2)
            await server.lag(sid)
            await server.write(sid, "k", 2)
            started = trio.current_time()
            assert [e.seq for e in await changes(events, 1)] == [2]
            assert trio.current_time() - started >= 3.0  # twice retry_after
            assert [a.since for a in server.requests_of("attach")] == [  # type: ignore[attr-defined]
                None, 1, 1, 1]


async def test_a_first_attach_answered_unavailable_is_the_callers_to_retry(
        server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        server.inject("attach", "unavailable", "not now", retry_after=1.0)
        with pytest.raises(nc.Unavailable):
            async with c.watch(sid) as events:
                await next_event(events)


async def test_slow_consumer_overflows_then_catches_up_without_gaps(
        server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        other = nc.open_client(sock_path)
        async with other, c.watch(sid, buffer=3) as events:
            assert isinstance(await events.__anext__(), nc.Snapshot)
            # Nobody reads `events` while 20 changes arrive: the buffer
            # overflows, and the reader task must not block on it.
            for i in range(20):
                await other.set(sid, "k", i, token=c.token_for(sid))
            await other.ping()
            await c.ping()  # the reader got past all of them
            assert events.statistics().overflows >= 1

            seen = [e.seq for e in await changes(events, 20)]
            assert seen == list(range(1, 21))
            assert events.statistics().attaches > 1


async def test_watch_ends_with_expired(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            await server.write(sid, "k", 1)
            await server.end(sid, "expired", "idle")
            seen = [e async for e in events]
            assert isinstance(seen[-1], nc.Expired) and seen[-1].reason == "idle"
            assert [type(e) for e in seen[:-1]] == [nc.Presence, nc.Change]
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()


async def test_watch_ends_with_invalidated(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            await c.invalidate(sid, reason="logout")
            last = await next_event(events, nc.Presence)
            assert isinstance(last, nc.Invalidated) and last.reason == "logout"
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()


async def test_session_ended_while_disconnected(server: FakeServer, sock_path: str,
                                                autojump_clock: trio.testing.MockClock
                                                ) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            server.drop_connections()
            await trio.testing.wait_all_tasks_blocked()
            await server.end(sid, "expired")
            with pytest.raises(nc.SessionExpired):
                await next_event(events, nc.Presence)


async def test_watch_raises_when_the_client_gives_up(server: FakeServer, sock_path: str,
                                                     autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    policy = nc.Backoff(base=1.0, max_attempts=2, jitter=lambda: 1.0)
    async with nc.open_client(sock_path, reconnect=policy) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)
            server.stop_listening()
            server.drop_connections()
            with pytest.raises(nc.ConnectionLost, match="gave up"):
                await next_event(events, nc.Presence)


async def test_watch_errors_surface_on_entry(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        with pytest.raises(nc.SessionNotFound):
            async with c.watch("missing", token="t"):
                pass  # pragma: no cover
        sid = server.add_session(token="tok_x")
        with pytest.raises(nc.Unauthorized):
            async with c.watch(sid):
                pass  # pragma: no cover
        async with c.watch(sid, token="tok_x") as events:
            assert isinstance(await events.__anext__(), nc.Snapshot)


async def test_one_watch_per_session_per_client(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        async with c.watch(sid):
            with pytest.raises(trio.BusyResourceError):
                async with c.watch(sid):
                    pass  # pragma: no cover
        # Once the first one has left, a new one attaches (after its detach).
        async with c.watch(sid) as events:
            assert isinstance(await events.__anext__(), nc.Snapshot)
        assert [r.TAG for _, r in server.requests if r.TAG in ("attach", "detach")] == [
            "attach", "detach", "attach", "detach"]


async def test_iterating_outside_the_block_is_an_error(server: FakeServer,
                                                       sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        watch = c.watch(sid)
        with pytest.raises(RuntimeError):
            await watch.__anext__()
        async with watch:
            pass
        with pytest.raises(RuntimeError):
            await watch.__anext__()


async def test_presence_of_other_connections(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c, nc.open_client(sock_path, channel="mcp",
                                                              client_name="agent") as other:
        sid = (await c.create_session()).session_id
        other.set_token(sid, c.token_for(sid) or "")
        async with c.watch(sid) as events:
            await next_event(events, nc.Presence)  # snapshot
            await next_event(events)  # our own join
            async with other.watch(sid, channel="mcp"):
                join = await events.__anext__()
                assert isinstance(join, nc.Presence)
                assert (join.action, join.channel, join.client) == ("join", "mcp", "agent")
            leave = await events.__anext__()
            assert isinstance(leave, nc.Presence) and leave.action == "leave"
