"""The SQLite store's WAL: bounded under sustained writes with readers, and
emptied on request even while another checkpoint runs."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import trio
from store_helpers import events, make_meta

from nexusd.store._crypto import KeyRing
from nexusd.store._schema import DB_FILE
from nexusd.store._sqlite import open_sqlite_store

LIMIT = 1 << 20


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_the_wal_stays_near_its_limit_under_sustained_writes_and_readers(
        tmp_path: Path, keyring: KeyRing, durability: str) -> None:
    store = await open_sqlite_store(tmp_path, durability=durability, keyring=keyring,
                                    wal_limit=LIMIT)
    wal = tmp_path / f"{DB_FILE}-wal"
    peak = 0
    payload = bytes(range(256)) * 16  # 4 KiB a change: about 12 MiB of WAL in all

    async def write(i: int) -> None:
        nonlocal peak
        meta = make_meta(f"w{i}")
        await store.create(meta, b"")
        for seq in range(1, 151):
            await store.append(meta, events(seq, seq, body=lambda _: payload))
            peak = max(peak, wal.stat().st_size)

    async def read(done: trio.Event) -> None:
        # Activations, back to back: some read transaction is nearly always
        # open, and each keeps the writer from reusing the WAL from its start.
        while not done.is_set():
            await store.load("s0")

    done = trio.Event()
    async with store, trio.open_nursery() as nursery:
        await store.create(make_meta("s0"), b"")
        for _ in range(4):
            nursery.start_soon(read, done)
        try:
            with trio.fail_after(120):  # real time: threads checkpoint
                async with trio.open_nursery() as writers:
                    for i in range(16):
                        writers.start_soon(write, i)
        finally:
            done.set()
        # Past the limit, the commit that crossed it empties the WAL (slack
        # for a checkpoint that lagged behind and made it wait).
        assert peak < LIMIT + (3 << 20), peak
        stats = store.statistics()
        assert stats.wal_truncations >= 1
        assert stats.wal_bytes == wal.stat().st_size


async def test_checkpoint_empties_the_wal_even_while_another_checkpoint_runs(
        tmp_path: Path, keyring: KeyRing) -> None:
    store = await open_sqlite_store(tmp_path, keyring=keyring)
    async with store:
        await store.create(make_meta("s"), b"")
        wal = tmp_path / f"{DB_FILE}-wal"
        reader = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None,
                                 check_same_thread=False)
        other = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None, timeout=30,
                                check_same_thread=False)
        with closing(reader), closing(other):
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sessions").fetchone()  # an old snapshot
            await store.append(make_meta("s"), events(1, 1))
            # Another checkpoint (as the checkpointer thread runs one) waits
            # for that reader, holding SQLite's checkpoint lock meanwhile.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, other.execute,
                                   "PRAGMA wal_checkpoint(RESTART)")
                with trio.fail_after(10):
                    while not _checkpoint_running(tmp_path):  # noqa: ASYNC110 - a thread's
                        await trio.sleep(0.01)
                checkpointing = trio.Event()

                async def checkpoint() -> None:
                    await store.checkpoint()
                    checkpointing.set()

                nursery.start_soon(checkpoint)
                before = store.statistics().checkpoints
                with trio.fail_after(10):  # the store's first try: it finds the lock taken
                    while (store.statistics().checkpoints == before  # noqa: ASYNC110
                           and not checkpointing.is_set()):
                        await trio.sleep(0.01)
                reader.execute("COMMIT")  # the other checkpoint ends, then the store's
        assert wal.stat().st_size == 0


def _checkpoint_running(data: Path) -> bool:
    with closing(sqlite3.connect(data / DB_FILE, isolation_level=None)) as conn:
        busy: int = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
    return bool(busy)
