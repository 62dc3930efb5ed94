"""The SQLite store's WAL upkeep: checkpoints and truncation, off trio's
thread (see `Checkpointer`), and the helpers both writers use for it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ._interface import StoreError

__all__ = ["Checkpointer", "truncate_wal", "wal_checkpoint", "wal_size"]

SHRED_DELAY: Final = 1.0  # seconds from a delete to the checkpoint that purges the WAL
_CHECKPOINT_EVERY: Final = 256  # commits between WAL checkpoints (about 1,000 pages)
_CHECKPOINT_INTERVAL: Final = 1.0  # seconds between checkpoints while anything commits
# A truncating checkpoint holds up commits while it waits for the readers
# still using the WAL: it waits this long at most, then tries again later.
TRUNCATE_WAIT: Final = 0.1  # seconds
_TRUNCATE_TIMEOUT: Final = 10.0  # seconds a requested checkpoint keeps trying


def wal_checkpoint(conn: sqlite3.Connection, mode: str, *,
                   wait: float | None = None) -> bool:
    """Runs `PRAGMA wal_checkpoint(mode)`; True if it could not finish (a
    reader or the writer was in the way, or it failed): try again later.
    `wait` bounds, in seconds, how long it waits for them (the connection's
    busy timeout otherwise)."""
    try:
        if wait is None:
            return bool(conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0])
        before = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        try:
            return bool(conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0])
        finally:
            conn.execute(f"PRAGMA busy_timeout = {before}")
    except sqlite3.Error:
        return True


def truncate_wal(attempt: Callable[[], bool]) -> None:
    """Calls `attempt` (a truncating checkpoint, True if it could not
    finish) until it finishes, letting commits through between tries.

    Raises:
        StoreError: it still could not after `_TRUNCATE_TIMEOUT` seconds.
    """
    deadline = time.monotonic() + _TRUNCATE_TIMEOUT
    while attempt():
        if time.monotonic() >= deadline:
            raise StoreError("could not checkpoint the WAL: it stayed in use "
                             f"for {_TRUNCATE_TIMEOUT:g} s")
        time.sleep(TRUNCATE_WAIT / 10)  # let the writer commit meanwhile


def wal_size(wal: Path | None) -> int:
    """The size of the WAL file `wal`, 0 if there is none."""
    if wal is None:
        return 0
    try:
        return os.stat(wal).st_size
    except FileNotFoundError:
        return 0


class Checkpointer:
    """Copies the WAL into the database file from a connection and thread of
    its own (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer):
    every `_CHECKPOINT_EVERY` commits, every second while there are any, and
    at once while the WAL file is over half of `wal_limit` bytes.

    A passive checkpoint cannot reset the WAL while readers use it, and under
    sustained load they always do; and the writer's own connection never
    truncates the WAL (``journal_size_limit = -1``): shortening a file of
    hundreds of MB takes the kernel 100-250 ms, which in trio's thread would
    stall the event loop. So the commit that leaves the WAL file over
    `wal_limit` makes the truncation `due`: this thread then truncates it
    (``TRUNCATE``) holding `truncating`, which the writer takes around each
    commit, and the writer commits in a worker thread that waits until the
    truncation is over (`wait_truncated`), never in trio's. So no commit
    takes SQLite's write lock from the truncation (a writer committing back
    to back would, and the WAL would grow meanwhile), and the WAL stays
    near its limit however fast the writes come. It waits for the readers
    still in the WAL `TRUNCATE_WAIT` at most; if they were still there, it
    lets commits through for as long before trying again. After a delete it
    truncates too, `SHRED_DELAY` later, so that a deleted session's pages
    leave the WAL (crypto-shredding).
    """

    def __init__(self, conn: sqlite3.Connection, wal: Path | None = None, *,
                 wal_limit: int = 64 << 20) -> None:
        self._conn = conn
        self._wal = wal
        self._wal_limit = wal_limit
        # Held while a TRUNCATE checkpoint holds SQLite's write lock: the
        # `TaskWriter` takes it around each commit, so that it waits for the
        # truncation in a worker thread, never in trio's.
        self.truncating = threading.Lock()
        # One checkpoint at a time on the connection (this thread's, or one
        # asked for by `truncate`): SQLite would refuse the second (busy).
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._commits = 0
        self._shred_at: float | None = None
        self._filling = False  # a commit found the WAL over half the limit
        self._due = False  # a commit found it over the limit: commits wait for its truncation
        self._retry_at = 0.0  # when to truncate again, after readers were in the way
        self._stopped = False
        self.checkpoints = self.truncations = 0
        self._thread = threading.Thread(target=self._main, name="nexusd-store-checkpointer",
                                        daemon=True)
        self._thread.start()

    def committed(self, *, deleted: bool) -> None:
        """Called by the writer after each commit (in trio's thread: it only
        counts, reads the WAL's size and may wake this thread)."""
        # Counted without the lock: a count lost or doubled by a race with the
        # thread's reset only moves one checkpoint a little.
        self._commits += 1
        # The WAL grows by up to a hundred megabytes a second under load: its
        # size is checked at every commit (a stat, about 2 µs).
        size = self.wal_bytes()
        due = (not self._due and size > self._wal_limit
               and time.monotonic() >= self._retry_at)
        filling = not self._filling and size > self._wal_limit // 2
        if (due or filling or self._commits >= _CHECKPOINT_EVERY
                or (deleted and self._shred_at is None)):
            with self._cond:
                if due and not self._stopped:
                    self._due = True
                if filling:
                    self._filling = True
                if deleted and self._shred_at is None:
                    self._shred_at = time.monotonic() + SHRED_DELAY
                self._cond.notify_all()

    @property
    def due(self) -> bool:
        """The WAL is over its limit and this thread is about to truncate it:
        commit in a worker thread, after `wait_truncated`."""
        return self._due

    def wait_truncated(self) -> None:
        """Blocks while a truncation is `due` (call it from a worker thread)."""
        with self._cond:
            while self._due:
                self._cond.wait()

    def wal_bytes(self) -> int:
        """The WAL file's size now."""
        return wal_size(self._wal)

    def truncate(self) -> None:
        """Copies the whole WAL into the database file and truncates it, now
        (blocking: call it from a worker thread).

        Raises:
            StoreError: readers kept the WAL in use (see `truncate_wal`), or
                the checkpointer has stopped.
        """
        with self._lock:
            if self._stopped:
                raise StoreError("the store is closed")
            truncate_wal(self._truncate)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._due = False
            self._cond.notify_all()
        self._thread.join()

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    timeout = _CHECKPOINT_INTERVAL
                    if self._shred_at is not None:
                        timeout = min(timeout, max(0.0, self._shred_at - time.monotonic()))
                    if self._retry_at:
                        timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
                    if (not self._stopped and not self._filling and not self._due
                            and self._commits < _CHECKPOINT_EVERY):
                        self._cond.wait(timeout)
                    if self._stopped:
                        return
                    commits, self._commits = self._commits, 0
                    self._filling = False
                    due = self._due
                    now = time.monotonic()
                    shred = self._shred_at is not None and now >= self._shred_at
                # Over the limit with no commit to notice it (the writer is
                # quiet): truncate all the same.
                over = due or (now >= self._retry_at and self.wal_bytes() > self._wal_limit)
                with self._lock:
                    if (commits or shred) and not due:
                        # Most of the copying, holding nobody up (when due,
                        # commits wait anyway: the truncation copies it all).
                        self._checkpoint("PASSIVE")
                    busy = (shred or over) and self._truncate()
                if over:
                    # Readers were in the way: let commits through for as
                    # long as they held them up before trying again.
                    self._retry_at = 2 * time.monotonic() - now if busy else 0.0
                with self._cond:
                    if shred:
                        self._shred_at = time.monotonic() + SHRED_DELAY if busy else None
                    if due:
                        self._due = False
                        self._cond.notify_all()
        finally:
            with self._lock:
                self._conn.close()

    def _checkpoint(self, mode: str, wait: float | None = None) -> bool:
        """Runs one checkpoint; True if it could not finish."""
        unfinished = wal_checkpoint(self._conn, mode, wait=wait)
        self.checkpoints += 1
        return unfinished

    def _truncate(self) -> bool:
        """Checkpoints and truncates the WAL, holding `truncating`, waiting
        `TRUNCATE_WAIT` at most for readers; True if it could not finish."""
        with self.truncating:
            busy = self._checkpoint("TRUNCATE", wait=TRUNCATE_WAIT)
        if not busy:
            self.truncations += 1
        return busy
