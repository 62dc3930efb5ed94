"""Orderly shutdown: clients are told, acknowledged writes survive, and the
daemon is gone within its grace period even if a client hangs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, connect_ws, make_config, real_time_passing, run_daemon

from nexusd import Daemon, MemoryStore
from nexusd.store._interface import SessionMeta, StoredEvent

WRITES = 200


async def test_shutdown_tells_clients_and_keeps_every_acknowledged_write(
        tmp_path: Path, socket_dir: Path, autojump_clock: object) -> None:
    store = MemoryStore()
    config = make_config(tmp_path, socket_dir, shutdown_grace=5.0)
    async with trio.open_nursery() as nursery:
        with real_time_passing(), trio.fail_after(10):
            daemon: Daemon = await nursery.start(Daemon(config, store=store).run)
        path = daemon.socket_path
        assert path is not None and path.exists() and daemon.ws_port
        async with (connect_unix(path) as writer, connect_ws(daemon.ws_port) as sub):
            created = await writer.call(p.Create)
            assert isinstance(created, p.Created)
            sid, token = created.session_id, created.token
            await sub.call(p.Attach, session_id=sid, token=token)
            await sub.next_of(p.Snapshot)

            requests = [p.Set(id=writer.new_id(), session_id=sid, key=f"k{i}", value=i)
                        for i in range(WRITES)]
            await writer.send_many(requests)
            # Some writes are acknowledged, the rest are in flight: stop now.
            replies = {requests[19].id: await writer.reply(requests[19].id)}
            t_stop = trio.current_time()
            daemon.stop()

            writer_events = await writer.wait_closed()
            sub_events = await sub.wait_closed()
            replies.update(writer.take_replies())
        # Every connection finished on its own: the grace period was not needed.
        with trio.fail_after(config.shutdown_grace + 1):
            await daemon.stopped.wait()
        assert trio.current_time() - t_stop < 1.0
    # The nursery is done: `run` returned.
    assert not path.exists()

    assert sum(isinstance(e, p.Shutdown) for e in writer_events) == 1
    assert sum(isinstance(e, p.Shutdown) for e in sub_events) == 1
    # Each request got an answer: written, or refused because of the shutdown.
    assert set(replies) == {r.id for r in requests}
    acked = {}
    for request in requests:
        reply = replies[request.id]
        if isinstance(reply, p.Written):
            acked[request.key] = (request.value, reply.seq)
        else:
            assert isinstance(reply, p.Error) and reply.code == "unavailable", reply
    seqs = sorted(seq for _, seq in acked.values())
    assert seqs == list(range(1, len(acked) + 1))
    assert len(acked) >= 20
    # The subscriber saw a gapless prefix of them.
    seen = [e.seq for e in sub_events if isinstance(e, p.Change)]
    assert seen == list(range(1, len(seen) + 1))

    # A daemon started on the same store has every acknowledged write, and
    # the subscriber resumes where it stopped.
    async with (run_daemon(config, store=store) as again,
                connect_unix(path) as c):
        assert again.socket_path == path
        state = await c.call(p.Get, session_id=sid, token=token)
        assert isinstance(state, p.StateReply)
        for key, (value, _) in acked.items():
            assert state.entries[key]["value"] == value
        assert state.seq >= len(acked)
        attached = await c.call(p.Attach, session_id=sid, token=token, since=len(seen))
        assert isinstance(attached, p.Attached) and attached.recovered
        missed = [await c.next_of(p.Change) for _ in range(state.seq - len(seen))]
        assert [m.seq for m in missed] == list(range(len(seen) + 1, state.seq + 1))


async def test_shutdown_is_bounded_by_the_grace_period(tmp_path: Path, socket_dir: Path,
                                                       autojump_clock: object) -> None:
    config = make_config(tmp_path, socket_dir, shutdown_grace=3.0, write_timeout=600.0)
    async with trio.open_nursery() as nursery:
        with real_time_passing(), trio.fail_after(10):
            daemon: Daemon = await nursery.start(Daemon(config).run)
        path = daemon.socket_path
        assert path is not None
        async with (connect_unix(path) as writer, connect_unix(path) as stuck):
            created = await writer.call(p.Create)
            assert isinstance(created, p.Created)
            await stuck.call(p.Attach, session_id=created.session_id, token=created.token)
            await stuck.next_of(p.Snapshot)
            # This client stops reading until its socket is full: the daemon
            # cannot even tell it `shutdown`.
            stuck.pause_reading()
            for i in range(20):
                written = await writer.call(p.Set, session_id=created.session_id,
                                            key=f"k{i}", value=b"x" * 65536)
                assert isinstance(written, p.Written)
            t_stop = trio.current_time()
            daemon.stop()
            # The well-behaved client is told and let go at once.
            events = await writer.wait_closed()
            assert [type(e) for e in events] == [p.Shutdown]
            assert trio.current_time() - t_stop < 1.0
            with trio.fail_after(config.shutdown_grace + 1):
                await daemon.stopped.wait()
            # The hung one held the daemon for the grace period, and no longer.
            assert trio.current_time() - t_stop == pytest.approx(config.shutdown_grace,
                                                                 abs=0.1)
            stuck.resume_reading()
            leftover = await stuck.wait_closed()
            # What it had been sent before it hung is still there to read.
            assert [e.seq for e in leftover] == list(range(1, len(leftover) + 1))  # type: ignore[attr-defined]
            assert leftover
            # Cut off, mid-frame or not, rather than left hanging.
            assert stuck.closed
    assert not path.exists()


class GatedStore(MemoryStore):
    """A memory store whose journal writes wait for the test to open a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.gate.set()
        self.waiting = trio.Event()

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        if events and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        await super().append(meta, events)


async def test_request_in_flight_at_shutdown_is_answered_then_let_go(
        tmp_path: Path, socket_dir: Path, autojump_clock: object) -> None:
    store = GatedStore()
    config = make_config(tmp_path, socket_dir, shutdown_grace=5.0)
    async with trio.open_nursery() as nursery:
        with real_time_passing(), trio.fail_after(10):
            daemon: Daemon = await nursery.start(Daemon(config, store=store).run)
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as writer:
            created = await writer.call(p.Create)
            assert isinstance(created, p.Created)
            store.gate = trio.Event()
            request = p.Set(id=writer.new_id(), session_id=created.session_id, key="k",
                            value="v")
            await writer.send(request)
            with trio.fail_after(1):
                await store.waiting.wait()  # the write is with the store
            t_stop = trio.current_time()
            daemon.stop()
            assert isinstance(await writer.next_event(), p.Shutdown)
            # Not acknowledged before the store has it...
            await trio.sleep(1)
            assert writer.take_replies() == {}
            store.gate.set()
            written = await writer.reply(request.id)
            assert isinstance(written, p.Written) and written.seq == 1
            # ...and once answered, the connection has nothing left to wait for.
            assert await writer.wait_closed() == []
            assert trio.current_time() - t_stop < 1.5
        with trio.fail_after(config.shutdown_grace + 1):
            await daemon.stopped.wait()
        assert trio.current_time() - t_stop < 1.5
    loaded = await store.load(created.session_id)
    assert loaded is not None
    assert [e.seq for e in (*loaded.history, *loaded.events)] == [1]


async def test_restart_on_the_default_store_keeps_writes_tokens_and_history(
        tmp_path: Path, socket_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The SQLite store, as `nexusd serve` uses it by default. Real clock: the
    store works in a thread, which virtual time would not wait for."""
    config = make_config(tmp_path, socket_dir, durability="process")
    path = config.socket
    assert path is not None
    async with run_daemon(config), connect_unix(path) as c:
        created = await c.call(p.Create, ttl=600)
        assert isinstance(created, p.Created)
        sid, token = created.session_id, created.token
        for i in range(1, 6):
            written = await c.call(p.Set, session_id=sid, key=f"k{i}", value=i)
            assert isinstance(written, p.Written) and written.seq == i
        before = await c.call(p.Get, session_id=sid)
        assert isinstance(before, p.StateReply)

    async with run_daemon(config) as second:
        assert second.ws_port
        async with connect_ws(second.ws_port) as c:
            after = await c.call(p.Get, session_id=sid, token=token)
            assert isinstance(after, p.StateReply)
            assert (after.seq, after.entries, after.context) == (before.seq, before.entries,
                                                                before.context)
            attached = await c.call(p.Attach, session_id=sid, token=token, since=2)
            assert isinstance(attached, p.Attached) and attached.recovered
            assert [(await c.next_of(p.Change)).seq for _ in range(3)] == [3, 4, 5]
            written = await c.call(p.Set, session_id=sid, key="k6", value=6)
            assert isinstance(written, p.Written) and written.seq == 6
            assert (await c.next_of(p.Change)).seq == 6
    # Each stop wrote the session's snapshot to the store without a hitch.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_status_reports_the_stores_wal(tmp_path: Path, socket_dir: Path) -> None:
    config = make_config(tmp_path, socket_dir, durability="process")
    path = config.socket
    assert path is not None
    async with run_daemon(config), connect_unix(path) as c:
        created = await c.call(p.Create, ttl=600)
        assert isinstance(created, p.Created)
        report = await c.call(p.Stats)
        assert isinstance(report, p.Report)
        store = report.report["store"]
        wal = tmp_path / "nexusd.db-wal"
        assert store["wal_bytes"] == (wal.stat().st_size if wal.exists() else 0)
        assert {"checkpoints", "wal_truncations", "commits"} <= set(store)
