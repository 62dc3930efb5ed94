from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import coredis
import pytest
from store_helpers import RETENTION, FakeWallClock

from nexusd.store import (
    KeyRing,
    MemoryStore,
    RedisStore,
    SqliteStore,
    Store,
    open_sqlite_store,
)


@pytest.fixture
def wall() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture(params=["MemoryStore", "sqlite-none", "sqlite-process", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, keyring: KeyRing,
                wall: FakeWallClock) -> AsyncIterator[Store]:
    """Every store, configured with the same retention: the contract holds for all.
    ("redis": a `RedisStore` under a prefix of its own on the run's Redis.)"""
    s: Store
    if request.param == "MemoryStore":
        s = MemoryStore(retention=RETENTION)
    elif request.param == "redis":
        server = request.getfixturevalue("redis_server")
        async with coredis.Redis.from_url(server.url, decode_responses=False) as client:
            s = RedisStore(client, keyring=keyring, epoch=1,
                           prefix=request.getfixturevalue("redis_prefix"),
                           retention_events=RETENTION, clock=wall)
            try:
                yield s
            finally:
                await s.aclose()
        return
    else:
        durability = request.param.removeprefix("sqlite-")
        s = await open_sqlite_store(None if durability == "none" else tmp_path,
                                    durability=durability, keyring=keyring,
                                    retention_events=RETENTION, clock=wall)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture(params=["process", "power"])
async def sqlite_store(request: pytest.FixtureRequest, tmp_path: Path, keyring: KeyRing,
                       wall: FakeWallClock) -> AsyncIterator[SqliteStore]:
    """A disk store with each of its writers: "process" commits in trio's
    thread, "power" in a writer thread of its own."""
    s = await open_sqlite_store(tmp_path, durability=request.param, keyring=keyring,
                                retention_events=RETENTION, retention_seconds=3600.0,
                                clock=wall)
    try:
        yield s
    finally:
        await s.aclose()
