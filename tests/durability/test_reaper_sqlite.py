"""The reaper on the durable SQLite store, in-process: dormant (hibernated)
sessions expire at their deadline, found through the store's deadline index,
and a crowd of dormant sessions costs the reaper nothing until one is due.

The clock: the SQLite store works in threads. Under `autojump_clock`, trio
sees a task waiting on a thread as idle and may jump virtual time to the next
deadline (a hibernation, an expiry, a test's hard timeout) while the thread
is still working, so what a test observes would depend on thread timing.
These tests use a `MockClock` that runs at real speed (rate 1) and never
jumps by itself (autojump_threshold infinite): threads take the time they
take, `fail_after` bounds are real seconds, and the test alone moves time
forward, with `clock.jump`, to just before and just after deadlines minutes
or an hour away. (Real time with 1-2 s deadlines would also work, but could
not tell "at the deadline" from "a little after" as sharply, and would cost
those seconds.) Every wait for the daemon is a poll under a hard bound.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from daemon_process import wait_until
from raw_client import (
    TIMEOUT,
    RawClient,
    connect_unix,
    make_config,
    real_time_passing,
    run_daemon,
    trio_wall,
)
from trio.testing import MockClock

from nexusd import Config, Daemon
from nexusd._auth import hash_token
from nexusd.session._actor import meta_of
from nexusd.session._state import SessionState
from nexusd.store._interface import IDLE_LAG, SessionMeta, StoredEvent
from nexusd.store._schema import DB_FILE
from nexusd.store._sqlite import SqliteStore, open_sqlite_store


@pytest.fixture
def clock() -> MockClock:
    """Real-time speed, jumps only when the test says (see the module docstring)."""
    return MockClock(rate=1.0)


def _sqlite(daemon: Daemon) -> SqliteStore:
    assert isinstance(daemon.store, SqliteStore)
    return daemon.store


def _rows_of(data: Path, session_id: str) -> tuple[int, int]:
    """(session rows, event rows) the database file holds for the session."""
    with closing(sqlite3.connect(f"file:{data / DB_FILE}?mode=ro", uri=True)) as conn:
        sessions = conn.execute("SELECT count(*) FROM sessions WHERE id = ?",
                                (session_id,)).fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events WHERE session_id = ?",
                              (session_id,)).fetchone()[0]
    return sessions, events


async def _create(c: RawClient, **fields: object) -> p.Created:
    created = await c.call(p.Create, **fields)
    assert isinstance(created, p.Created), created
    for i in range(3):
        assert isinstance(await c.call(p.Set, session_id=created.session_id, key=f"k{i}",
                                       value=f"secret {i}"), p.Written)
    return created


async def test_dormant_sessions_expire_at_their_deadline(
        tmp_path: Path, socket_dir: Path, clock: MockClock) -> None:
    data = tmp_path / "data"
    config = make_config(data, socket_dir, ws=None, durability="process", hibernate_after=0.3)
    async with run_daemon(config) as daemon:
        assert daemon.socket_path is not None
        store, wall, reaper = _sqlite(daemon), daemon.clock, daemon.reaper
        async with connect_unix(daemon.socket_path) as c:
            by_ttl = await _create(c, ttl=600, idle_timeout=3000)
            by_idle = await _create(c, ttl=3600, idle_timeout=300)
            kept = await _create(c, ttl=7200, idle_timeout=7200)
            idle_deadline = (await _sessions(c))[by_idle.session_id]["idle_expires_at"]

        # All three hibernate, their snapshots written (at seq 3).
        await wait_until(lambda: daemon.registry.statistics().active == 0, "hibernated")
        for s in (by_ttl, by_idle, kept):
            async def snapshotted(sid: str = s.session_id) -> bool:
                loaded = await store.load(sid)
                return loaded is not None and loaded.snapshot_seq == 3
            await wait_until(snapshotted, f"{s.session_id} snapshotted")
        assert await store.count() == 3
        assert daemon.registry.statistics().hibernations == 3

        # Until the first deadline the reaper sleeps: no wakeup, no check.
        await trio.sleep(0.1)
        parked = reaper.statistics()
        clock.jump(idle_deadline - wall.now() - 1.0)
        await trio.sleep(0.1)
        assert reaper.statistics() == parked
        assert await store.count() == 3

        # Past the idle deadline: that one session is gone, and only it.
        clock.jump(1.01)
        await wait_until(lambda: _count_is(store, 2), "the idle session expired")
        assert reaper.statistics().dormant_expired == 1
        await _assert_expired(daemon, data, by_idle, "idle")
        clock.jump(by_ttl.expires_at - wall.now() - 1.0)
        await trio.sleep(0.1)
        assert await store.count() == 2
        # Past the absolute deadline.
        clock.jump(1.01)
        await wait_until(lambda: _count_is(store, 1), "the ttl session expired")
        await _assert_expired(daemon, data, by_ttl, "ttl")

        stats = reaper.statistics()
        assert (stats.dormant_expired, stats.checks) == (2, 0)
        # The dormant sessions were expired from the store's index, never
        # brought back into memory.
        assert daemon.registry.statistics().activations == 0
        loaded = await store.load(kept.session_id)
        assert loaded is not None and loaded.snapshot_seq == 3


async def _count_is(store: SqliteStore, n: int) -> bool:
    return await store.count() == n


async def _sessions(c: RawClient) -> dict[str, dict[str, float]]:
    listed = await c.call(p.ListSessions)
    assert isinstance(listed, p.Sessions), listed
    return {s["session_id"]: s for s in listed.sessions}


async def _assert_expired(daemon: Daemon, data: Path, created: p.Created, reason: str) -> None:
    """Requests answer `expired`; the store and the file hold nothing of it."""
    sid = created.session_id
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        for request in (p.Get(id=c.new_id(), session_id=sid, token=created.token),
                        p.Set(id=c.new_id(), session_id=sid, key="k0", value="again",
                              token=created.token)):
            error = await c.request(request)
            assert isinstance(error, p.Error) and error.code == "expired", error
            assert f"({reason})" in error.message
    assert await daemon.store.load(sid) is None
    assert _rows_of(data, sid) == (0, 0)
    assert daemon.registry.active(sid) is None


DORMANT = 20_000
DUE = 5


async def _insert_dormant(data: Path, now: float) -> list[str]:
    """DORMANT sessions straight into the store (as a daemon that stopped
    would leave them): session i expires at now + 3600 + i, and answers to
    the token "nxs_test<i>"."""
    ids = [f"{i:032x}" for i in range(DORMANT)]
    store = await open_sqlite_store(data, durability="process")
    async with store:
        async def insert(first: int, stop: int) -> None:
            for i in range(first, stop):
                expires_at = now + 3600 + i
                state = SessionState(ids[i], now, "api", expires_at - now, expires_at, None)
                meta = SessionMeta(ids[i], now, expires_at - now, expires_at, None, None,
                                   {hash_token(f"nxs_test{i}"): "admin"})
                await store.create(meta, state.to_snapshot())

        step = DORMANT // 100  # 100 concurrent callers: group commits of ~100
        async with trio.open_nursery() as nursery:
            for first in range(0, DORMANT, step):
                nursery.start_soon(insert, first, first + step)
        assert await store.count() == DORMANT
    return ids


async def test_many_dormant_sessions_cost_the_reaper_nothing_until_a_deadline(
        tmp_path: Path, socket_dir: Path, clock: MockClock) -> None:
    data = tmp_path / "data"
    ids = await _insert_dormant(data, time.time())
    async with run_daemon(make_config(data, socket_dir, ws=None, durability="process")) as daemon:
        store, wall, reaper = _sqlite(daemon), daemon.clock, daemon.reaper
        # The session count and the daemon-wide analytics, each read once at
        # the start (the bound on stored sessions counts from the first); the
        # reaper's first round: one `due` query (nothing due: no session row
        # read) and one `next_deadline`; then it sleeps until the first
        # deadline. Nothing else in the daemon reads the store unasked.
        await wait_until(lambda: store.statistics().reads >= 4, "the reaper's first round")
        await trio.sleep(0.2)
        parked, read = reaper.statistics(), store.statistics()
        assert (parked.wakeups, parked.checks, parked.dormant_expired) == (1, 0, 0)
        assert (read.reads, read.sessions_read) == (4, 0)

        # An hour later, just before the first deadline: still nothing done.
        first_deadline = await store.next_deadline()
        assert first_deadline is not None
        clock.jump(first_deadline - wall.now() - 0.5)
        await trio.sleep(0.2)
        assert reaper.statistics() == parked
        assert store.statistics().sessions_read == 0
        assert store.statistics().reads == read.reads + 1  # our next_deadline

        # DUE sessions come due: one wakeup expires them all, and reads about
        # them alone (their index rows, then each one's row to confirm).
        clock.jump(DUE - 0.5 + 0.01)
        await wait_until(lambda: _count_is(store, DORMANT - DUE), "the due sessions expired")
        await trio.sleep(0.2)
        stats = reaper.statistics()
        assert (stats.wakeups, stats.checks, stats.dormant_expired) == (2, 0, DUE)
        assert store.statistics().sessions_read <= 2 * DUE
        assert await store.count() == DORMANT - DUE
        assert daemon.registry.statistics().activations == 0

        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c:
            for i in (0, DUE - 1):
                gone = await c.call(p.Get, session_id=ids[i], token=f"nxs_test{i}")
                assert isinstance(gone, p.Error) and gone.code == "expired", gone
                assert await store.load(ids[i]) is None
                assert _rows_of(data, ids[i]) == (0, 0)
            alive = await c.call(p.Get, session_id=ids[DUE], token=f"nxs_test{DUE}")
            assert isinstance(alive, p.StateReply), alive


def _stored_idle_deadline(data: Path, session_id: str) -> float:
    with closing(sqlite3.connect(f"file:{data / DB_FILE}?mode=ro", uri=True)) as conn:
        value: float = conn.execute("SELECT idle_expires_at FROM sessions WHERE id = ?",
                                    (session_id,)).fetchone()[0]
    return value


LAGGING_TOKEN = "nxs_lagging"


async def _store_a_lagging_idle_deadline(data: Path, sid: str) -> float:
    """A session with a 300 s idle timeout, created at the returned `now` and
    written at now + 8 s: the store keeps its idle deadline at now + 300 (it
    lags by 8 s), the journal says now + 308. A daemon that stopped without
    writing a snapshot (killed) leaves such a lagging deadline behind."""
    now = time.time()
    tokens = {hash_token(LAGGING_TOKEN): "admin"}
    state = SessionState(sid, now, "api", 3600.0, now + 3600, 300.0)
    async with await open_sqlite_store(data, durability="process") as store:
        await store.create(meta_of(state, tokens), state.to_snapshot())
        change = p.Change(session_id=sid, seq=1, op="set", ts=now + 8, channel="api",
                          writer="w", key="k", value="kept", version=1)
        state.apply(change)
        await store.append(meta_of(state, tokens),
                           [StoredEvent(1, change.ts, p.encode_body(change))])
    assert _stored_idle_deadline(data, sid) == pytest.approx(now + 300)
    return now


async def test_a_lagging_stored_idle_deadline_never_expires_a_session_early(
        tmp_path: Path, socket_dir: Path, clock: MockClock) -> None:
    data, sid = tmp_path / "data", "a" * 32
    now = await _store_a_lagging_idle_deadline(data, sid)
    async with run_daemon(make_config(data, socket_dir, ws=None, durability="process")) as daemon:
        store, wall = _sqlite(daemon), daemon.clock
        # Past the stored deadline, before the journal's: the reaper checks
        # the journal, keeps the session and stores the right deadline.
        clock.jump(now + 302 - wall.now())
        await wait_until(lambda: _stored_idle_deadline(data, sid) > now + 300,
                         "the stored deadline corrected")
        assert _stored_idle_deadline(data, sid) == pytest.approx(now + 308)
        assert reaper_expired(daemon) == 0
        loaded = await store.load(sid)
        assert loaded is not None and len(loaded.events) == 1
        # Past the journal's deadline, it expires.
        clock.jump(now + 309 - wall.now())
        await wait_until(lambda: _count_is(store, 0), "the session expired")
        assert reaper_expired(daemon) == 1


def reaper_expired(daemon: Daemon) -> int:
    return daemon.reaper.statistics().dormant_expired


async def test_activation_judges_expiry_by_the_journal(
        tmp_path: Path, socket_dir: Path, clock: MockClock) -> None:
    data, sid = tmp_path / "data", "b" * 32
    now = await _store_a_lagging_idle_deadline(data, sid)
    config = make_config(data, socket_dir, ws=None, durability="process")
    async with run_daemon(config) as daemon:
        clock.jump(now + 304 - daemon.clock.now())
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c:
            got = await c.call(p.Get, session_id=sid, key="k", token=LAGGING_TOKEN)
            assert isinstance(got, p.Value) and got.value == "kept", got


@asynccontextmanager
async def _crashing_daemon(config: Config, wall: Callable[[], float]) -> AsyncIterator[Daemon]:
    """A daemon that crashes on the way out: every task is cancelled at once,
    so no session hibernates and nothing more reaches the store (what a
    `kill -9` leaves, in-process and in virtual time)."""
    async with trio.open_nursery() as nursery:
        with real_time_passing(), trio.fail_after(TIMEOUT):
            daemon: Daemon = await nursery.start(Daemon(config, wall=wall).run)
        yield daemon
        nursery.cancel_scope.cancel()


# Read 5.5 s before the idle deadline (the daemon stores that read), and
# 8 s after creation (within IDLE_LAG of what is stored: it does not).
@pytest.mark.parametrize("read_at", [14.5, 8.0])
async def test_a_crash_never_expires_a_session_read_within_its_idle_timeout(
        tmp_path: Path, socket_dir: Path, clock: MockClock, read_at: float) -> None:
    config = make_config(tmp_path / "data", socket_dir, ws=None, durability="process")
    wall = trio_wall()  # one wall clock for both runs
    async with _crashing_daemon(config, wall) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c:
            # One left to the reaper after the crash, one asked for again.
            dormant = await c.call(p.Create, ttl=3600, idle_timeout=20)
            asked = await c.call(p.Create, ttl=3600, idle_timeout=20)
            assert isinstance(dormant, p.Created) and isinstance(asked, p.Created)
            t0 = dormant.expires_at - 3600
            # Read, never written.
            clock.jump(t0 + read_at - wall())
            for s in (dormant, asked):
                got = await c.call(p.Get, session_id=s.session_id, token=s.token)
                assert isinstance(got, p.StateReply), got
                assert daemon.registry.active(s.session_id) is not None  # not hibernated
    async with run_daemon(config, wall=wall) as daemon:
        store, reaper = _sqlite(daemon), daemon.reaper
        await wait_until(lambda: reaper.statistics().wakeups >= 1, "the reaper's first round")
        # Past the deadline the creation stored, just before the read's.
        clock.jump(t0 + read_at + 20 - 0.1 - wall())
        await trio.sleep(0.5)  # real time: the reaper looks within WALL_RECHECK virtual
        assert reaper_expired(daemon) == 0
        assert await store.count() == 2
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c:
            got = await c.call(p.Get, session_id=asked.session_id, token=asked.token)
            assert isinstance(got, p.StateReply), got
            # Truly idle: expired, at most IDLE_LAG after the read's deadline.
            clock.jump(t0 + read_at + 20 + IDLE_LAG + 0.01 - wall())
            await wait_until(lambda: _count_is(store, 1), "the idle session expired")
            assert reaper_expired(daemon) == 1
            error = await c.call(p.Get, session_id=dormant.session_id, token=dormant.token)
            assert isinstance(error, p.Error) and error.code == "expired", error
            assert "(idle)" in error.message
