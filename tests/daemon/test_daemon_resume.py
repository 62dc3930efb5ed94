"""A subscriber that reconnects with its last seq gets exactly what it missed,
or, past the retention window, a fresh snapshot and the news that it is one."""

from __future__ import annotations

import nexus_protocol as p
import pytest
from raw_client import RawClient, connect_unix, connect_ws

from nexusd import Daemon


async def _session(c: RawClient) -> tuple[str, str]:
    created = await c.call(p.Create, ttl=3600)
    assert isinstance(created, p.Created)
    return created.session_id, created.token


async def _write(c: RawClient, sid: str, first: int, last: int) -> None:
    for i in range(first, last + 1):
        written = await c.call(p.Set, session_id=sid, key=f"k{i % 3}", value=i)
        assert isinstance(written, p.Written) and written.seq == i


@pytest.mark.daemon_config(retention=5)
async def test_resume_replays_exactly_the_missed_changes(daemon: Daemon,
                                                         autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with connect_unix(daemon.socket_path, channel="cli") as writer:
        sid, token = await _session(writer)
        async with connect_ws(daemon.ws_port) as sub:
            await sub.call(p.Attach, session_id=sid, token=token)
            await sub.next_of(p.Snapshot)
            await _write(writer, sid, 1, 3)
            assert [(await sub.next_of(p.Change)).seq for _ in range(3)] == [1, 2, 3]
            last_seen = 3
        # Disconnected: it misses 4..7 (within the retention window of 5).
        await _write(writer, sid, 4, 7)

        async with connect_ws(daemon.ws_port) as sub:
            attached = await sub.call(p.Attach, session_id=sid, token=token, since=last_seen)
            assert isinstance(attached, p.Attached)
            assert (attached.recovered, attached.seq) == (True, 7)
            missed = [await sub.next_of(p.Change) for _ in range(4)]
            assert [(c.seq, c.key, c.value) for c in missed] == [
                (4, "k1", 4), (5, "k2", 5), (6, "k0", 6), (7, "k1", 7)]
            # Then live changes, with no duplicate and no gap.
            await _write(writer, sid, 8, 9)
            assert [(await sub.next_of(p.Change)).seq for _ in range(2)] == [8, 9]
            await sub.no_event_within(1.0)

            # Resuming at the current seq replays nothing and is still "recovered".
            attached = await sub.call(p.Attach, session_id=sid, token=token, since=9)
            assert isinstance(attached, p.Attached) and attached.recovered
            await sub.no_event_within(1.0)


@pytest.mark.daemon_config(retention=5)
async def test_resume_past_the_retention_window_gets_a_snapshot(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as writer:
        sid, token = await _session(writer)
        await _write(writer, sid, 1, 2)
        # The subscriber last saw seq 2; 3..10 happen while it is away: 8 > 5.
        await _write(writer, sid, 3, 10)
        async with connect_unix(daemon.socket_path) as sub:
            attached = await sub.call(p.Attach, session_id=sid, token=token, since=2)
            assert isinstance(attached, p.Attached)
            assert (attached.recovered, attached.seq) == (False, 10)
            snapshot = await sub.next_of(p.Snapshot)
            assert (snapshot.recovered, snapshot.seq) == (False, 10)
            # The snapshot holds the current state: k0 <- 9, k1 <- 10, k2 <- 8.
            assert {k: e["value"] for k, e in snapshot.entries.items()} == {
                "k0": 9, "k1": 10, "k2": 8}
            assert {k: e["version"] for k, e in snapshot.entries.items()} == {
                "k0": 3, "k1": 4, "k2": 3}
            # Missing exactly one change more than the window holds is too many.
            attached = await sub.call(p.Attach, session_id=sid, token=token, since=4)
            assert isinstance(attached, p.Attached) and not attached.recovered
            assert not (await sub.next_of(p.Snapshot)).recovered
            # Exactly the window is enough: 6..10 replayed.
            attached = await sub.call(p.Attach, session_id=sid, token=token, since=5)
            assert isinstance(attached, p.Attached) and attached.recovered
            assert [(await sub.next_of(p.Change)).seq for _ in range(5)] == [6, 7, 8, 9, 10]
            # Live changes follow the snapshot.
            await _write(writer, sid, 11, 11)
            assert (await sub.next_of(p.Change)).seq == 11
            await sub.no_event_within(1.0)


async def test_fresh_attach_gets_a_recovered_snapshot(daemon: Daemon,
                                                      autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as writer:
        sid, token = await _session(writer)
        await _write(writer, sid, 1, 4)
        async with connect_unix(daemon.socket_path) as sub:
            attached = await sub.call(p.Attach, session_id=sid, token=token)
            assert isinstance(attached, p.Attached)
            assert (attached.recovered, attached.seq) == (False, 4)
            snapshot = await sub.next_of(p.Snapshot)
            # Nothing was lost: a fresh attach is a recovered snapshot.
            assert (snapshot.recovered, snapshot.seq) == (True, 4)
            assert {k: e["value"] for k, e in snapshot.entries.items()} == {
                "k0": 3, "k1": 4, "k2": 2}
            await _write(writer, sid, 5, 5)
            assert (await sub.next_of(p.Change)).seq == 5


async def test_resume_from_the_future_gets_an_unrecovered_snapshot(
        daemon: Daemon, autojump_clock: object) -> None:
    """A client whose seq is ahead of the session (it saw a session that was
    since restored from an older state) must not be told it is up to date."""
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, token = await _session(c)
        await _write(c, sid, 1, 2)
        attached = await c.call(p.Attach, session_id=sid, token=token, since=50)
        assert isinstance(attached, p.Attached) and not attached.recovered
        snapshot = await c.next_of(p.Snapshot)
        assert (snapshot.recovered, snapshot.seq) == (False, 2)
