"""The SQLite store's writers: group commit, in trio's thread or in a thread
of its own (see `nexusd.store._sqlite` for what each durability needs).

Every write request of every session actor goes through one writer, which
takes all that is queued, runs it in a single transaction (a savepoint per
request, so that one request's error undoes only that request) and commits
once; a caller returns only after the commit that holds its request.
"""

from __future__ import annotations

import contextlib
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from . import _checkpoint
from ._checkpoint import (
    TRUNCATE_WAIT,
    Checkpointer,
    truncate_wal,
    wal_checkpoint,
    wal_size,
)
from ._interface import StoreError

__all__ = ["TaskWriter", "ThreadWriter", "Writer"]

T = TypeVar("T")

# Requests per transaction: bounds a commit's latency and the wake-ups of
# its callers that one turn of the event loop does.
_MAX_BATCH: Final = 256
# Requests a `TaskWriter` commits in trio's own thread; a larger batch (a
# storm: thousands of sessions hibernating or stopping together) commits in
# a worker thread, so that the loop goes on meanwhile. 256 snapshots take
# 10-35 ms of the commit's thread; 16 take about 1-2 ms, and a lone write
# (the common case, where latency matters) never waits for a thread.
_INLINE_BATCH: Final = 16
_GROUPING_WINDOW: Final = 0.001  # seconds: writes this close wait one turn to commit together


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
            StoreError: readers kept the WAL in use for 10 s, or the
                checkpoint failed.
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
            self._commit(batch)
        finally:
            self._wake(batch)

    def _commit(self, batch: list[_Request]) -> None:
        """Commits `batch`: afterwards every request in it is finished (with
        its value or error), whatever happens. Wakes nobody."""
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

    A batch of more than `_INLINE_BATCH` requests commits in a worker thread
    instead (the leader waits for it, and the callers queued meanwhile form
    the next batch), and so does any batch while the checkpointer truncates
    the WAL or is about to (the WAL went over its limit): the event loop
    never holds still for a storm's commits, nor waits on SQLite's write
    lock or on the truncation.
    """

    def __init__(self, conn: sqlite3.Connection, checkpointer: Checkpointer | None) -> None:
        super().__init__(conn)
        self._checkpointer = checkpointer
        # Held by each commit, and by the checkpointer while it truncates the
        # WAL (which takes SQLite's write lock): a commit that cannot have it
        # at once waits for it in a worker thread, not in trio's.
        self._truncating = (checkpointer.truncating if checkpointer is not None
                            else threading.Lock())
        self.threaded_commits = 0  # batches committed in a worker thread
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

        Its only awaits are shielded, so a leader always finishes its batch
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
            try:
                due = self._checkpointer is not None and self._checkpointer.due
                if (len(batch) <= _INLINE_BATCH and not due
                        and self._truncating.acquire(blocking=False)):
                    try:
                        self._commit(batch)
                    finally:
                        self._truncating.release()
                else:
                    self.threaded_commits += 1
                    with trio.CancelScope(shield=True):  # taken requests commit
                        await trio.to_thread.run_sync(self._commit_locked, batch)
            finally:
                self._wake(batch)
            self._last_commit = trio.current_time()
        except BaseException as exc:  # a bug: fail every caller, now and later
            self._broken = exc
            batch, self._queue = self._queue, []
            self._wake_failed(batch)
            self._leading = False
            self._idle.set()
            raise
        self._hand_over()

    def _commit_locked(self, batch: list[_Request]) -> None:
        """`_commit`, in a worker thread, once the checkpointer lets it (a
        truncation of the WAL due or under way is over)."""
        if self._checkpointer is not None:
            self._checkpointer.wait_truncated()
        with self._truncating:
            self._commit(batch)

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
            self._checkpointer.committed(deleted=any(r.kind == "delete" for r in requests))

    async def stop(self) -> None:
        self._stopping = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self._checkpointer is not None:
                await trio.to_thread.run_sync(self._checkpointer.stop)
            # Closing the last connection checkpoints the WAL into the database.
            await trio.to_thread.run_sync(self._conn.close)


_STOP: Final = object()


class ThreadWriter(Writer):
    """Commits in a thread of its own: at durability "power" every commit
    fsyncs, and trio's thread must not wait for the disk. Takes everything
    queued, commits, then wakes the callers in one trip to trio.

    SQLite checkpoints the WAL by itself after commits (passively), in this
    thread; once the WAL file `wal` is over `wal_limit` bytes anyway, this
    writer truncates it between batches, waiting for readers still in it
    `TRUNCATE_WAIT` at most (and if they were, committing as long before
    trying again).
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
        return wal_size(self._wal)

    async def checkpoint(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            truncate_wal(lambda: self._checkpoint("TRUNCATE", wait=TRUNCATE_WAIT))
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
        elif time.monotonic() >= self._retry_at and self.wal_bytes() > self._wal_limit:
            start = time.monotonic()
            if self._checkpoint("TRUNCATE", wait=TRUNCATE_WAIT):
                # Readers were in the way: commit as long before trying again.
                self._retry_at = 2 * time.monotonic() - start
        return not stop

    def _committed(self, requests: list[_Request]) -> None:
        if self._shred_at is None and any(r.kind == "delete" for r in requests):
            self._shred_at = time.monotonic() + _checkpoint.SHRED_DELAY

    def _checkpoint_for_shredding(self) -> None:
        # Deleted sessions' pages (their wrapped keys) linger in the WAL until
        # it is checkpointed and truncated. Readers are short, so this rarely
        # waits; if one blocks it, try again shortly.
        unfinished = self._checkpoint("TRUNCATE")
        self._shred_at = time.monotonic() + _checkpoint.SHRED_DELAY if unfinished else None

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
