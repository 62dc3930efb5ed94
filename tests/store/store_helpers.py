"""Helpers shared by the store tests."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path

import trio
import trio.testing

from nexusd.store._interface import SessionMeta, StoredEvent
from nexusd.store._schema import DB_FILE
from nexusd.store._sqlite import SqliteStore
from nexusd.store._writer import TaskWriter

RETENTION = 5


def make_meta(session_id: str, *, expires_at: float = 1000.0,
              idle_expires_at: float | None = None, created_at: float = 0.0,
              tokens: dict[str, str] | None = None) -> SessionMeta:
    return SessionMeta(
        session_id=session_id, created_at=created_at, ttl=expires_at - created_at,
        expires_at=expires_at,
        idle_timeout=None if idle_expires_at is None else 60.0,
        idle_expires_at=idle_expires_at,
        tokens={"ab" * 32: "admin"} if tokens is None else tokens)


#: Wall-clock "now" of the tests: events are stamped just before it.
NOW = 1_750_000_000.0


def events(first: int, last: int, *, ts: float = NOW - 1000.0,
           body: Callable[[int], bytes] = lambda seq: b"change %d" % seq) -> list[StoredEvent]:
    return [StoredEvent(seq, ts + seq, body(seq)) for seq in range(first, last + 1)]


class FakeWallClock:
    """Wall-clock seconds that a test sets."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def raw_db(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to a store's database, as an attacker or an operator has it."""
    with closing(sqlite3.connect(data_dir / DB_FILE, isolation_level=None)) as conn:
        yield conn


def files_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}


@asynccontextmanager
async def writer_paused(store: SqliteStore) -> AsyncIterator[None]:
    """Holds the store's writer busy until the block exits, so that requests
    made inside the block queue up and go into one transaction."""
    writer = store._writer
    if isinstance(writer, TaskWriter):
        # It commits in trio's thread, led by a caller: hold the lead meanwhile,
        # then hand it over as a leader does.
        writer._leading = True
        writer._idle = trio.Event()
        try:
            yield
        finally:
            writer._hand_over()
        return
    gate, entered = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._writer.submit, "raw", block)
        assert await trio.to_thread.run_sync(entered.wait, 10)
        try:
            yield
        finally:
            gate.set()


async def wait_queued(store: SqliteStore, n: int) -> None:
    """Waits until the callers started so far wait for the (paused) writer, and
    checks that `n` requests are queued. A caller queues its request before it
    blocks, so once every task is blocked, every request is in the queue."""
    await trio.testing.wait_all_tasks_blocked()
    assert store.statistics().queued == n
