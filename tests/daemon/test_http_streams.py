"""HTTP event streams over time: heartbeats, a reader that stops reading,
and the daemon's shutdown."""

from __future__ import annotations

import socket

import nexus_protocol as p
import pytest
import trio
from http_client import connect_events, open_events
from raw_client import connect_unix, real_time_passing

from nexusd import Daemon

#: Large enough that a few of them fill the kernel's socket buffers.
VALUE = "x" * 200_000
WRITES = 60


async def _session(daemon: Daemon) -> tuple[str, str]:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as client:
        created = await client.call(p.Create)
    assert isinstance(created, p.Created)
    return created.session_id, created.token


@pytest.mark.daemon_config(http="127.0.0.1:0", sse_heartbeat=5.0)
async def test_a_quiet_stream_sends_heartbeats(daemon: Daemon, autojump_clock: object) -> None:
    sid, token = await _session(daemon)
    assert daemon.socket_path is not None
    async with open_events(daemon, sid, token) as events, \
            connect_unix(daemon.socket_path) as writer:
        assert (await events.next()).event == "snapshot"  # type: ignore[union-attr]
        await trio.sleep(12)
        await writer.call(p.Set, session_id=sid, key="k", value=1, token=token)
        change = await events.next()
        assert change is not None and change.id == "1"
        assert events.comments == 2  # at 5 s and 10 s


@pytest.mark.daemon_config(http="127.0.0.1:0", sse_queue=8, write_timeout=30.0,
                           retention_bytes=64 << 20)
async def test_a_reader_that_stops_is_cut_without_stalling_the_session(
        daemon: Daemon, autojump_clock: object) -> None:
    sid, token = await _session(daemon)
    assert daemon.socket_path is not None
    async with connect_events(daemon, sid, token) as stalled, \
            connect_unix(daemon.socket_path) as writer:
        stalled.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert [(await stalled.next()).event for _ in range(2)] == [  # type: ignore[union-attr]
            "attached", "snapshot"]
        # The reader stops reading; the session's writes go on at full speed.
        t0 = trio.current_time()
        for i in range(1, WRITES + 1):
            written = await writer.call(p.Set, session_id=sid, key="k", value=VALUE,
                                        token=token)
            assert isinstance(written, p.Written) and written.seq == i
        assert trio.current_time() - t0 < 1.0
        # It was dropped from the session (it lagged), and its connection is
        # cut once its write has waited write_timeout.
        assert daemon.bus.statistics().lagged == 1
        assert daemon.bus.statistics().subscribers == 0
        await trio.sleep(31)

        # Reading again (what the kernel still holds comes in small segments,
        # at the pace of real time): a gapless prefix of the changes, then
        # the end.
        seen = []
        with real_time_passing():
            while (event := await stalled.next()) is not None:
                assert event.event == "change", event
                seen.append(int(event.id or 0))
        assert seen == list(range(1, len(seen) + 1)) and len(seen) < WRITES

    # It resumes from the last id it saw and misses nothing.
    with real_time_passing():
        async with open_events(daemon, sid, token, headers={
                "Last-Event-ID": str(seen[-1] if seen else 0)}) as events:
            rest = [await events.next() for _ in range(WRITES - len(seen))]
    assert [int(e.id or 0) for e in rest if e] == list(range(len(seen) + 1, WRITES + 1))


@pytest.mark.daemon_config(http="127.0.0.1:0", shutdown_grace=5.0, sse_queue=8)
async def test_shutdown_ends_open_streams_cleanly(daemon: Daemon,
                                                  autojump_clock: object) -> None:
    sid, token = await _session(daemon)
    assert daemon.socket_path is not None
    async with open_events(daemon, sid, token) as reading, \
            connect_events(daemon, sid, token) as stalled, \
            connect_unix(daemon.socket_path) as writer:
        stalled.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert (await reading.next()).event == "snapshot"  # type: ignore[union-attr]
        ids = []
        with real_time_passing():
            for _ in range(20):
                await writer.call(p.Set, session_id=sid, key="k", value=VALUE, token=token)
                event = await reading.next()
                while event is not None and event.event == "presence":
                    event = await reading.next()
                assert event is not None
                ids.append(event.id)
        assert ids == [str(i) for i in range(1, 21)]
        t0 = trio.current_time()
        daemon.stop()
        # The reader is told, and its stream ends.
        assert [e.event for e in await reading.until("shutdown")
                if e.event != "presence"] == ["shutdown"]
        assert await reading.next() is None
        # The one that stopped reading does not hold the daemon past its grace.
        with trio.fail_after(5.0 + 1):
            await daemon.stopped.wait()
        assert trio.current_time() - t0 <= 5.0 + 0.5
