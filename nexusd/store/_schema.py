"""The SQLite store's file: how a connection to it is opened, its tables and
their migrations, the SQL and row conversions the store shares with tools that
read the file, and the check that a key ring matches the data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from ._crypto import KeyRing, SessionCipher, new_data_key
from ._interface import SessionMeta, StoreError

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_MS",
    "DB_FILE",
    "DUE_SQL",
    "INSERT_EVENT",
    "INSERT_SESSION",
    "META_COLUMNS",
    "MIGRATIONS",
    "NEXT_DEADLINE_SQL",
    "SCHEMA_VERSION",
    "UPDATE_META",
    "check_keys",
    "connect_db",
    "fixed_meta",
    "meta_from_row",
    "meta_params",
    "migrate",
    "new_session_row",
]

DB_FILE: Final = "nexusd.db"
APPLICATION_ID: Final = 0x6E657864  # "nexd": marks the file as ours
BUSY_TIMEOUT_MS: Final = 10_000


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


def _schema_3(conn: sqlite3.Connection) -> None:
    # How far the stored idle deadline may lag the session's activity (see
    # `SessionMeta.idle_lag`); rows written before it say 0, as they did.
    conn.execute("ALTER TABLE sessions ADD COLUMN idle_lag REAL NOT NULL DEFAULT 0")


def _schema_4(conn: sqlite3.Connection) -> None:
    # Daemon-wide aggregates stored whole (the analytics document): counts
    # keyed by labels, no session data, so kept outside the sealed rows.
    conn.execute("CREATE TABLE aggregates (name TEXT PRIMARY KEY, doc BLOB NOT NULL)")


#: Migration i brings a database from user_version i to i + 1. Append only.
MIGRATIONS: Final[Sequence[Callable[[sqlite3.Connection], None]]] = (
    _schema_1, _schema_2, _schema_3, _schema_4)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> None:
    """Brings the database at `conn` (in autocommit mode) up to version `target`,
    one transaction per migration.

    Raises:
        StoreError: the file is not a nexusd database, or a newer nexusd wrote it.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id not in (0, APPLICATION_ID):
        raise StoreError("the database file is not a nexusd store")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the database has schema version {version}, newer than this "
                         f"nexusd supports ({SCHEMA_VERSION}); upgrade nexusd")
    for v in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[v](conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {v + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# -- rows -------------------------------------------------------------------

META_COLUMNS: Final = ("token_hashes, created_at, ttl, expires_at, idle_timeout, "
                        "idle_expires_at, deadline, idle_lag")
_SET_META: Final = ", ".join(f"{c} = ?" for c in META_COLUMNS.split(", "))
UPDATE_META: Final = f"UPDATE sessions SET {_SET_META} WHERE id = ?"
INSERT_EVENT: Final = "INSERT INTO events VALUES (?, ?, ?, ?)"
INSERT_SESSION: Final = (f"INSERT INTO sessions (id, {META_COLUMNS}, key_id, wrapped_key, "
                          "snapshot, snapshot_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)")
# The reaper's queries. Both are answered from the deadline index alone.
DUE_SQL: Final = (f"SELECT id, {META_COLUMNS} FROM sessions WHERE deadline <= ? "
                  "ORDER BY deadline, id LIMIT ?")
NEXT_DEADLINE_SQL: Final = "SELECT min(deadline) FROM sessions"


def meta_params(meta: SessionMeta) -> tuple[Any, ...]:
    return (msgpack.packb(meta.tokens), meta.created_at, meta.ttl, meta.expires_at,
            meta.idle_timeout, meta.idle_expires_at, meta.deadline, meta.idle_lag)


def fixed_meta(meta: SessionMeta) -> tuple[Any, ...]:
    """A session's metadata but for its idle deadline, for comparing."""
    return (meta.tokens, meta.created_at, meta.ttl, meta.expires_at, meta.idle_timeout,
            meta.idle_lag)


def meta_from_row(row: Sequence[Any]) -> SessionMeta:
    sid, tokens, created_at, ttl, expires_at, idle_timeout, idle_expires_at = row[:7]
    return SessionMeta(session_id=sid, created_at=created_at, ttl=ttl, expires_at=expires_at,
                       idle_timeout=idle_timeout, idle_expires_at=idle_expires_at,
                       tokens=msgpack.unpackb(tokens), idle_lag=row[8])


def new_session_row(keyring: KeyRing, meta: SessionMeta,
                    snapshot: bytes) -> tuple[tuple[Any, ...], SessionCipher]:
    """The parameters of `INSERT_SESSION` for a new session with a fresh data
    key, and its cipher: how `SqliteStore.create` inserts a session, and how
    benchmarks and tests bulk-load one straight into the file."""
    data_key = new_data_key()
    key_id, wrapped = keyring.wrap(meta.session_id, data_key)
    cipher = SessionCipher(meta.session_id, data_key)
    row = (meta.session_id, *meta_params(meta), key_id, wrapped,
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


def check_keys(conn: sqlite3.Connection, keyring: KeyRing) -> None:
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


def connect_db(target: str, durability: str, *, wal_limit: int = 64 << 20,
               uri: bool = False) -> sqlite3.Connection:
    """A connection to the database at `target` with the pragmas every
    connection of the store needs for `durability` ("none": in memory)."""
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000, uri=uri)
    try:
        if durability == "none":
            conn.execute("PRAGMA journal_mode = MEMORY")
            conn.execute("PRAGMA synchronous = OFF")
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"cannot put the database in WAL mode (it is in {mode})")
            level = "FULL" if durability == "power" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {level}")
            # A WAL that grew past this while readers kept it from resetting
            # is cut back to it at its next reset (never by a connection that
            # commits in trio's thread: see `open_sqlite_store`).
            conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit)}")
        conn.execute("PRAGMA secure_delete = ON")
    except BaseException:
        conn.close()
        raise
    return conn
