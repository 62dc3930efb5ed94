"""Edges: a session ending while requests wait, answers too large to send,
and what a client can make a session (or the reaper) remember."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, make_config, run_daemon

from nexusd import Daemon, MemoryStore
from nexusd.session._state import MAX_CHANNELS


class SlowDeleteStore(MemoryStore):
    """A store whose deletes wait until the test lets them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.deleting = trio.Event()
        self.finish = trio.Event()

    async def delete(self, session_id: str, *, reason: str | None = None) -> None:
        self.deleting.set()
        await self.finish.wait()
        await super().delete(session_id, reason=reason)


async def test_an_invalidated_session_never_comes_back(tmp_path: Path, socket_dir: Path,
                                                       autojump_clock: object) -> None:
    store = SlowDeleteStore()
    async with run_daemon(make_config(tmp_path, socket_dir), store=store) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c, \
                connect_unix(daemon.socket_path) as other:
            created = await c.call(p.Create)
            sid, token = created.session_id, created.token
            await c.call(p.Set, session_id=sid, key="k", value="secret")
            invalidate = p.Invalidate(id=c.new_id(), session_id=sid)
            await c.send(invalidate)
            await store.deleting.wait()
            # The store still holds the rows; nobody may see or write them.
            got = await other.call(p.Get, session_id=sid, key="k", token=token)
            assert isinstance(got, p.Error) and got.code == "expired", got
            written = await other.call(p.Set, session_id=sid, key="k", value="x", token=token)
            assert isinstance(written, p.Error) and written.code == "expired", written
            store.finish.set()
            assert isinstance(await c.reply(invalidate.id), p.Ok)
            assert await store.load(sid) is None


async def test_requests_behind_an_invalidate_are_answered(daemon: Daemon,
                                                          autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        created = await c.call(p.Create)
        sid = created.session_id
        replies: Sequence[p.Message] = await c.request_many([
            p.Invalidate(id=c.new_id(), session_id=sid),
            p.Get(id=c.new_id(), session_id=sid, key="k"),
            p.Set(id=c.new_id(), session_id=sid, key="k", value=1),
        ])
        assert isinstance(replies[0], p.Ok)
        for reply in replies[1:]:
            assert isinstance(reply, p.Error) and reply.code == "expired", reply


@pytest.mark.daemon_config(max_frame=16_384)
async def test_answers_over_the_frame_limit_are_refused_not_lost(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c, \
            connect_unix(daemon.socket_path) as watcher:
        created = await c.call(p.Create)
        sid, token = created.session_id, created.token
        for i in range(30):
            w = await c.call(p.Set, session_id=sid, key=f"k{i}", value="x" * 1000)
            assert isinstance(w, p.Written), w
        whole = await c.call(p.Get, session_id=sid)
        assert isinstance(whole, p.Error) and whole.code == "too_large", whole
        attached = await watcher.call(p.Attach, session_id=sid, token=token)
        assert isinstance(attached, p.Error) and attached.code == "too_large", attached
        # Nothing broke: one key reads, a resume that fits replays, writes go on.
        one = await c.call(p.Get, session_id=sid, key="k3")
        assert isinstance(one, p.Value) and one.version == 1
        resumed = await watcher.call(p.Attach, session_id=sid, token=token, since=29)
        assert isinstance(resumed, p.Attached) and resumed.recovered
        change = await watcher.next_of(p.Change)
        assert change.seq == 30
        await c.call(p.Set, session_id=sid, key="k0", value="y")
        change = await watcher.next_of(p.Change)
        assert (change.seq, change.key) == (31, "k0")


async def test_renewals_do_not_grow_the_reaper(daemon: Daemon,
                                               autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        created = await c.call(p.Create, ttl=3600)
        sid = created.session_id
        before = daemon.reaper.statistics().scheduled
        replies = await c.request_many(
            [p.Renew(id=c.new_id(), session_id=sid, ttl=3600) for _ in range(300)])
        assert all(isinstance(r, p.Renewed) for r in replies)
        assert daemon.reaper.statistics().scheduled == before


async def test_channel_labels_a_session_tracks_are_bounded(daemon: Daemon,
                                                           autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        created = await c.call(p.Create, channel="api")
        sid = created.session_id
        replies = await c.request_many(
            [p.Sync(id=c.new_id(), session_id=sid, channel=f"label-{i}") for i in range(200)])
        assert all(isinstance(r, p.StateReply) for r in replies)
        summary = await c.call(p.Summary, session_id=sid)
        assert isinstance(summary, p.Report)
        used = summary.report["channels_used"]
        assert len(used) == MAX_CHANNELS + 1
        assert "api" in used and "other" in used
        assert summary.report["channel_activity"]["other"]["reads"] == 200 - (MAX_CHANNELS - 1)
