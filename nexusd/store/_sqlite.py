"""The SQLite store: durable, encrypted at rest, group-committed.

One file, ``nexusd.db`` in the data directory, in WAL mode. Writes from every
session actor go through one writer, which takes all that is queued, runs it
in a single transaction and commits once ("group commit"): under load, one
commit (one fsync at durability "power") acknowledges many appends. A
caller's `append` returns only after the commit that holds it, so what it
acknowledged survives:

- "process" (default): synchronous=NORMAL in WAL. A commit is in the WAL file
  (the OS has it) before `append` returns: survives `kill -9` of the daemon,
  not a power cut. Such a commit never waits for the disk, so the writer
  commits in trio's own thread, and a checkpointer thread copies the WAL into
  the database file.
- "power": synchronous=FULL. Each group commit also fsyncs the WAL, in a
  writer thread of its own.
- "none": an in-memory SQLite database, nothing on disk; for tests and
  benchmarks. It is no daemon setting: the daemon's durability "memory" is
  `MemoryStore` (see `nexusd.store.open_store`, which chooses the engine).

One daemon at a time: the store holds an exclusive `flock` on
``nexusd.lock`` in the data directory for as long as it is open (the file
names the holder's pid). The OS drops the lock when the process dies, however
it dies, so a `kill -9` never leaves the directory stuck; a second store (a
second daemon) on the same directory refuses to open (see `_lock`).

Snapshots and event payloads are sealed with per-session data keys (see
`nexusd.store._crypto`); metadata the reaper needs (deadlines, token hashes) stays
in the clear so that it can be indexed. `delete` crypto-shreds: the wrapped
data key and the rows are removed in one transaction with
``PRAGMA secure_delete=ON``, and a WAL checkpoint follows soon after so the old
pages leave the WAL too.
"""

from __future__ import annotations

import collections
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from ._checkpoint import Checkpointer
from ._crypto import KeyRing, SessionCipher, load_keyring
from ._interface import (
    IDLE_LAG,
    KeyManagement,
    LoadedSession,
    SessionMeta,
    StoredEvent,
    StoreError,
    check_snapshot_seq,
)
from ._lock import lock_data_dir
from ._schema import (
    DB_FILE,
    DUE_SQL,
    INSERT_EVENT,
    INSERT_SESSION,
    META_COLUMNS,
    NEXT_DEADLINE_SQL,
    UPDATE_META,
    check_keys,
    connect_db,
    fixed_meta,
    meta_from_row,
    meta_params,
    migrate,
    new_session_row,
)
from ._writer import TaskWriter, ThreadWriter, Writer

__all__ = [
    "DURABILITIES",
    "SqliteStore",
    "StoreStatistics",
    "open_sqlite_store",
]

T = TypeVar("T")

#: SQLite's durabilities ("none": an in-memory database; see above).
DURABILITIES: Final = ("none", "process", "power")
_CIPHER_CACHE: Final = 4096  # data keys the writer keeps unwrapped


@attrs.frozen
class StoreStatistics:
    """A snapshot of a store's counters (see `SqliteStore.statistics`).

    Attributes:
        commits: transactions committed by the writer.
        writes: write requests (create, append, save_snapshot, delete, ...) committed.
        appends: `append` calls committed.
        events: events journaled by those appends.
        largest_batch: the most requests one commit has held.
        queued: requests waiting for the writer right now.
        reads: reads served.
        sessions_read: session rows decoded by reads (a measure of read work).
        wal_bytes: the size of the WAL file now.
        checkpoints: WAL checkpoints the store ran (at durability "power",
            not counting those SQLite runs by itself after commits).
        wal_truncations: checkpoints that emptied the WAL file (after deletes,
            over the WAL limit, or asked for).
    """

    commits: int
    writes: int
    appends: int
    events: int
    largest_batch: int
    queued: int
    reads: int
    sessions_read: int
    wal_bytes: int
    checkpoints: int
    wal_truncations: int


# -- the store --------------------------------------------------------------

class SqliteStore:
    """The durable store. Make one with `open_sqlite_store`.

    Reads (`load`, `due`, `next_deadline`, `list_sessions`) run on a small pool
    of read connections in worker threads rather than through the writer: in
    WAL mode readers see the last commit without waiting for the writer, so an
    activation never queues behind a group commit's fsync. (An in-memory
    database has no WAL and no second connection, so there reads go through
    the writer, which then never waits on a disk.)
    """

    def __init__(self, writer: Writer, readers: list[sqlite3.Connection], *,
                 keyring: KeyRing, retention_events: int, retention_seconds: float,
                 clock: Callable[[], float], data_dir: Path | None = None,
                 lock: int | None = None) -> None:
        self.keyring = keyring
        self._data_dir = data_dir
        self._lock = lock  # the data directory's lock (`lock_data_dir`), held until aclose
        self.retention_events = retention_events
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._writer = writer
        self._n_readers = len(readers)
        self._idle_send, self._idle_readers = trio.open_memory_channel[sqlite3.Connection](
            len(readers))
        for conn in readers:
            self._idle_send.send_nowait(conn)
        self._closed = False
        self._reads = self._sessions_read = 0
        # Data keys in use, unwrapped: touched only by the writer.
        self._ciphers: collections.OrderedDict[str, SessionCipher] = collections.OrderedDict()
        # What the sessions rows hold, as far as the writer knows: fixed
        # metadata and the idle deadline.
        self._stored: collections.OrderedDict[str, tuple[tuple[Any, ...], float | None]] = (
            collections.OrderedDict())
        writer.on_failure = self._stored.clear

    def statistics(self) -> StoreStatistics:
        w = self._writer
        return StoreStatistics(commits=w.commits, writes=w.writes, appends=w.appends,
                               events=w.events, largest_batch=w.largest_batch,
                               queued=w.queued, reads=self._reads,
                               sessions_read=self._sessions_read, wal_bytes=w.wal_bytes(),
                               checkpoints=w.checkpoints, wal_truncations=w.truncations)

    @property
    def keys(self) -> KeyManagement | None:
        """The key ring, reloaded from the data directory (or
        $NEXUSD_MASTER_KEYS) after a rotation; None for an in-memory database,
        whose throwaway ring nobody can rotate."""
        return None if self._data_dir is None else _SqliteKeys(self, self._data_dir)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- plumbing ----

    async def _write(self, kind: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        return await self._writer.submit(kind, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        self._reads += 1
        if not self._n_readers:
            return await self._writer.submit("read", fn)
        conn = await self._idle_readers.receive()
        try:
            if self._closed:
                raise trio.ClosedResourceError("the store is closed")
            return await trio.to_thread.run_sync(_in_read_transaction, fn, conn)
        finally:
            self._idle_send.send_nowait(conn)

    def _cipher(self, conn: sqlite3.Connection, session_id: str) -> SessionCipher:
        """The session's cipher, for the writer (which keeps the recent ones)."""
        cipher = self._ciphers.get(session_id)
        if cipher is None:
            key_id, wrapped = conn.execute(
                "SELECT key_id, wrapped_key FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            cipher = self.keyring.cipher(session_id, key_id, wrapped)
            self._remember(cipher)
        else:
            self._ciphers.move_to_end(session_id)
        return cipher

    def _remember(self, cipher: SessionCipher) -> None:
        self._ciphers[cipher.session_id] = cipher
        if len(self._ciphers) > _CIPHER_CACHE:
            self._ciphers.popitem(last=False)

    # ---- writes ----

    async def create(self, meta: SessionMeta, snapshot: bytes) -> None:
        """Records a new session with its initial state at seq 0.

        Raises:
            KeyError: a session with this id exists.
        """
        await self._write("create", functools.partial(self._create, meta, snapshot))

    def _create(self, meta: SessionMeta, snapshot: bytes, conn: sqlite3.Connection) -> None:
        current = self.keyring.current
        check = conn.execute("SELECT 1 FROM master_keys WHERE key_id = ?", (current,))
        if check.fetchone() is None:
            raise StoreError(f"master key {current} has been retired; restart nexusd so "
                             "that it reads the current key ring")
        row, cipher = new_session_row(self.keyring, meta, snapshot)
        try:
            conn.execute(INSERT_SESSION, row)
        except sqlite3.IntegrityError:
            raise KeyError(f"session {meta.session_id} exists") from None
        self._remember_meta(meta)
        self._remember(cipher)

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        """Journals `events` and updates the metadata row; returns once committed.

        When only the idle deadline has moved, and by less than `IDLE_LAG`
        seconds since it was stored, the row is left as it is: the events'
        timestamps carry that activity, and the stored deadline is one the
        reaper checks against the journal before acting on it. An append
        without events always stores `meta`.

        Raises:
            KeyError: the session is not in the store.
            StoreError: an event's seq is already journaled, or the commit failed.
        """
        await self._write("append", functools.partial(self._append, meta, events))

    def _append(self, meta: SessionMeta, events: Sequence[StoredEvent],
                conn: sqlite3.Connection) -> int:
        sid = meta.session_id
        if not events or self._meta_outdated(meta):
            self._update_meta(conn, meta)
        cipher = self._cipher(conn, sid)
        try:
            if len(events) == 1:
                e = events[0]
                conn.execute(INSERT_EVENT, (sid, e.seq, e.ts,
                                             cipher.seal("event", e.seq, e.payload)))
            else:
                conn.executemany(INSERT_EVENT,
                                 [(sid, e.seq, e.ts, cipher.seal("event", e.seq, e.payload))
                                  for e in events])
        except sqlite3.IntegrityError:
            raise StoreError(f"session {sid}: an event of seq "
                             f"{[e.seq for e in events]} is already journaled") from None
        return len(events)

    def _meta_outdated(self, meta: SessionMeta) -> bool:
        stored = self._stored.get(meta.session_id)
        if stored is None or stored[0] != fixed_meta(meta):
            return True
        idle, stored_idle = meta.idle_expires_at, stored[1]
        if idle == stored_idle:
            return False
        return idle is None or stored_idle is None or not 0 < idle - stored_idle < IDLE_LAG

    def _update_meta(self, conn: sqlite3.Connection, meta: SessionMeta) -> None:
        cur = conn.execute(UPDATE_META, (*meta_params(meta), meta.session_id))
        if cur.rowcount == 0:
            raise KeyError(f"session {meta.session_id} is not in the store")
        self._remember_meta(meta)

    def _remember_meta(self, meta: SessionMeta) -> None:
        """Notes what the row holds now (the writer forgets it all on any
        failure, as the transaction may not have kept it)."""
        sid = meta.session_id
        fixed = (dict(meta.tokens), *fixed_meta(meta)[1:])  # a copy: grants change it
        self._stored[sid] = (fixed, meta.idle_expires_at)
        self._stored.move_to_end(sid)
        if len(self._stored) > _CIPHER_CACHE:
            self._stored.popitem(last=False)

    async def save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes) -> None:
        """Stores the state as of `seq`; events up to `seq` become history, kept
        within the last `retention_events` and `retention_seconds`.

        Raises:
            KeyError: the session is not in the store.
            StoreError: the store holds a later snapshot; nothing is changed.
        """
        await self._write("snapshot", functools.partial(self._save_snapshot, meta, seq, snapshot))

    def _save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes,
                       conn: sqlite3.Connection) -> None:
        sid = meta.session_id
        row = conn.execute("SELECT snapshot_seq FROM sessions WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise KeyError(f"session {sid} is not in the store")
        check_snapshot_seq(sid, seq, row[0])
        self._update_meta(conn, meta)
        sealed = self._cipher(conn, sid).seal("snapshot", seq, snapshot)
        conn.execute("UPDATE sessions SET snapshot = ?, snapshot_seq = ? WHERE id = ?",
                     (sealed, seq, sid))
        # History beyond the count window: everything at or below the
        # (retention_events + 1)-th newest event up to seq.
        conn.execute("""
            DELETE FROM events WHERE session_id = :sid AND seq <= (
                SELECT seq FROM events WHERE session_id = :sid AND seq <= :seq
                ORDER BY seq DESC LIMIT 1 OFFSET :keep)""",
                     {"sid": sid, "seq": seq, "keep": self.retention_events})
        conn.execute("DELETE FROM events WHERE session_id = ? AND seq <= ? AND ts < ?",
                     (sid, seq, self._clock() - self.retention_seconds))

    async def delete(self, session_id: str, *, reason: str | None = None) -> None:
        """Removes the session and destroys its data key: its data becomes
        unrecoverable, from this database and from any backup of it made later.
        No tombstone is kept: `reason` is not used."""
        await self._write("delete", functools.partial(self._delete, session_id))

    def _delete(self, session_id: str, conn: sqlite3.Connection) -> None:
        # The session row holds the wrapped data key: without it the event
        # rows are ciphertext nobody can open, so it goes first. All in one
        # transaction; secure_delete zeroes the freed space in the pages.
        self._ciphers.pop(session_id, None)
        self._stored.pop(session_id, None)
        conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        conn.execute("DELETE FROM events WHERE session_id = ?", (session_id,))

    async def rewrap_keys(self, *, batch: int = 500) -> int:
        """Re-wraps every data key that is not under the current master key,
        `batch` sessions per transaction (interleaved with normal traffic).
        Snapshots and events are not touched. Returns how many it re-wrapped.

        Run it in the background after a rotation; afterwards the old master
        keys can be retired.
        """
        total = 0
        for key_id in self.keyring.ids:
            if key_id == self.keyring.current:
                continue
            while True:
                n = await self._write("rewrap", functools.partial(self._rewrap, key_id, batch))
                total += n
                if n < batch:
                    break
        return total

    async def reload_keyring(self, data_dir: Path) -> KeyRing:
        """Reads the key ring again (after `nexusd keys rotate`), checks it
        against the database as an open does, and makes it the store's.

        Raises:
            KeyRingError: the key file cannot be read.
            StoreError: the new ring lacks a key the data needs, or does not match.
        """
        ring = await trio.to_thread.run_sync(
            functools.partial(load_keyring, Path(data_dir), create=False))
        await self._write("raw", functools.partial(check_keys, keyring=ring))
        self.keyring = ring
        return ring

    def _rewrap(self, key_id: str, batch: int, conn: sqlite3.Connection) -> int:
        rows = conn.execute("SELECT id, wrapped_key FROM sessions WHERE key_id = ? LIMIT ?",
                            (key_id, batch)).fetchall()
        updates = []
        for sid, wrapped in rows:
            new_id, new_wrapped = self.keyring.wrap(sid, self.keyring.unwrap(sid, key_id, wrapped))
            updates.append((new_id, new_wrapped, sid))
        conn.executemany("UPDATE sessions SET key_id = ?, wrapped_key = ? WHERE id = ?", updates)
        return len(rows)

    async def checkpoint(self) -> None:
        """Copies the WAL into the database file and truncates it.

        The writer does this by itself about a second after deletes; this is
        for tests and for taking backups.

        Raises:
            StoreError: readers kept the WAL in use for 10 s, or the
                checkpoint failed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        await self._writer.checkpoint()

    # ---- reads ----

    async def load(self, session_id: str) -> LoadedSession | None:
        """The session to activate, or None if there is no such session.

        Raises:
            IntegrityError: a stored ciphertext failed authentication.
        """
        return await self._read(functools.partial(self._load, session_id))

    def _load(self, session_id: str, conn: sqlite3.Connection) -> LoadedSession | None:
        row = conn.execute(f"SELECT id, {META_COLUMNS}, key_id, wrapped_key, snapshot, "
                           "snapshot_seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        self._sessions_read += 1
        meta = meta_from_row(row)
        key_id, wrapped, sealed, snapshot_seq = row[9:]
        cipher = self.keyring.cipher(session_id, key_id, wrapped)
        snapshot = cipher.open("snapshot", snapshot_seq, sealed)
        history: list[StoredEvent] = []
        events: list[StoredEvent] = []
        for seq, ts, payload in conn.execute(
                "SELECT seq, ts, payload FROM events WHERE session_id = ? ORDER BY seq",
                (session_id,)):
            event = StoredEvent(seq, ts, cipher.open("event", seq, payload))
            (history if seq <= snapshot_seq else events).append(event)
        return LoadedSession(meta, snapshot, snapshot_seq, events, history)

    async def ended(self, session_id: str) -> str | None:
        """None: no tombstones are kept."""
        return None

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        """Up to `limit` sessions whose deadline is at or before `now`, earliest
        first (ties by id), read from the deadline index."""
        return await self._read(functools.partial(self._metas, DUE_SQL, (now, limit)))

    async def next_deadline(self) -> float | None:
        """The earliest deadline of any stored session, or None."""
        def run(conn: sqlite3.Connection) -> float | None:
            value: float | None = conn.execute(NEXT_DEADLINE_SQL).fetchone()[0]
            return value
        return await self._read(run)

    async def list_sessions(self, after: str | None, limit: int) -> list[SessionMeta]:
        """Sessions in id order, starting after the id `after`."""
        where, params = ("", (limit,)) if after is None else ("WHERE id > ? ", (after, limit))
        sql = f"SELECT id, {META_COLUMNS} FROM sessions {where}ORDER BY id LIMIT ?"
        return await self._read(functools.partial(self._metas, sql, params))

    def _metas(self, sql: str, params: tuple[Any, ...],
               conn: sqlite3.Connection) -> list[SessionMeta]:
        metas = [meta_from_row(row) for row in conn.execute(sql, params)]
        self._sessions_read += len(metas)
        return metas

    async def count(self) -> int:
        """How many sessions the store holds."""
        def run(conn: sqlite3.Connection) -> int:
            n: int = conn.execute(
                "SELECT value FROM counters WHERE name = 'sessions'").fetchone()[0]
            return n
        return await self._read(run)

    async def save_analytics(self, doc: bytes) -> None:
        """Stores the daemon-wide analytics document, replacing the last."""
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO aggregates VALUES ('analytics', ?)", (doc,))
        await self._write("analytics", run)

    async def load_analytics(self) -> bytes | None:
        """The analytics document last stored, or None."""
        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT doc FROM aggregates WHERE name = 'analytics'").fetchone()
            return None if row is None else bytes(row[0])
        return await self._read(run)

    async def aclose(self) -> None:
        """Finishes the queued writes, then closes every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            for _ in range(self._n_readers):  # waits for the reads in flight
                conn = await self._idle_readers.receive()
                await trio.to_thread.run_sync(conn.close)
            await self._writer.stop()
            if self._lock is not None:
                # Emptied first: a pid left in the file names a holder that died.
                os.ftruncate(self._lock, 0)
                os.close(self._lock)
                self._lock = None


@attrs.frozen
class _SqliteKeys:
    """`KeyManagement` for a `SqliteStore` in `data_dir`."""

    store: SqliteStore
    data_dir: Path

    @property
    def current(self) -> str:
        return self.store.keyring.current

    async def reload(self) -> str:
        return (await self.store.reload_keyring(self.data_dir)).current

    async def rewrap(self) -> int:
        return await self.store.rewrap_keys()


def _in_read_transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    # One transaction, so that a load sees its session row and events as of
    # the same commit.
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


async def open_sqlite_store(
    data_dir: Path | None,
    *,
    durability: str = "process",
    keyring: KeyRing | None = None,
    retention_events: int = 1000,
    retention_seconds: float = 86400.0,
    clock: Callable[[], float] = time.time,
    readers: int = 4,
    wal_limit: int = 64 << 20,
) -> SqliteStore:
    """Opens (creating if needed) the store in `data_dir`.

    Args:
        data_dir: the data directory (created mode 0700); unused, and may be
            None, for "none".
        durability: "process" (survives kill -9), "power" (fsync per group
            commit) or "none" (an in-memory database: nothing on disk).
        keyring: the master keys; by default read from $NEXUSD_MASTER_KEYS or
            the data directory's key file (created on first start). An
            in-memory database makes a throwaway one.
        retention_events, retention_seconds: how much history (events at or
            before the snapshot) each session keeps for resume.
        clock: wall-clock seconds, for the age window of retention.
        readers: read connections (disk stores only).
        wal_limit: WAL file size, bytes, past which the store truncates the
            WAL even if commits wait briefly (in a worker thread, never in
            trio's) for readers to finish (disk stores only).

    Raises:
        StoreError: the database cannot be opened, is newer than this nexusd,
            or does not match the master keys; or another process (a second
            daemon) has the data directory open.
        KeyRingError: the key ring is malformed or unsafe.
    """
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, "
                         f"not {durability!r}")
    if durability != "none" and data_dir is None:
        raise ValueError(f"durability {durability!r} needs a data directory")

    wal = None if data_dir is None else Path(data_dir) / f"{DB_FILE}-wal"

    def open_db() -> tuple[sqlite3.Connection, list[sqlite3.Connection], KeyRing,
                           Checkpointer | None]:
        if durability == "none":
            ring = keyring or KeyRing.generate()
            target = ":memory:"
        else:
            assert data_dir is not None and lock is not None
            target = str(Path(data_dir) / DB_FILE)
            # A missing key file is made afresh only for a new database: beside
            # an existing one it would be the wrong key, and saying so is clearer.
            ring = keyring or load_keyring(Path(data_dir), create=not Path(target).exists())
            # Created 0600 here; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(target, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            conn = connect_db(target, durability, wal_limit=wal_limit)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {target}: {exc}") from None
        try:
            migrate(conn)
            check_keys(conn, ring)
            pool = [connect_db(target, durability, wal_limit=wal_limit) for _ in range(readers)
                    if durability != "none"]
            for r in pool:
                r.execute("PRAGMA query_only = ON")
            checkpointer = None
            if durability == "process":
                # Checkpoints and WAL truncation are the checkpointer's job,
                # in its thread: this connection commits in trio's.
                conn.execute("PRAGMA wal_autocheckpoint = 0")
                conn.execute("PRAGMA journal_size_limit = -1")
                checkpointer = Checkpointer(connect_db(target, durability, wal_limit=wal_limit),
                                            wal, wal_limit=wal_limit)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open {target}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn, pool, ring, checkpointer

    lock: int | None = None
    if durability != "none":
        assert data_dir is not None
        # Before anything is read: a second daemon must not even look.
        lock = await trio.to_thread.run_sync(lock_data_dir, Path(data_dir))
    try:
        conn, pool, ring, checkpointer = await trio.to_thread.run_sync(open_db)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    writer: Writer = (ThreadWriter(conn, wal, wal_limit=wal_limit) if durability == "power"
                       else TaskWriter(conn, checkpointer))
    return SqliteStore(writer, pool, keyring=ring, retention_events=retention_events,
                       retention_seconds=retention_seconds, clock=clock,
                       data_dir=None if durability == "none" or data_dir is None
                       else Path(data_dir), lock=lock)
