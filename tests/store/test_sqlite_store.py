"""What the SQLite store adds to the contract: persistence, durability levels,
group commit, schema migrations, and reaper queries that never scan."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from contextlib import closing
from pathlib import Path

import pytest
import trio
import trio.testing
from store_helpers import NOW, FakeWallClock, events, make_meta, raw_db, wait_queued, writer_paused
from trio.testing import MockClock

from nexusd.store import _checkpoint, _writer
from nexusd.store._crypto import KeyRing
from nexusd.store._interface import SessionMeta
from nexusd.store._schema import (
    DB_FILE,
    DUE_SQL,
    INSERT_SESSION,
    NEXT_DEADLINE_SQL,
    SCHEMA_VERSION,
    migrate,
    new_session_row,
)
from nexusd.store._sqlite import SqliteStore, StoreError, open_sqlite_store

# -- persistence and durability ----------------------------------------------


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_everything_survives_close_and_reopen(tmp_path: Path, durability: str,
                                                    wall: FakeWallClock) -> None:
    store = await open_sqlite_store(tmp_path, durability=durability, clock=wall)
    await store.create(make_meta("a", expires_at=300.0, idle_expires_at=100.0), b"a0")
    await store.create(make_meta("b", expires_at=200.0), b"b0")
    await store.append(make_meta("a", expires_at=300.0, idle_expires_at=150.0), events(1, 6))
    await store.save_snapshot(make_meta("a", expires_at=300.0, idle_expires_at=150.0), 4, b"a4")
    await store.aclose()

    # No keyring given: both opens use the key file the first one created.
    store = await open_sqlite_store(tmp_path, durability=durability)
    try:
        loaded = await store.load("a")
        assert loaded is not None
        assert (loaded.snapshot, loaded.snapshot_seq) == (b"a4", 4)
        assert list(loaded.history) == events(1, 4)
        assert list(loaded.events) == events(5, 6)
        assert loaded.meta.idle_expires_at == 150.0
        assert await store.count() == 2
        assert [m.session_id for m in await store.due(1e9, 10)] == ["a", "b"]
        assert await store.next_deadline() == 150.0
    finally:
        await store.aclose()


@pytest.mark.parametrize(("durability", "synchronous"), [("process", 1), ("power", 2)])
async def test_disk_durability_levels(tmp_path: Path, durability: str, synchronous: int) -> None:
    store = await open_sqlite_store(tmp_path, durability=durability)
    try:
        # synchronous is per connection: ask the writer's own (1 = NORMAL, 2 = FULL).
        assert store._writer._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert store._writer._conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        await store.aclose()
    with raw_db(tmp_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / DB_FILE).stat().st_mode & 0o777 == 0o600


async def test_durability_none_writes_nothing_to_disk(tmp_path: Path) -> None:
    store = await open_sqlite_store(tmp_path, durability="none")
    await store.create(make_meta("a"), b"a0")
    await store.append(make_meta("a"), events(1, 3))
    loaded = await store.load("a")
    await store.aclose()
    assert loaded is not None and list(loaded.events) == events(1, 3)
    assert os.listdir(tmp_path) == []


async def test_bad_durability_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of"):
        await open_sqlite_store(tmp_path, durability="fast")
    with pytest.raises(ValueError, match="needs a data directory"):
        await open_sqlite_store(None, durability="process")


async def test_one_store_at_a_time_on_a_data_directory(tmp_path: Path,
                                                        keyring: KeyRing) -> None:
    store = await open_sqlite_store(tmp_path, keyring=keyring)
    await store.create(make_meta("s"), b"s0")
    try:
        for durability in ("process", "power"):
            with pytest.raises(StoreError, match=f"^the data directory {tmp_path} is in use "
                                                 f"by nexusd pid {os.getpid()}$"):
                await open_sqlite_store(tmp_path, durability=durability, keyring=keyring)
        assert await store.count() == 1  # the refused opens changed nothing
        # An in-memory database has no directory to share.
        await (await open_sqlite_store(None, durability="none")).aclose()
    finally:
        await store.aclose()
    # Closed, the lock is free: the next store opens.
    store = await open_sqlite_store(tmp_path, keyring=keyring)
    assert await store.count() == 1
    await store.aclose()


async def test_data_dir_is_created_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"
    store = await open_sqlite_store(data_dir)
    await store.aclose()
    assert data_dir.stat().st_mode & 0o777 == 0o700


_CHILD = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from nexusd.store._sqlite import open_sqlite_store
    from nexusd.store._interface import SessionMeta, StoredEvent

    async def main():
        store = await open_sqlite_store(Path(sys.argv[1]), durability=sys.argv[2])
        meta = SessionMeta("s", 0.0, 1e9, 1e9, None, None, {})
        await store.create(meta, b"")

        async def writer(k):
            for i in range(1_000_000):
                seq = k * 10_000_000 + i
                await store.append(meta, [StoredEvent(seq, 0.0, b"x")])
                print(seq, flush=True)  # acknowledged

        async with trio.open_nursery() as nursery:
            for k in range(1, 9):
                nursery.start_soon(writer, k)

    trio.run(main)
""")


def _kill_after_acks(data_dir: Path, durability: str, n: int) -> set[int]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(data_dir), durability],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: set[int] = set()
    watchdog = threading.Timer(60, proc.kill)  # a hung child fails the test, not CI
    watchdog.start()
    try:
        while len(acked) < n:
            line = proc.stdout.readline()
            assert line, "the child stopped before the kill"
            acked.add(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        acked.update(int(line) for line in proc.stdout.read().split())
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_kill_9_loses_no_acknowledged_append(tmp_path: Path, durability: str) -> None:
    acked = await trio.to_thread.run_sync(_kill_after_acks, tmp_path, durability, 300)

    store = await open_sqlite_store(tmp_path, durability=durability)
    try:
        loaded = await store.load("s")
    finally:
        await store.aclose()
    assert loaded is not None
    assert acked <= {e.seq for e in loaded.events}


# -- group commit -----------------------------------------------------------


async def test_concurrent_appends_share_commits(sqlite_store: SqliteStore) -> None:
    sessions = [make_meta(f"s{i:02d}") for i in range(50)]
    for meta in sessions:
        await sqlite_store.create(meta, b"")

    async with trio.open_nursery() as nursery, writer_paused(sqlite_store):
        before = sqlite_store.statistics()
        for meta in sessions:  # 200 appends from 200 tasks
            for seq in range(1, 5):
                nursery.start_soon(sqlite_store.append, meta, events(seq, seq))
        await wait_queued(sqlite_store, 200)

    after = sqlite_store.statistics()
    assert after.appends - before.appends == 200
    assert after.commits - before.commits == 1
    assert after.largest_batch == 200
    for meta in sessions:
        loaded = await sqlite_store.load(meta.session_id)
        assert loaded is not None and list(loaded.events) == events(1, 4)


@pytest.fixture
def frozen_clock() -> MockClock:
    """Time stands still: every write comes within the writer's grouping window."""
    return MockClock()


async def test_appends_from_tasks_runnable_together_share_a_commit(
        tmp_path: Path, frozen_clock: MockClock) -> None:
    # At "process" the writer commits in trio's thread. While writes come
    # thick, the first caller yields once to the other tasks about to run,
    # then commits for them all.
    store = await open_sqlite_store(tmp_path, durability="process")
    async with store:
        for i in range(20):
            await store.create(make_meta(f"s{i}"), b"")
        before = store.statistics()
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(store.append, make_meta(f"s{i}"), events(1, 1))
        after = store.statistics()
        assert (after.appends - before.appends, after.commits - before.commits) == (20, 1)


async def test_a_queue_longer_than_a_batch_is_served_batch_by_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen_clock: MockClock) -> None:
    # Each leader commits one batch and hands the lead to the next caller.
    monkeypatch.setattr(_writer, "_MAX_BATCH", 4)
    store = await open_sqlite_store(tmp_path, durability="process")
    async with store:
        await store.create(make_meta("s"), b"")
        before = store.statistics()
        async with trio.open_nursery() as nursery, writer_paused(store):
            for seq in range(1, 11):
                nursery.start_soon(store.append, make_meta("s"), events(seq, seq))
            await wait_queued(store, 10)
        after = store.statistics()
        assert (after.appends - before.appends, after.commits - before.commits) == (10, 3)
        assert after.largest_batch == 4
        loaded = await store.load("s")
        assert loaded is not None and list(loaded.events) == events(1, 10)
        await store.append(make_meta("s"), events(11, 11))  # and the writer is idle again


async def test_the_wal_is_checkpointed_outside_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # At "process" the writer never checkpoints (it would wait on the disk in
    # trio's thread): a thread of its own copies the WAL into the database.
    monkeypatch.setattr(_checkpoint, "_CHECKPOINT_EVERY", 5)
    store = await open_sqlite_store(tmp_path, durability="process")
    async with store:
        assert store._writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        await store.create(make_meta("s"), b"")
        for seq in range(1, 11):
            await store.append(make_meta("s"), events(seq, seq))

        def backfilled() -> bool:
            with raw_db(tmp_path) as conn:
                _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return bool(log) and log == done

        checkpointer = store._writer._checkpointer  # type: ignore[attr-defined]
        with trio.fail_after(10):  # real time: the checkpointer is a thread
            while not checkpointer.checkpoints:  # noqa: ASYNC110 - set by a thread
                await trio.sleep(0.01)
        assert backfilled()


async def test_a_lone_write_commits_in_trios_thread_a_storm_in_a_worker(
        tmp_path: Path, frozen_clock: MockClock) -> None:
    # A lone write keeps its fast path (no hand-off to a thread); a batch of
    # hundreds of snapshots (sessions hibernating together) would hold the
    # event loop for tens of ms, and commits in a worker thread instead.
    store = await open_sqlite_store(tmp_path, durability="process")
    threads: list[int] = []

    def write(conn: sqlite3.Connection) -> None:
        threads.append(threading.get_ident())

    async with store:
        writer = store._writer
        await writer.submit("raw", write)
        assert threads == [threading.get_ident()]
        threads.clear()
        async with trio.open_nursery() as nursery, writer_paused(store):
            for _ in range(_writer._INLINE_BATCH + 1):
                nursery.start_soon(writer.submit, "snapshot", write)
            await wait_queued(store, _writer._INLINE_BATCH + 1)
        assert len(threads) == _writer._INLINE_BATCH + 1
        assert threading.get_ident() not in threads
        assert store.statistics().largest_batch == _writer._INLINE_BATCH + 1
        assert writer.threaded_commits == 1  # type: ignore[attr-defined]


async def test_a_commit_never_truncates_the_wal_in_trios_thread(tmp_path: Path) -> None:
    # Shortening a WAL file grown to hundreds of MB by a burst takes the
    # kernel 100-250 ms: the first commit after a full checkpoint would do it
    # (journal_size_limit) in trio's thread, stalling the event loop. The
    # checkpointer's thread brings the WAL back under its limit instead.
    store = await open_sqlite_store(tmp_path, durability="process", wal_limit=64 << 10)
    wal = tmp_path / (DB_FILE + "-wal")
    async with store:
        checkpointer = store._writer._checkpointer  # type: ignore[attr-defined]
        checkpointer._wal_limit = 1 << 40  # not yet
        for i in range(200):
            await store.create(make_meta(f"s{i:03d}"), b"x" * 2000)
        grown = wal.stat().st_size
        assert grown > 10 * (64 << 10)
        with raw_db(tmp_path) as conn:  # every frame copied: the next commit restarts the WAL
            _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert log == done
        await store.append(make_meta("s000"), events(1, 1))
        assert wal.stat().st_size == grown
        checkpointer._wal_limit = 64 << 10
        with trio.fail_after(10):  # real time: the checkpointer is a thread
            while not checkpointer.truncations:  # noqa: ASYNC110 - counted by a thread
                await trio.sleep(0.01)
        assert wal.stat().st_size <= 64 << 10
        await store.append(make_meta("s000"), events(2, 2))
        loaded = await store.load("s000")
        assert loaded is not None and list(loaded.events) == events(1, 2)


def _stored_idle(data: Path, session_id: str) -> float:
    with raw_db(data) as conn:
        value: float = conn.execute("SELECT idle_expires_at FROM sessions WHERE id = ?",
                                    (session_id,)).fetchone()[0]
    return value


async def test_appends_refresh_a_moving_idle_deadline_lazily(sqlite_store: SqliteStore,
                                                             tmp_path: Path) -> None:
    def meta(idle: float) -> SessionMeta:
        return make_meta("s", expires_at=5000.0, idle_expires_at=idle)

    await sqlite_store.create(meta(100.0), b"")
    await sqlite_store.append(meta(105.0), events(1, 1))
    assert _stored_idle(tmp_path, "s") == 100.0  # 5 s behind: the journal says it
    await sqlite_store.append(meta(110.0), events(2, 2))
    assert _stored_idle(tmp_path, "s") == 110.0  # 10 s behind: stored
    await sqlite_store.append(meta(111.0), [])
    assert _stored_idle(tmp_path, "s") == 111.0  # no events: always stored
    await sqlite_store.append(make_meta("s", expires_at=6000.0, idle_expires_at=112.0),
                              events(3, 3))
    assert _stored_idle(tmp_path, "s") == 112.0  # anything else changed: stored


async def test_a_failed_append_leaves_no_belief_about_the_stored_row(
        sqlite_store: SqliteStore, tmp_path: Path) -> None:
    def meta(idle: float) -> SessionMeta:
        return make_meta("s", expires_at=5000.0, idle_expires_at=idle)

    await sqlite_store.create(meta(100.0), b"")
    await sqlite_store.append(meta(100.0), events(1, 1))
    # Stores the row's new deadline, then fails on the duplicate seq: undone.
    with pytest.raises(StoreError, match="already journaled"):
        await sqlite_store.append(meta(120.0), events(1, 1))
    assert _stored_idle(tmp_path, "s") == 100.0
    # 5 s after what the failed append meant to store, 25 s after what is there.
    await sqlite_store.append(meta(125.0), events(2, 2))
    assert _stored_idle(tmp_path, "s") == 125.0


async def test_sequential_appends_commit_each(sqlite_store: SqliteStore) -> None:
    await sqlite_store.create(make_meta("s"), b"")
    before = sqlite_store.statistics()
    for seq in range(1, 11):
        await sqlite_store.append(make_meta("s"), events(seq, seq))
    after = sqlite_store.statistics()
    assert (after.commits - before.commits, after.appends - before.appends) == (10, 10)
    assert after.events - before.events == 10


async def test_each_error_reaches_its_own_caller(sqlite_store: SqliteStore) -> None:
    await sqlite_store.create(make_meta("a"), b"")
    await sqlite_store.create(make_meta("b"), b"")
    await sqlite_store.append(make_meta("b"), events(1, 1))
    outcomes: dict[str, object] = {}

    async def run(name: str, fn: object, *args: object) -> None:
        try:
            await fn(*args)  # type: ignore[operator]
        except Exception as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = "ok"

    async with trio.open_nursery() as nursery, writer_paused(sqlite_store):
        before = sqlite_store.statistics()
        s = sqlite_store
        nursery.start_soon(run, "a1", s.append, make_meta("a"), events(1, 1))
        nursery.start_soon(run, "ghost", s.append, make_meta("ghost"), events(1, 1))
        # seq 1 is journaled already: the whole request fails, seq 2 included
        nursery.start_soon(run, "b-dup", s.append,
                           make_meta("b", idle_expires_at=5.0), events(1, 2))
        nursery.start_soon(run, "a-again", s.create, make_meta("a"), b"")
        nursery.start_soon(run, "a2", s.append, make_meta("a"), events(2, 2))
        await wait_queued(sqlite_store, 5)

    assert outcomes["a1"] == outcomes["a2"] == "ok"
    assert isinstance(outcomes["ghost"], KeyError)
    assert isinstance(outcomes["a-again"], KeyError)
    assert isinstance(outcomes["b-dup"], StoreError)
    assert sqlite_store.statistics().commits - before.commits == 1
    a, b = await sqlite_store.load("a"), await sqlite_store.load("b")
    assert a is not None and list(a.events) == events(1, 2)
    assert b is not None and list(b.events) == events(1, 1)
    assert b.meta.idle_expires_at is None  # the failed append's meta update was undone


async def test_a_failed_commit_fails_every_request_in_it(sqlite_store: SqliteStore,
                                                        tmp_path: Path) -> None:
    # A deferred foreign key is checked at COMMIT: a way to make a commit fail.
    with raw_db(tmp_path) as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE child (p REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    await sqlite_store._writer.submit("raw", lambda c: c.execute("PRAGMA foreign_keys = ON"))
    await sqlite_store.create(make_meta("s"), b"")
    failures: list[Exception] = []

    async def run(fn: object, *args: object) -> None:
        with pytest.raises(StoreError, match="could not commit: FOREIGN KEY") as exc_info:
            await fn(*args)  # type: ignore[operator]
        failures.append(exc_info.value)

    async with trio.open_nursery() as nursery, writer_paused(sqlite_store):
        nursery.start_soon(run, sqlite_store.append, make_meta("s"), events(1, 1))
        nursery.start_soon(run, sqlite_store._writer.submit, "orphan",
                           lambda c: c.execute("INSERT INTO child VALUES (42)"))
        nursery.start_soon(run, sqlite_store.create, make_meta("t"), b"")
        await wait_queued(sqlite_store, 3)

    assert len(failures) == 3 and len({id(e) for e in failures}) == 3
    loaded = await sqlite_store.load("s")
    assert loaded is not None and list(loaded.events) == []
    assert await sqlite_store.load("t") is None
    await sqlite_store.append(make_meta("s"), events(1, 1))  # the writer carries on
    loaded = await sqlite_store.load("s")
    assert loaded is not None and list(loaded.events) == events(1, 1)


async def test_a_cancelled_caller_does_not_break_the_writer(sqlite_store: SqliteStore) -> None:
    await sqlite_store.create(make_meta("s"), b"")
    async with writer_paused(sqlite_store):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sqlite_store.append, make_meta("s"), events(1, 1))
                await wait_queued(sqlite_store, 1)
                scope.cancel()
    # Withdrawn before the writer took it: it never happened.
    loaded = await sqlite_store.load("s")
    assert loaded is not None and list(loaded.events) == []
    # And the writer carries on.
    await sqlite_store.append(make_meta("s"), events(1, 2))
    loaded = await sqlite_store.load("s")
    assert loaded is not None and list(loaded.events) == events(1, 2)


async def test_aclose_finishes_queued_writes(tmp_path: Path, keyring: KeyRing) -> None:
    store = await open_sqlite_store(tmp_path, keyring=keyring)
    await store.create(make_meta("s"), b"")
    async with trio.open_nursery() as nursery:
        for seq in range(1, 51):
            nursery.start_soon(store.append, make_meta("s"), events(seq, seq))
        await trio.testing.wait_all_tasks_blocked()
        await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await store.append(make_meta("s"), events(51, 51))
    with pytest.raises(trio.ClosedResourceError):
        await store.load("s")

    store = await open_sqlite_store(tmp_path, keyring=keyring)
    try:
        loaded = await store.load("s")
        assert loaded is not None and len(loaded.events) == 50
    finally:
        await store.aclose()


# -- retention --------------------------------------------------------------


async def test_history_keeps_only_the_retention_age(tmp_path: Path, keyring: KeyRing) -> None:
    wall = FakeWallClock()
    store = await open_sqlite_store(tmp_path, keyring=keyring, retention_events=100,
                                    retention_seconds=3600.0, clock=wall)
    try:
        await store.create(make_meta("s"), b"")
        await store.append(make_meta("s"), events(1, 4, ts=NOW - 8000.0))  # > 1 h old
        await store.append(make_meta("s"), events(5, 8, ts=NOW - 3000.0))
        await store.save_snapshot(make_meta("s"), 7, b"s7")

        loaded = await store.load("s")
        assert loaded is not None
        assert list(loaded.history) == events(5, 7, ts=NOW - 3000.0)
        assert list(loaded.events) == events(8, 8, ts=NOW - 3000.0)

        # Events after the snapshot are state, not history: never pruned.
        wall.now += 10_000.0
        await store.save_snapshot(make_meta("s"), 7, b"s7")
        loaded = await store.load("s")
        assert loaded is not None
        assert list(loaded.history) == []
        assert list(loaded.events) == events(8, 8, ts=NOW - 3000.0)
    finally:
        await store.aclose()


# -- schema -----------------------------------------------------------------


async def test_migrates_a_version_1_database(tmp_path: Path, keyring: KeyRing) -> None:
    # A database as the first schema left it, with a session in it.
    meta = make_meta("old", expires_at=500.0)
    row, cipher = new_session_row(keyring, meta, b"old state")
    with raw_db(tmp_path) as conn:
        migrate(conn, target=1)
        v1_row = row[:8] + row[9:]  # no idle_lag yet (schema 3)
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)", v1_row)
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                     ("old", 1, NOW, cipher.seal("event", 1, b"old change")))
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1

    store = await open_sqlite_store(tmp_path, keyring=keyring)
    try:
        loaded = await store.load("old")
        assert loaded is not None and loaded.snapshot == b"old state"
        assert loaded.meta.idle_lag == 0.0  # its stored deadline was exact, as before
        assert [e.payload for e in loaded.events] == [b"old change"]
        assert await store.count() == 1  # the v2 counter starts from the existing rows
        await store.create(make_meta("new"), b"")
        assert await store.count() == 2
        assert [m.session_id for m in await store.due(600.0, 10)] == ["old"]
        assert await store.load_analytics() is None  # schema 4: none stored yet
    finally:
        await store.aclose()
    with raw_db(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


async def test_refuses_a_newer_schema(tmp_path: Path, keyring: KeyRing) -> None:
    await (await open_sqlite_store(tmp_path, keyring=keyring)).aclose()
    with raw_db(tmp_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this nexusd supports"):
        await open_sqlite_store(tmp_path, keyring=keyring)


async def test_refuses_a_foreign_file(tmp_path: Path, keyring: KeyRing) -> None:
    with raw_db(tmp_path) as conn:
        conn.execute("PRAGMA application_id = 42")
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a nexusd store"):
        await open_sqlite_store(tmp_path, keyring=keyring)
    (tmp_path / DB_FILE).write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match="cannot open"):
        await open_sqlite_store(tmp_path, keyring=keyring)


# -- the reaper's queries ---------------------------------------------------


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> str:
    return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


async def test_reaper_queries_use_the_deadline_index(sqlite_store: SqliteStore,
                                                     tmp_path: Path) -> None:
    with raw_db(tmp_path) as conn:
        conn.execute("ANALYZE")
        due_plan = _plan(conn, DUE_SQL, (0.0, 10))
        next_plan = _plan(conn, NEXT_DEADLINE_SQL)
    assert "USING INDEX sessions_by_deadline" in due_plan, due_plan
    assert "TEMP B-TREE" not in due_plan, due_plan  # no sort: the index is in order
    assert "USING COVERING INDEX sessions_by_deadline" in next_plan, next_plan
    assert "SCAN" not in due_plan + next_plan


def _vm_steps(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    """Virtual-machine instructions SQLite runs for `sql` (in hundreds): work, not time."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0
    conn.set_progress_handler(tick, 100)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 0)
    return steps


async def test_100k_dormant_sessions_cost_the_reaper_nothing(tmp_path: Path,
                                                            keyring: KeyRing) -> None:
    n = 100_000
    store = await open_sqlite_store(tmp_path, keyring=keyring)
    try:
        first = NOW + 3600.0
        rows = [new_session_row(keyring, make_meta(f"d{i:06d}",
                                                   expires_at=first + (i * 7919) % n),
                                b"dormant")[0] for i in range(n)]
        with raw_db(tmp_path) as conn:
            conn.execute("BEGIN")
            conn.executemany(INSERT_SESSION, rows)
            conn.execute("COMMIT")

        before = store.statistics()
        assert await store.due(NOW, 100) == []
        assert await store.next_deadline() == first
        assert await store.count() == n
        one = pow(7919, -1, n)  # the session whose deadline is first + 1
        assert [m.session_id for m in await store.due(first + 1, 100)] == [
            "d000000", f"d{one:06d}"]
        assert store.statistics().sessions_read - before.sessions_read == 2

        with closing(sqlite3.connect(tmp_path / DB_FILE)) as conn:
            indexed = _vm_steps(conn, DUE_SQL, (NOW, 100))
            scanned = _vm_steps(conn, DUE_SQL.replace("FROM sessions",
                                                      "FROM sessions NOT INDEXED"), (NOW, 100))
            minimum = _vm_steps(conn, NEXT_DEADLINE_SQL, ())
        assert indexed <= 1 and minimum <= 1  # under 100 instructions each
        assert scanned > n / 100  # what a scan would cost: the measure can tell
    finally:
        await store.aclose()
