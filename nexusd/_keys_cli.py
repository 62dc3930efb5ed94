"""`nexusd keys list|rotate|retire`: the master key ring of a data directory.

These work on the files, not through a running daemon: the key file (see
`nexusd.store._crypto`) and, read or locked directly, the SQLite database
beside it. `nexusd keys rotate` then tells the daemon serving the directory,
which re-wraps every session's data key under the new key.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import TextIO

from .store import KeyRingError, StoreError
from .store._crypto import add_master_key, describe, load_keyring, remove_master_key
from .store._schema import BUSY_TIMEOUT_MS, DB_FILE, SCHEMA_VERSION

__all__ = ["keys_list", "keys_retire", "keys_rotate"]


def _open_for_keys(data_dir: Path, *, read_only: bool) -> sqlite3.Connection | None:
    db = Path(data_dir) / DB_FILE
    if not db.exists():
        return None
    target = f"file:{db}?mode=ro" if read_only else str(db)
    conn = sqlite3.connect(target, uri=read_only, isolation_level=None,
                           timeout=BUSY_TIMEOUT_MS / 1000)
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
