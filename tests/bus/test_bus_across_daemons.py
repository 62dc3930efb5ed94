"""The bus contract on the Redis engine: the same promises as
`test_bus_contract.py`, kept across daemons. The session is owned by daemon 0;
its subscribers are clients of daemons 1 and 2, which receive its changes
through Redis. Checked end to end, as a client sees them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import nexus_protocol as p
import trio
from cluster_procs import Cluster
from raw_client import RawClient, connect_unix

RETENTION = 5


@asynccontextmanager
async def clients(cluster: Cluster, *daemons: int) -> AsyncIterator[list[RawClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(connect_unix(Path(cluster.socket(d))))
               for d in daemons]


async def create(writer: RawClient) -> tuple[str, str]:
    created = await writer.call(p.Create)
    assert isinstance(created, p.Created)
    return created.session_id, created.token


async def write(writer: RawClient, sid: str, n: int, start: int = 1,
                value: object = None) -> None:
    for i in range(start, start + n):
        written = await writer.call(p.Set, session_id=sid, key=f"k{i}",
                                    value=i if value is None else value)
        assert isinstance(written, p.Written) and written.seq == i


async def changes(sub: RawClient, n: int) -> list[int]:
    """The seqs of the next `n` changes (presence events, which are not
    changes, in between are passed over)."""
    seqs: list[int] = []
    while len(seqs) < n:
        event = await sub.next_event()
        if isinstance(event, p.Change):
            seqs.append(event.seq)
        else:
            assert isinstance(event, p.Presence), event
    return seqs


async def test_every_subscriber_receives_each_change_once_in_order(cluster: Cluster) -> None:
    await cluster.start(3)
    async with clients(cluster, 0, 1, 1, 2) as (writer, *subs):
        sid, token = await create(writer)
        for sub in subs:
            await sub.call(p.Attach, session_id=sid, token=token)
            assert (await sub.next_of(p.Snapshot)).seq == 0
        await write(writer, sid, 30)
        for sub in subs:
            assert await changes(sub, 30) == list(range(1, 31))
        for sub in subs:
            assert not [e for e in sub.pending_events() if isinstance(e, p.Change)]
            await sub.no_event_within(0.3)  # each once


async def test_replay_gives_exactly_the_changes_after_since(cluster: Cluster) -> None:
    await cluster.start(2)
    async with clients(cluster, 0, 1) as (writer, sub):
        sid, token = await create(writer)
        await write(writer, sid, 10)
        attached = await sub.call(p.Attach, session_id=sid, token=token, since=4)
        assert isinstance(attached, p.Attached) and attached.recovered
        assert await changes(sub, 6) == [5, 6, 7, 8, 9, 10]
        await write(writer, sid, 1, start=11)
        assert await changes(sub, 1) == [11]
        await sub.no_event_within(0.3)


async def test_a_snapshot_is_needed_beyond_the_retention_window(cluster: Cluster) -> None:
    await cluster.start(2, "--retention", str(RETENTION))
    async with clients(cluster, 0, 1) as (writer, sub):
        sid, token = await create(writer)
        await write(writer, sid, RETENTION + 7)
        old = await sub.call(p.Attach, session_id=sid, token=token, since=2)
        assert isinstance(old, p.Attached) and not old.recovered
        snapshot = await sub.next_of(p.Snapshot)
        assert (snapshot.seq, snapshot.recovered) == (RETENTION + 7, False)
        await sub.call(p.Detach, session_id=sid)
        recent = await sub.call(p.Attach, session_id=sid, token=token, since=RETENTION + 4)
        assert isinstance(recent, p.Attached) and recent.recovered
        assert await changes(sub, 3) == [RETENTION + 5, RETENTION + 6, RETENTION + 7]


async def test_replay_then_subscribe_leaves_no_gap_while_writes_go_on(
        cluster: Cluster) -> None:
    await cluster.start(2)
    async with clients(cluster, 0, 1) as (writer, sub), trio.open_nursery() as nursery:
        sid, token = await create(writer)
        await write(writer, sid, 20)
        nursery.start_soon(write, writer, sid, 40, 21)
        await sub.call(p.Attach, session_id=sid, token=token, since=10)
        assert await changes(sub, 50) == list(range(11, 61))


async def test_a_lagging_subscriber_is_dropped_and_told_where_it_stopped(
        cluster: Cluster) -> None:
    await cluster.start(1)
    await cluster.start(1, "--queue-size", "8", "--write-timeout", "1h")
    writes, value = 40, "x" * 65536  # a few fill the kernel's socket buffers
    async with clients(cluster, 0, 1, 1) as (writer, slow, fast):
        sid, token = await create(writer)
        for sub in (slow, fast):
            await sub.call(p.Attach, session_id=sid, token=token)
            await sub.next_of(p.Snapshot)
        slow.pause_reading()
        await write(writer, sid, writes, value=value)
        assert await changes(fast, writes) == list(range(1, writes + 1))  # kept up
        slow.resume_reading()
        events = await slow.events_until(lambda e: isinstance(e, p.Lagged))
        lagged = events[-1]
        assert isinstance(lagged, p.Lagged) and lagged.session_id == sid
        got = [e.seq for e in events if isinstance(e, p.Change)]
        assert all(isinstance(e, p.Change | p.Presence) for e in events[:-1])
        assert got == list(range(1, lagged.seq + 1))  # a gapless prefix, then lagged
        assert 0 < lagged.seq < writes
        # It resumes from there and gets exactly what it missed.
        await slow.call(p.Attach, session_id=sid, token=token, since=lagged.seq)
        assert await changes(slow, writes - lagged.seq) == list(range(lagged.seq + 1,
                                                                      writes + 1))
