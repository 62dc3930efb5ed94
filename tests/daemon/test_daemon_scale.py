"""Many sessions at once: each change reaches every subscriber of its session,
and only those, with the right seq."""

from __future__ import annotations

import time

import nexus_protocol as p
import trio
from raw_client import RawClient, connect_unix

from nexusd import Daemon

SESSIONS = 1000


async def test_thousand_sessions_two_subscribers_each(daemon: Daemon,
                                                      autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    started = time.monotonic()
    path = daemon.socket_path
    async with (connect_unix(path, client="writer", timeout=60) as writer,
                connect_unix(path, client="a", timeout=60) as sub_a,
                connect_unix(path, client="b", timeout=60) as sub_b):
        created = await writer.request_many(
            [p.Create(id=writer.new_id(), ttl=600) for _ in range(SESSIONS)])
        assert all(isinstance(c, p.Created) for c in created)
        sessions = {c.session_id: c.token for c in created}  # type: ignore[attr-defined]
        assert len(sessions) == SESSIONS
        order = list(sessions)

        # Each subscriber is one connection attached to every session.
        async def attach_all(sub: RawClient) -> None:
            replies = await sub.request_many(
                [p.Attach(id=sub.new_id(), session_id=sid, token=tok)
                 for sid, tok in sessions.items()])
            assert all(isinstance(r, p.Attached) and r.seq == 0 for r in replies)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attach_all, sub_a)
            nursery.start_soon(attach_all, sub_b)

        received: dict[str, dict[str, tuple[int, object]]] = {"a": {}, "b": {}}

        async def follow(name: str, sub: RawClient) -> None:
            seen = received[name]
            snapshots = 0
            with trio.fail_after(60):
                while len(seen) < SESSIONS:
                    event = await sub.next_event()
                    if isinstance(event, p.Snapshot):
                        snapshots += 1
                        continue
                    if isinstance(event, p.Presence):
                        continue
                    assert isinstance(event, p.Change), event
                    assert event.session_id not in seen, f"duplicate change {event}"
                    seen[event.session_id] = (event.seq, event.value)
            assert snapshots == SESSIONS

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, "a", sub_a)
            nursery.start_soon(follow, "b", sub_b)
            written = await writer.request_many(
                [p.Set(id=writer.new_id(), session_id=sid, key="n", value=i)
                 for i, sid in enumerate(order)])
            assert all(isinstance(w, p.Written) and w.seq == 1 for w in written)

        expected = {sid: (1, i) for i, sid in enumerate(order)}
        assert received["a"] == expected
        assert received["b"] == expected
        leftover = sub_a.pending_events() + sub_b.pending_events()
        assert all(isinstance(e, p.Presence) for e in leftover), leftover
        stats = await writer.call(p.Stats)
        assert isinstance(stats, p.Report)
        assert stats.report["sessions_active"] == SESSIONS
        assert stats.report["subscribers"] == 2 * SESSIONS
    assert time.monotonic() - started < 30
