"""The SQLite store's writers: group commit, in trio's thread or in a thread
of its own (see `nexusd._sqlite_store` for what each durability needs).

Every write request of every session actor goes through one writer, which
takes all that is queued, runs it in a single transaction (a savepoint per
request, so that one request's error undoes only that request) and commits
once; a caller returns only after the commit that holds its request.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from ._store import StoreError

__all__ = ["Checkpointer", "TaskWriter", "ThreadWriter", "Writer"]

T = TypeVar("T")

_MAX_BATCH: Final = 1024  # requests per transaction: bounds a commit's latency
_SHRED_DELAY: Final = 1.0  # seconds from a delete to the checkpoint that purges the WAL
_GROUPING_WINDOW: Final = 0.001  # seconds: writes this close wait one turn to commit together
_CHECKPOINT_EVERY: Final = 256  # commits between WAL checkpoints (about 1,000 pages)
_CHECKPOINT_INTERVAL: Final = 1.0  # seconds between checkpoints while anything commits
# A truncating checkpoint holds up commits while it waits for the readers
# still using the WAL: it waits this long at most, then tries again later.
_TRUNCATE_WAIT: Final = 0.1  # seconds
_TRUNCATE_TIMEOUT: Final = 10.0  # seconds a requested checkpoint keeps trying


@attrs.define(eq=False)
class _Request:
    kind: str  # "create", "append", ..., "read"; "raw" runs outside the transaction
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = attrs.Factory(trio.Event)
    value: Any = None
    error: BaseException | None = None
    finished: bool = False  # value or error is final
    abandoned: bool = False  # its caller was cancelled before the writer took it
    leads: bool = False  # `done` set to hand its caller the lead (TaskWriter)

    def result(self) -> Any:
        if self.error is not None:
            try:
                raise self.error
            finally:
                self.error = None  # no reference cycle through the traceback
        return self.value


class Writer:
    """Runs write requests in group commits: every request queued when the
    writer comes round goes into one transaction, each in its own savepoint
    (one request's error undoes only that request), then one commit.

    Two drivers share this: `TaskWriter` commits in trio's own thread, for
    durabilities whose commit does not wait for the disk; `ThreadWriter`
    commits in a thread of its own, for "power", whose commit fsyncs.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._broken: BaseException | None = None
        # Called when a request or a commit fails: what the store believes
        # the database holds may then be wrong.
        self.on_failure: Callable[[], None] = lambda: None
        self.commits = self.writes = self.appends = self.events = self.largest_batch = 0

    @property
    def queued(self) -> int:
        raise NotImplementedError

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints the store ran (not SQLite's automatic ones)."""
        return 0

    @property
    def truncations(self) -> int:
        """Checkpoints that emptied the WAL file."""
        return 0

    def wal_bytes(self) -> int:
        """The WAL file's size now (0 for a database without one)."""
        return 0

    async def checkpoint(self) -> None:
        """Copies the whole WAL into the database file and truncates it.

        Raises:
            StoreError: readers kept the WAL in use for `_TRUNCATE_TIMEOUT`
                seconds, or the checkpoint failed.
        """

    async def submit(self, kind: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `fn(conn)` in the writer's next transaction and returns its value
        once that transaction has committed.

        Cancelling the call withdraws the request if the writer has not taken
        it yet; once taken, it commits (or fails) whether anyone waits or not,
        like any database call that timed out.
        """
        raise NotImplementedError

    async def stop(self) -> None:
        """Finishes what is queued, then closes the connection."""
        raise NotImplementedError

    def _serve(self, batch: list[_Request]) -> None:
        """Commits `batch` and wakes its callers, whatever happens."""
        try:
            live = [r for r in batch if not r.abandoned]
            self._transaction([r for r in live if r.kind != "raw"])
            for r in live:
                if r.kind == "raw":
                    self._run_alone(r)
        finally:
            for r in batch:
                if not r.finished:  # the writer itself failed: never report success
                    r.value, r.error = None, trio.BrokenResourceError(
                        "the store's writer failed")
                    r.finished = True
            self._wake(batch)

    def _wake_failed(self, batch: list[_Request]) -> None:
        """Fails `batch` untried: the writer itself has failed."""
        for r in batch:
            r.value, r.error = None, trio.BrokenResourceError("the store's writer failed")
            r.finished = True
        self._wake(batch)

    def _wake(self, batch: list[_Request]) -> None:
        raise NotImplementedError

    def _committed(self, requests: list[_Request]) -> None:
        """Called after each commit with the requests it made durable."""

    def _transaction(self, batch: list[_Request]) -> None:
        if not batch:
            return
        conn = self._conn
        ok: list[_Request] = []  # requests whose changes the open transaction holds
        # A request alone needs no savepoint: its error undoes the transaction.
        alone = len(batch) == 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            for r in batch:
                if not alone:
                    conn.execute("SAVEPOINT request")
                try:
                    r.value = r.fn(conn)
                except Exception as exc:
                    r.error = exc
                    self.on_failure()
                    if alone:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        return
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO request")
                        conn.execute("RELEASE request")
                    else:  # SQLite rolled everything back (e.g. disk full)
                        self._fail(ok, exc)
                        ok = []
                        conn.execute("BEGIN IMMEDIATE")
                else:
                    if not alone:
                        conn.execute("RELEASE request")
                    ok.append(r)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.on_failure()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._fail([r for r in batch if r.error is None], exc)
            return
        finally:
            for r in batch:
                r.finished = True
        self.commits += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        for r in ok:
            if r.kind != "read":
                self.writes += 1
            if r.kind == "append":
                self.appends += 1
                self.events += r.value
                r.value = None
        self._committed(ok)

    def _run_alone(self, r: _Request) -> None:
        try:
            r.value = r.fn(self._conn)
        except Exception as exc:
            r.error = exc
        r.finished = True

    @staticmethod
    def _fail(requests: list[_Request], exc: BaseException) -> None:
        for r in requests:
            r.value = None
            r.error = StoreError(f"the store could not commit: {exc}")


class TaskWriter(Writer):
    """Commits in trio's thread, with no hand-off to wait for.

    The first caller to find the writer idle leads: while writes come thick
    (the last commit held several, or ended under `_GROUPING_WINDOW` ago) it
    yields once, so that every other task about to run (other session
    actors) can queue its request too, then commits all of them, wakes their
    callers and hands the lead to the first caller that queued meanwhile; a
    write that comes alone commits at once. At
    durability "process" a commit is a write into the WAL file, with no
    fsync, and the WAL is checkpointed by a `Checkpointer` in another thread,
    so that no commit waits on the database file.
    """

    def __init__(self, conn: sqlite3.Connection, checkpointer: Checkpointer | None) -> None:
        super().__init__(conn)
        self._checkpointer = checkpointer
        self._queue: list[_Request] = []
        self._leading = False
        self._stopping = False
        self._busy = False  # the last commit held more than one request
        self._last_commit = -math.inf
        self._idle = trio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def checkpoints(self) -> int:
        return 0 if self._checkpointer is None else self._checkpointer.checkpoints

    @property
    def truncations(self) -> int:
        return 0 if self._checkpointer is None else self._checkpointer.truncations

    def wal_bytes(self) -> int:
        return 0 if self._checkpointer is None else self._checkpointer.wal_bytes()

    async def checkpoint(self) -> None:
        if self._checkpointer is not None:  # else the database is in memory
            await trio.to_thread.run_sync(self._checkpointer.truncate)

    async def submit(self, kind: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._broken is not None:
            raise trio.BrokenResourceError("the store's writer failed") from self._broken
        if self._stopping:
            raise trio.ClosedResourceError("the store is closed")
        req = _Request(kind, fn)
        self._queue.append(req)
        if not self._leading:
            self._leading = True
            self._idle = trio.Event()
            await self._lead(req)  # cannot be cancelled: a taken request commits
            return req.result()  # type: ignore[no-any-return]
        try:
            await req.done.wait()
        except BaseException:
            # Cancelled. `done` may have been set all the same, handing this
            # caller the lead, between the cancel and this task running: then
            # nobody else will commit, so withdraw the request and pass the
            # lead on now, without waiting.
            if not req.done.is_set() or req.leads:
                req.abandoned = True
            if req.leads:
                self._hand_over()
            raise
        if req.leads:
            await self._lead(req)
        return req.result()  # type: ignore[no-any-return]

    async def _lead(self, mine: _Request) -> None:
        """Commits what is queued (`mine` first), then hands the lead to the
        next caller still waiting, if any: a leader serves one batch, so
        that its own caller is never held up by a stream of others.

        Its only await is shielded, so a leader always finishes its batch
        and its hand-over, whatever happens to its caller.
        """
        try:
            if self._busy or trio.current_time() - self._last_commit < _GROUPING_WINDOW:
                # Writes are coming thick: let the tasks about to run add
                # theirs to this commit. Shielded: a leader's request, once
                # queued, commits.
                await trio.lowlevel.cancel_shielded_checkpoint()
            batch = self._queue[:_MAX_BATCH]
            del self._queue[:_MAX_BATCH]
            assert batch[0] is mine
            self._busy = len(batch) > 1
            self._serve(batch)
            self._last_commit = trio.current_time()
        except BaseException as exc:  # a bug: fail every caller, now and later
            self._broken = exc
            batch, self._queue = self._queue, []
            self._wake_failed(batch)
            self._leading = False
            self._idle.set()
            raise
        self._hand_over()

    def _hand_over(self) -> None:
        """Passes the lead to the first caller still waiting, or ends it."""
        while self._queue and self._queue[0].abandoned:
            self._queue.pop(0).finished = True  # its caller is gone
        if self._queue:
            # It leads once it runs, or, if it turns out to be cancelled,
            # passes the lead on in turn (see `submit`).
            self._queue[0].leads = True
            self._queue[0].done.set()
        else:
            self._leading = False
            self._idle.set()

    def _wake(self, batch: list[_Request]) -> None:
        for r in batch:
            r.done.set()

    def _committed(self, requests: list[_Request]) -> None:
        if self._checkpointer is not None:
            deleted = any(r.kind == "delete" for r in requests)
            if self._checkpointer.committed(deleted=deleted):
                self._checkpointer.truncate_from(self._conn)

    async def stop(self) -> None:
        self._stopping = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self._checkpointer is not None:
                await trio.to_thread.run_sync(self._checkpointer.stop)
            # Closing the last connection checkpoints the WAL into the database.
            await trio.to_thread.run_sync(self._conn.close)


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


def truncate_wal(conn: sqlite3.Connection) -> None:
    """Copies the whole WAL into the database file and truncates it to
    nothing, trying again while readers keep it in use.

    Raises:
        StoreError: they still did after `_TRUNCATE_TIMEOUT` seconds, or
            the checkpoint failed.
    """
    deadline = time.monotonic() + _TRUNCATE_TIMEOUT
    while wal_checkpoint(conn, "TRUNCATE", wait=_TRUNCATE_WAIT):
        if time.monotonic() >= deadline:
            raise StoreError("could not checkpoint the WAL: it stayed in use "
                             f"for {_TRUNCATE_TIMEOUT:g} s")
        time.sleep(_TRUNCATE_WAIT / 10)  # let the writer commit meanwhile


def wal_size(wal: Path) -> int:
    """The size of the WAL file `wal`, 0 if there is none."""
    try:
        return os.stat(wal).st_size
    except FileNotFoundError:
        return 0


class Checkpointer:
    """Copies the WAL into the database file from a connection and thread of
    its own (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer):
    every `_CHECKPOINT_EVERY` commits, and every second while there are any.

    A passive checkpoint cannot reset the WAL while readers use it, and under
    sustained load they always do. So once a commit leaves the WAL file over
    half of `wal_limit` bytes this thread checkpoints at once, and once over
    `wal_limit` the writer itself, which holds the write lock between its
    transactions anyway, copies what is left and truncates the WAL, waiting
    for the readers still in it `_TRUNCATE_WAIT` at most (and if they were
    still there, trying again as long after). (From this thread, that would
    have to win the write lock from a writer that commits back to back, and
    the thread can lag.) When the writer has gone quiet, this thread
    truncates the WAL itself. After a delete it truncates too,
    `_SHRED_DELAY` later, so that a deleted session's pages leave it
    (crypto-shredding).
    """

    def __init__(self, conn: sqlite3.Connection, wal: Path, *, wal_limit: int) -> None:
        self._conn = conn
        self._wal = wal
        self._wal_limit = wal_limit
        self._cond = threading.Condition()
        # One checkpoint at a time on the connection: SQLite refuses a second
        # one at once (busy), which would leave a requested truncation undone.
        self._lock = threading.Lock()
        self._commits = 0
        self._shred_at: float | None = None
        self._filling = False  # a commit found the WAL over half the limit
        self._retry_at = 0.0  # when to truncate again, after readers were in the way
        self._stopped = False
        self.checkpoints = self.truncations = 0
        self._thread = threading.Thread(target=self._main, name="nexusd-store-checkpointer",
                                        daemon=True)
        self._thread.start()

    def committed(self, *, deleted: bool) -> bool:
        """Called by the writer after each commit; True when the writer should
        now truncate the WAL with `truncate_from`."""
        # Counted without the lock: a count lost or doubled by a race with the
        # thread's reset only moves one checkpoint a little.
        self._commits += 1
        # The WAL grows by up to a hundred megabytes a second under load: its
        # size is checked at every commit (a stat, about 2 µs).
        size = self.wal_bytes()
        if size > self._wal_limit and time.monotonic() >= self._retry_at:
            return True
        filling = size > self._wal_limit // 2 and not self._filling
        if (filling or self._commits >= _CHECKPOINT_EVERY
                or (deleted and self._shred_at is None)):
            with self._cond:
                if filling:
                    self._filling = True
                if deleted and self._shred_at is None:
                    self._shred_at = time.monotonic() + _SHRED_DELAY
                self._cond.notify()
        return False

    def truncate_from(self, conn: sqlite3.Connection) -> None:
        """Truncates the WAL from the writer's connection `conn`, between
        transactions: holds up the writer about twice `_TRUNCATE_WAIT` at
        most (a checkpoint of this thread's to finish, then readers)."""
        # A checkpoint of this thread's (SQLite runs one at a time) can take
        # a while under load (fsyncs): the writer waits for it, up to a
        # point, rather than let the WAL grow meanwhile.
        if not self._lock.acquire(timeout=_TRUNCATE_WAIT):
            return  # at a later commit, then
        try:
            self._truncated(conn)
        finally:
            self._lock.release()

    def _truncated(self, conn: sqlite3.Connection) -> bool:
        """Truncates the WAL from `conn`; True if it could not."""
        start = time.monotonic()
        busy = self._checkpoint("TRUNCATE", conn)
        # Busy: readers or another checkpoint were in the way; give the
        # writer as long as they held it up before trying again.
        self._retry_at = 2 * time.monotonic() - start if busy else 0.0
        return busy

    def wal_bytes(self) -> int:
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
            self.checkpoints += 1
            truncate_wal(self._conn)
            self.truncations += 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    timeout = _CHECKPOINT_INTERVAL
                    if self._shred_at is not None:
                        timeout = min(timeout, max(0.0, self._shred_at - time.monotonic()))
                    if (not self._stopped and not self._filling
                            and self._commits < _CHECKPOINT_EVERY):
                        self._cond.wait(timeout)
                    if self._stopped:
                        return
                    commits, self._commits = self._commits, 0
                    self._filling = False
                    shred = self._shred_at is not None and time.monotonic() >= self._shred_at
                # Over the limit with no commit since the last round: the
                # writer is quiet, and this thread truncates.
                quiet = not commits and self.wal_bytes() > self._wal_limit
                with self._lock:
                    if commits or shred or quiet:
                        self._checkpoint("PASSIVE")  # most of the copying, holding nobody up
                    if quiet:
                        busy = self._truncated(self._conn)
                    else:
                        busy = shred and self._checkpoint("TRUNCATE")
                if shred:
                    with self._cond:
                        self._shred_at = time.monotonic() + _SHRED_DELAY if busy else None
        finally:
            with self._lock:
                self._conn.close()

    def _checkpoint(self, mode: str, conn: sqlite3.Connection | None = None) -> bool:
        """Runs one checkpoint, from `conn` or this thread's connection; True
        if it could not finish."""
        wait = _TRUNCATE_WAIT if mode != "PASSIVE" else None
        unfinished = wal_checkpoint(conn or self._conn, mode, wait=wait)
        self.checkpoints += 1
        if mode == "TRUNCATE" and not unfinished:
            self.truncations += 1
        return unfinished


_STOP: Final = object()


class ThreadWriter(Writer):
    """Commits in a thread of its own: at durability "power" every commit
    fsyncs, and trio's thread must not wait for the disk. Takes everything
    queued, commits, then wakes the callers in one trip to trio.

    SQLite checkpoints the WAL by itself after commits (passively); once the
    WAL file `wal` is over `wal_limit` bytes anyway, this writer truncates it
    as the `Checkpointer` does.
    """

    def __init__(self, conn: sqlite3.Connection, wal: Path | None = None, *,
                 wal_limit: int = 64 << 20) -> None:
        super().__init__(conn)
        self._wal = wal
        self._wal_limit = wal_limit
        self._checkpoints = self._truncations = 0
        self._retry_at = 0.0  # when to truncate the WAL again, after readers were in the way
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._stopped = trio.Event()
        self._shred_at: float | None = None
        self._thread = threading.Thread(target=self._main, name="nexusd-store-writer",
                                        daemon=True)
        # A daemon thread: a store someone forgot to close must not hang the
        # interpreter's exit, and nothing is lost — every acknowledged write
        # has been committed already.
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def checkpoints(self) -> int:
        return self._checkpoints

    @property
    def truncations(self) -> int:
        return self._truncations

    def wal_bytes(self) -> int:
        return 0 if self._wal is None else wal_size(self._wal)

    async def checkpoint(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            self._checkpoints += 1
            truncate_wal(conn)
            self._truncations += 1
        await self.submit("raw", run)

    async def submit(self, kind: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._broken is not None:
            raise trio.BrokenResourceError("the store's writer failed") from self._broken
        req = _Request(kind, fn)
        self._queue.put(req)
        try:
            await req.done.wait()
        finally:
            if not req.done.is_set():
                req.abandoned = True
        return req.result()  # type: ignore[no-any-return]

    async def stop(self) -> None:
        self._queue.put(_STOP)
        await self._stopped.wait()

    # ---- in the writer thread ----

    def _main(self) -> None:
        try:
            while self._take():
                pass
        except BaseException as exc:  # a bug or a broken disk: fail every caller
            self._broken = exc
            while (item := self._queue.get()) is not _STOP:
                self._wake_failed([item])
        finally:
            try:
                self._conn.close()
            finally:
                self._call_trio(self._stopped.set)

    def _take(self) -> bool:
        """Serves one batch; False once told to stop."""
        timeout = None
        if self._shred_at is not None:
            timeout = max(0.0, self._shred_at - time.monotonic())
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            self._checkpoint_for_shredding()
            return True
        batch, stop = [], first is _STOP
        if not stop:
            batch.append(first)
        while not stop and len(batch) < _MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
            else:
                batch.append(item)
        self._serve(batch)
        if self._shred_at is not None and time.monotonic() >= self._shred_at:
            self._checkpoint_for_shredding()
        elif (self._wal is not None and time.monotonic() >= self._retry_at
              and wal_size(self._wal) > self._wal_limit):
            start = time.monotonic()
            if self._checkpoint("TRUNCATE", wait=_TRUNCATE_WAIT):
                # Readers were in the way: commit as long before trying again.
                self._retry_at = 2 * time.monotonic() - start
        return not stop

    def _committed(self, requests: list[_Request]) -> None:
        if self._shred_at is None and any(r.kind == "delete" for r in requests):
            self._shred_at = time.monotonic() + _SHRED_DELAY

    def _checkpoint_for_shredding(self) -> None:
        # Deleted sessions' pages (their wrapped keys) linger in the WAL until
        # it is checkpointed and truncated. Readers are short, so this rarely
        # waits; if one blocks it, try again shortly.
        unfinished = self._checkpoint("TRUNCATE")
        self._shred_at = time.monotonic() + _SHRED_DELAY if unfinished else None

    def _checkpoint(self, mode: str, *, wait: float | None = None) -> bool:
        """Runs one checkpoint; True if it could not finish."""
        unfinished = wal_checkpoint(self._conn, mode, wait=wait)
        self._checkpoints += 1
        if mode == "TRUNCATE" and not unfinished:
            self._truncations += 1
        return unfinished

    def _wake(self, batch: list[_Request]) -> None:
        def wake() -> None:
            for r in batch:
                r.done.set()
        self._call_trio(wake)

    def _call_trio(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to wake
            self._token.run_sync_soon(fn)
