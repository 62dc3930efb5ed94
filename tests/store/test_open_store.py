"""`open_store`, where the daemon's durability setting picks an engine, and
what the store package exports."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from store_helpers import events, make_meta

import nexusd.store
from nexusd.store import DURABILITIES, MemoryStore, SqliteStore, open_store
from nexusd.store._schema import DB_FILE


async def test_memory_is_the_memory_store_and_touches_no_disk(tmp_path: Path) -> None:
    store = await open_store("memory", tmp_path / "data", retention=3)
    try:
        assert isinstance(store, MemoryStore) and store.retention == 3
        await store.create(make_meta("s"), b"s0")
        await store.append(make_meta("s"), events(1, 2))
        loaded = await store.load("s")
        assert loaded is not None and list(loaded.events) == events(1, 2)
    finally:
        await store.aclose()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_process_and_power_are_sqlite_in_the_data_directory(
        tmp_path: Path, durability: str) -> None:
    store = await open_store(durability, tmp_path, retention=7)
    try:
        assert isinstance(store, SqliteStore) and store.retention_events == 7
        await store.create(make_meta("s"), b"s0")
        assert store.keys is not None
    finally:
        await store.aclose()
    assert (tmp_path / DB_FILE).exists()


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_the_wal_limit_reaches_the_store(tmp_path: Path, durability: str) -> None:
    # `--wal-limit` of 1 MiB: the store truncates the WAL within a few MiB of
    # writes (at the default, 64 MiB, it would not).
    store = await open_store(durability, tmp_path, wal_limit=1 << 20)
    payload = bytes(range(256)) * 16
    try:
        await store.create(make_meta("s"), b"s0")
        for seq in range(1, 1001):  # about 5 MiB of WAL
            await store.append(make_meta("s"), events(seq, seq, body=lambda _: payload))
            if store.statistics().wal_truncations:
                break
        assert store.statistics().wal_truncations >= 1
        assert (tmp_path / f"{DB_FILE}-wal").stat().st_size < 2 << 20
    finally:
        await store.aclose()


async def test_an_unknown_durability_is_refused(tmp_path: Path) -> None:
    # SQLite's in-memory database is no daemon setting.
    for durability in ("none", "fast"):
        with pytest.raises(ValueError, match="durability must be one of process, power, "
                                             "memory"):
            await open_store(durability, tmp_path)
    assert os.listdir(tmp_path) == []
    assert DURABILITIES == ("process", "power", "memory")


def test_public_names() -> None:
    exported = {n for n in vars(nexusd.store) if not n.startswith("_")}
    modules = {n for n in exported if isinstance(getattr(nexusd.store, n), types.ModuleType)}
    assert exported - modules == {
        "Store", "StoreError", "SessionMeta", "StoredEvent", "LoadedSession",
        "KeyManagement", "MemoryStore", "SqliteStore", "StoreStatistics", "open_store",
        "open_sqlite_store", "DURABILITIES", "KeyRing", "KeyRingError", "CryptoError",
        "IntegrityError", "IDLE_LAG", "check_snapshot_seq", "RedisStore", "Fenced",
        "open_redis_store", "REDIS_DURABILITIES"}
