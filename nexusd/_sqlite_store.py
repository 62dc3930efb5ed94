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
- "memory": an in-memory database, nothing on disk; for tests and demos.

Snapshots and event payloads are sealed with per-session data keys (see
`nexusd._crypto`); metadata the reaper needs (deadlines, token hashes) stays
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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import attrs
import msgpack
import trio

from ._crypto import (
    KeyRing,
    KeyRingError,
    SessionCipher,
    add_master_key,
    describe,
    load_keyring,
    new_data_key,
    remove_master_key,
)
from ._sqlite_writer import Checkpointer, TaskWriter, ThreadWriter, Writer
from ._store import LoadedSession, SessionMeta, StoredEvent, StoreError

__all__ = [
    "DB_FILE",
    "DURABILITIES",
    "SqliteStore",
    "StoreError",
    "StoreStatistics",
    "keys_list",
    "keys_retire",
    "keys_rotate",
    "open_sqlite_store",
]

T = TypeVar("T")

DB_FILE: Final = "nexusd.db"
DURABILITIES: Final = ("memory", "process", "power")
_APPLICATION_ID: Final = 0x6E657864  # "nexd": marks the file as ours
_BUSY_TIMEOUT_MS: Final = 10_000
_CIPHER_CACHE: Final = 4096  # data keys the writer keeps unwrapped
# An append refreshes the stored idle deadline only once it lags by this
# much: the journal's timestamps say the rest (see `SqliteStore.append`).
_IDLE_LAG: Final = 10.0


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


# -- schema -----------------------------------------------------------------

def _schema_1(conn: sqlite3.Connection) -> None:
    # Sessions: a rowid table, since snapshots can be large. The deadline index
    # carries the id so that due() reads it in (deadline, id) order without a sort.
    conn.execute("""
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            token_hashes BLOB NOT NULL,
            created_at REAL NOT NULL,
            ttl REAL NOT NULL,
            expires_at REAL NOT NULL,
            idle_timeout REAL,
            idle_expires_at REAL,
            deadline REAL NOT NULL,
            key_id TEXT NOT NULL,
            wrapped_key BLOB NOT NULL,
            snapshot BLOB NOT NULL,
            snapshot_seq INTEGER NOT NULL
        )""")
    conn.execute("CREATE INDEX sessions_by_deadline ON sessions (deadline, id)")
    # Events clustered by (session, seq): activation reads one contiguous range.
    conn.execute("""
        CREATE TABLE events (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            payload BLOB NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID""")


def _schema_2(conn: sqlite3.Connection) -> None:
    # Key rotation: a check value per master key, sessions findable by key, and
    # a session count kept by triggers (count(*) would walk a whole index).
    conn.execute("""
        CREATE TABLE master_keys (key_id TEXT PRIMARY KEY, check_value BLOB NOT NULL)""")
    conn.execute("CREATE INDEX sessions_by_key ON sessions (key_id)")
    conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    conn.execute("INSERT INTO counters SELECT 'sessions', count(*) FROM sessions")
    conn.execute("""
        CREATE TRIGGER sessions_counted_in AFTER INSERT ON sessions BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'sessions';
        END""")
    conn.execute("""
        CREATE TRIGGER sessions_counted_out AFTER DELETE ON sessions BEGIN
            UPDATE counters SET value = value - 1 WHERE name = 'sessions';
        END""")


#: Migration i brings a database from user_version i to i + 1. Append only.
MIGRATIONS: Final[Sequence[Callable[[sqlite3.Connection], None]]] = (_schema_1, _schema_2)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> None:
    """Brings the database at `conn` (in autocommit mode) up to version `target`,
    one transaction per migration.

    Raises:
        StoreError: the file is not a nexusd database, or a newer nexusd wrote it.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id not in (0, _APPLICATION_ID):
        raise StoreError("the database file is not a nexusd store")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the database has schema version {version}, newer than this "
                         f"nexusd supports ({SCHEMA_VERSION}); upgrade nexusd")
    for v in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[v](conn)
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {v + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# -- rows -------------------------------------------------------------------

_META_COLUMNS: Final = ("token_hashes, created_at, ttl, expires_at, idle_timeout, "
                        "idle_expires_at, deadline")
_SET_META: Final = ", ".join(f"{c} = ?" for c in _META_COLUMNS.split(", "))
_UPDATE_META: Final = f"UPDATE sessions SET {_SET_META} WHERE id = ?"
_INSERT_EVENT: Final = "INSERT INTO events VALUES (?, ?, ?, ?)"
_INSERT_SESSION: Final = (f"INSERT INTO sessions (id, {_META_COLUMNS}, key_id, wrapped_key, "
                          "snapshot, snapshot_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)")
# The reaper's queries. Both are answered from the deadline index alone.
DUE_SQL: Final = (f"SELECT id, {_META_COLUMNS} FROM sessions WHERE deadline <= ? "
                  "ORDER BY deadline, id LIMIT ?")
NEXT_DEADLINE_SQL: Final = "SELECT min(deadline) FROM sessions"


def _meta_params(meta: SessionMeta) -> tuple[Any, ...]:
    return (msgpack.packb(meta.tokens), meta.created_at, meta.ttl, meta.expires_at,
            meta.idle_timeout, meta.idle_expires_at, meta.deadline)


def _fixed_meta(meta: SessionMeta) -> tuple[Any, ...]:
    """A session's metadata but for its idle deadline, for comparing."""
    return (meta.tokens, meta.created_at, meta.ttl, meta.expires_at, meta.idle_timeout)


def _meta_from_row(row: Sequence[Any]) -> SessionMeta:
    sid, tokens, created_at, ttl, expires_at, idle_timeout, idle_expires_at = row[:7]
    return SessionMeta(session_id=sid, created_at=created_at, ttl=ttl, expires_at=expires_at,
                       idle_timeout=idle_timeout, idle_expires_at=idle_expires_at,
                       tokens=msgpack.unpackb(tokens))


def new_session_row(keyring: KeyRing, meta: SessionMeta,
                    snapshot: bytes) -> tuple[tuple[Any, ...], SessionCipher]:
    """The parameters of `_INSERT_SESSION` for a new session with a fresh data
    key, and its cipher. (Benchmarks use it to bulk-load sessions.)"""
    data_key = new_data_key()
    key_id, wrapped = keyring.wrap(meta.session_id, data_key)
    cipher = SessionCipher(meta.session_id, data_key)
    row = (meta.session_id, *_meta_params(meta), key_id, wrapped,
           cipher.seal("snapshot", 0, snapshot))
    return row, cipher


def _distinct_key_ids(conn: sqlite3.Connection) -> list[str]:
    # A skip-scan of the key index: one seek per distinct key, not per session.
    ids: list[str] = []
    row = conn.execute("SELECT min(key_id) FROM sessions").fetchone()
    while row[0] is not None:
        ids.append(row[0])
        row = conn.execute("SELECT min(key_id) FROM sessions WHERE key_id > ?",
                           (row[0],)).fetchone()
    return ids


def _check_keys(conn: sqlite3.Connection, keyring: KeyRing) -> None:
    """Proves at open that `keyring` holds every master key the data needs.

    Raises:
        StoreError: a key does not match, or the data needs a key the ring lacks.
    """
    hint = ("the key file (or $NEXUSD_MASTER_KEYS) is not the one this database was "
            "written with; restore the right one")
    conn.execute("BEGIN IMMEDIATE")
    try:
        checks = dict(conn.execute("SELECT key_id, check_value FROM master_keys"))
        for key_id in _distinct_key_ids(conn):
            if key_id not in keyring:
                n = conn.execute("SELECT count(*) FROM sessions WHERE key_id = ?",
                                 (key_id,)).fetchone()[0]
                raise StoreError(f"master key {key_id} does not match the database: "
                                 f"{n} sessions need it and the key ring lacks it; {hint}")
            if key_id not in checks:
                # No check value yet (a database from before schema 2): verify
                # the key on one session it wrapped.
                sid, wrapped = conn.execute("SELECT id, wrapped_key FROM sessions "
                                            "WHERE key_id = ? LIMIT 1", (key_id,)).fetchone()
                try:
                    keyring.unwrap(sid, key_id, wrapped)
                except Exception:
                    raise StoreError(f"master key {key_id} does not match the database; "
                                     f"{hint}") from None
        for key_id, value in checks.items():
            if key_id in keyring and not keyring.verify_check_value(key_id, value):
                raise StoreError(f"master key {key_id} does not match the database; {hint}")
            if key_id not in keyring:  # retired, and (see above) no session needs it
                conn.execute("DELETE FROM master_keys WHERE key_id = ?", (key_id,))
        conn.executemany("INSERT INTO master_keys VALUES (?, ?)",
                         [(k, keyring.check_value(k)) for k in keyring.ids if k not in checks])
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(target: str, durability: str, *, wal_limit: int = 64 << 20,
             uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                           timeout=_BUSY_TIMEOUT_MS / 1000, uri=uri)
    try:
        if durability == "memory":
            conn.execute("PRAGMA journal_mode = MEMORY")
            conn.execute("PRAGMA synchronous = OFF")
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"cannot put the database in WAL mode (it is in {mode})")
            level = "FULL" if durability == "power" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {level}")
            # A WAL that grew past this while readers kept it from resetting
            # is cut back to it at its next reset.
            conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit)}")
        conn.execute("PRAGMA secure_delete = ON")
    except BaseException:
        conn.close()
        raise
    return conn


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
                 clock: Callable[[], float]) -> None:
        self.keyring = keyring
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
            conn.execute(_INSERT_SESSION, row)
        except sqlite3.IntegrityError:
            raise KeyError(f"session {meta.session_id} exists") from None
        self._remember_meta(meta)
        self._remember(cipher)

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        """Journals `events` and updates the metadata row; returns once committed.

        When only the idle deadline has moved, and by less than `_IDLE_LAG`
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
                conn.execute(_INSERT_EVENT, (sid, e.seq, e.ts,
                                             cipher.seal("event", e.seq, e.payload)))
            else:
                conn.executemany(_INSERT_EVENT,
                                 [(sid, e.seq, e.ts, cipher.seal("event", e.seq, e.payload))
                                  for e in events])
        except sqlite3.IntegrityError:
            raise StoreError(f"session {sid}: an event of seq "
                             f"{[e.seq for e in events]} is already journaled") from None
        return len(events)

    def _meta_outdated(self, meta: SessionMeta) -> bool:
        stored = self._stored.get(meta.session_id)
        if stored is None or stored[0] != _fixed_meta(meta):
            return True
        idle, stored_idle = meta.idle_expires_at, stored[1]
        if idle == stored_idle:
            return False
        return idle is None or stored_idle is None or not 0 < idle - stored_idle < _IDLE_LAG

    def _update_meta(self, conn: sqlite3.Connection, meta: SessionMeta) -> None:
        cur = conn.execute(_UPDATE_META, (*_meta_params(meta), meta.session_id))
        if cur.rowcount == 0:
            raise KeyError(f"session {meta.session_id} is not in the store")
        self._remember_meta(meta)

    def _remember_meta(self, meta: SessionMeta) -> None:
        """Notes what the row holds now (the writer forgets it all on any
        failure, as the transaction may not have kept it)."""
        sid = meta.session_id
        fixed = (dict(meta.tokens), *_fixed_meta(meta)[1:])  # a copy: grants change it
        self._stored[sid] = (fixed, meta.idle_expires_at)
        self._stored.move_to_end(sid)
        if len(self._stored) > _CIPHER_CACHE:
            self._stored.popitem(last=False)

    async def save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes) -> None:
        """Stores the state as of `seq`; events up to `seq` become history, kept
        within the last `retention_events` and `retention_seconds`.

        Raises:
            KeyError: the session is not in the store.
        """
        await self._write("snapshot", functools.partial(self._save_snapshot, meta, seq, snapshot))

    def _save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes,
                       conn: sqlite3.Connection) -> None:
        sid = meta.session_id
        # Meta first: it raises KeyError for an unknown session before any crypto.
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

    async def delete(self, session_id: str) -> None:
        """Removes the session and destroys its data key: its data becomes
        unrecoverable, from this database and from any backup of it made later."""
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
        await self._write("raw", functools.partial(_check_keys, keyring=ring))
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
        row = conn.execute(f"SELECT id, {_META_COLUMNS}, key_id, wrapped_key, snapshot, "
                           "snapshot_seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        self._sessions_read += 1
        meta = _meta_from_row(row)
        key_id, wrapped, sealed, snapshot_seq = row[8:]
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
        sql = f"SELECT id, {_META_COLUMNS} FROM sessions {where}ORDER BY id LIMIT ?"
        return await self._read(functools.partial(self._metas, sql, params))

    def _metas(self, sql: str, params: tuple[Any, ...],
               conn: sqlite3.Connection) -> list[SessionMeta]:
        metas = [_meta_from_row(row) for row in conn.execute(sql, params)]
        self._sessions_read += len(metas)
        return metas

    async def count(self) -> int:
        """How many sessions the store holds."""
        def run(conn: sqlite3.Connection) -> int:
            n: int = conn.execute(
                "SELECT value FROM counters WHERE name = 'sessions'").fetchone()[0]
            return n
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
        data_dir: the data directory (created mode 0700); None only for "memory".
        durability: "process" (survives kill -9), "power" (fsync per group
            commit) or "memory" (nothing on disk).
        keyring: the master keys; by default read from $NEXUSD_MASTER_KEYS or
            the data directory's key file (created on first start). A memory
            store makes a throwaway one.
        retention_events, retention_seconds: how much history (events at or
            before the snapshot) each session keeps for resume.
        clock: wall-clock seconds, for the age window of retention.
        readers: read connections (disk stores only).
        wal_limit: WAL file size, bytes, past which the store truncates the
            WAL even if that means holding up commits briefly while readers
            finish (disk stores only).

    Raises:
        StoreError: the database cannot be opened, is newer than this nexusd,
            or does not match the master keys.
        KeyRingError: the key ring is malformed or unsafe.
    """
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, "
                         f"not {durability!r}")
    if durability != "memory" and data_dir is None:
        raise ValueError(f"durability {durability!r} needs a data directory")

    wal = None if data_dir is None else Path(data_dir) / f"{DB_FILE}-wal"

    def open_db() -> tuple[sqlite3.Connection, list[sqlite3.Connection], KeyRing,
                           Checkpointer | None]:
        if durability == "memory":
            ring = keyring or KeyRing.generate()
            target = ":memory:"
        else:
            assert data_dir is not None
            Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            target = str(Path(data_dir) / DB_FILE)
            # A missing key file is made afresh only for a new database: beside
            # an existing one it would be the wrong key, and saying so is clearer.
            ring = keyring or load_keyring(Path(data_dir), create=not Path(target).exists())
            # Created 0600 here; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(target, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            conn = _connect(target, durability, wal_limit=wal_limit)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {target}: {exc}") from None
        try:
            migrate(conn)
            _check_keys(conn, ring)
            pool = [_connect(target, durability, wal_limit=wal_limit) for _ in range(readers)
                    if durability != "memory"]
            for r in pool:
                r.execute("PRAGMA query_only = ON")
            checkpointer = None
            if durability == "process":
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
                checkpointer = Checkpointer(_connect(target, durability, wal_limit=wal_limit),
                                            Path(f"{target}-wal"), wal_limit=wal_limit)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open {target}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn, pool, ring, checkpointer

    conn, pool, ring, checkpointer = await trio.to_thread.run_sync(open_db)
    writer: Writer = (ThreadWriter(conn, wal, wal_limit=wal_limit) if durability == "power"
                       else TaskWriter(conn, checkpointer))
    return SqliteStore(writer, pool, keyring=ring, retention_events=retention_events,
                       retention_seconds=retention_seconds, clock=clock)


# -- `nexusd keys ...` --------------------------------------------------------

def _open_for_keys(data_dir: Path, *, read_only: bool) -> sqlite3.Connection | None:
    db = Path(data_dir) / DB_FILE
    if not db.exists():
        return None
    target = f"file:{db}?mode=ro" if read_only else str(db)
    conn = sqlite3.connect(target, uri=read_only, isolation_level=None,
                           timeout=_BUSY_TIMEOUT_MS / 1000)
    if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"{db} has an older schema; start nexusd once to upgrade it")
    return conn


def keys_list(data_dir: Path, *, out: TextIO = sys.stdout) -> None:
    """`nexusd keys list`: prints each master key's id, whether it is current,
    and how many sessions' data keys it wraps (never the keys themselves).

    Raises:
        KeyRingError: there is no key ring, or it is malformed.
        StoreError: the database needs upgrading first.
    """
    ring = load_keyring(Path(data_dir), create=False)
    conn = _open_for_keys(data_dir, read_only=True)
    usage: dict[str, int] | None = None
    if conn is not None:
        try:
            usage = dict(conn.execute("SELECT key_id, count(*) FROM sessions GROUP BY key_id"))
        finally:
            conn.close()
    for line in describe(ring, usage):
        print(line, file=out)


def keys_rotate(data_dir: Path, *, out: TextIO = sys.stdout) -> str:
    """`nexusd keys rotate`: adds a new master key to the key file and makes it
    current. Returns its id.

    A daemon reads the key file again on SIGHUP (which the `nexusd keys rotate`
    command sends to the daemon of this data directory) or at its next start;
    its `rewrap_keys` then moves the existing sessions to the new key.

    Raises:
        KeyRingError: there is no key file, or the keys come from $NEXUSD_MASTER_KEYS.
    """
    ring = add_master_key(Path(data_dir))
    old = ", ".join(k for k in ring.ids if k != ring.current)
    print(f"added master key {ring.current}; it is now the current key", file=out)
    if old:
        print(f"afterwards, retire the old key(s) with: nexusd keys retire {old}", file=out)
    return ring.current


def keys_retire(data_dir: Path, key_id: str, *, out: TextIO = sys.stdout) -> None:
    """`nexusd keys retire ID`: removes master key `key_id` from the key file,
    if no session's data key is still wrapped under it.

    Raises:
        KeyRingError: no such key, it is current, or sessions still need it.
    """
    ring = load_keyring(Path(data_dir), create=False)
    ring.without(key_id)  # validates before touching anything
    conn = _open_for_keys(data_dir, read_only=False)
    if conn is None:
        remove_master_key(Path(data_dir), key_id)
    else:
        try:
            # Holding the write lock, so that no session gets wrapped under the
            # key between the check and the removal: a daemon still running
            # with the key as current finds its check value gone and refuses.
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute("SELECT count(*) FROM sessions WHERE key_id = ?",
                             (key_id,)).fetchone()[0]
            if n:
                raise KeyRingError(
                    f"master key {key_id} still wraps the data keys of {n} sessions; "
                    "let nexusd re-wrap them (it does so in the background after a "
                    "restart with the new key), then retire it")
            conn.execute("DELETE FROM master_keys WHERE key_id = ?", (key_id,))
            remove_master_key(Path(data_dir), key_id)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
    print(f"retired master key {key_id}", file=out)
