"""A subscriber that stops reading is dropped with `lagged`; it never slows the
session, its writers, or the subscribers that keep up."""

from __future__ import annotations

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix

from nexusd import Daemon

WRITES = 40
# Large enough that a few of them fill the kernel's socket buffers.
VALUE = b"x" * 65536


@pytest.mark.daemon_config(queue_size=8, write_timeout=3600.0)
async def test_slow_subscriber_is_dropped_and_others_keep_up(daemon: Daemon,
                                                             autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with (connect_unix(daemon.socket_path, client="writer") as writer,
                connect_unix(daemon.socket_path, client="fast") as fast,
                connect_unix(daemon.socket_path, client="slow") as slow):
        created = await writer.call(p.Create)
        assert isinstance(created, p.Created)
        sid, token = created.session_id, created.token
        for sub in (fast, slow):
            await sub.call(p.Attach, session_id=sid, token=token)
            await sub.next_of(p.Snapshot)
        assert slow.welcome is not None
        slow_id = slow.welcome.connection_id
        assert (await fast.next_of(p.Presence)).connection_id == slow_id  # join
        slow.pause_reading()

        fast_seen: list[int] = []
        fast_presence: list[p.Presence] = []

        async def follow_fast() -> None:
            while len(fast_seen) < WRITES:
                event = await fast.next_event()
                if isinstance(event, p.Change):
                    fast_seen.append(event.seq)
                else:
                    assert isinstance(event, p.Presence), event
                    fast_presence.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_fast)
            t0 = trio.current_time()
            for i in range(1, WRITES + 1):
                with trio.fail_after(1.0):
                    written = await writer.call(p.Set, session_id=sid, key=f"k{i}",
                                                value=VALUE)
                assert isinstance(written, p.Written) and written.seq == i
            # Acknowledged without waiting on anything: virtual time stood still.
            assert trio.current_time() - t0 < 0.1

        assert fast_seen == list(range(1, WRITES + 1))
        assert [(e.action, e.connection_id) for e in fast_presence] == [("leave", slow_id)]

        # The slow one reads again: a gapless prefix of the changes, then lagged.
        slow.resume_reading()
        events = await slow.events_until(lambda e: isinstance(e, p.Lagged))
        lagged = events[-1]
        assert isinstance(lagged, p.Lagged) and lagged.session_id == sid
        got = [e.seq for e in events[:-1] if isinstance(e, p.Change)]
        assert len(got) == len(events) - 1  # nothing but changes before it
        assert got == list(range(1, lagged.seq + 1))
        assert 0 < lagged.seq < WRITES
        # Nothing after it: a round trip finds the connection quiet and usable.
        assert isinstance(await slow.call(p.Ping), p.Pong)
        assert slow.pending_events() == []
        await writer.call(p.Set, session_id=sid, key="later", value=1)
        assert (await fast.next_of(p.Change)).seq == WRITES + 1
        await slow.no_event_within(1.0)

        # It resumes from its seq and gets exactly what it missed.
        attached = await slow.call(p.Attach, session_id=sid, token=token, since=lagged.seq)
        assert isinstance(attached, p.Attached) and attached.recovered
        missed = [await slow.next_of(p.Change) for _ in range(WRITES + 1 - lagged.seq)]
        assert [c.seq for c in missed] == list(range(lagged.seq + 1, WRITES + 2))
        assert missed[0].value == VALUE
