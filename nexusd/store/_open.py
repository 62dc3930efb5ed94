"""The one place where the daemon's durability setting chooses a store engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ._interface import Store
from ._memory import MemoryStore
from ._sqlite import open_sqlite_store

__all__ = ["DURABILITIES", "open_store"]

#: The daemon's durability settings (`--durability`): "process" and "power"
#: are `SqliteStore` at that durability, "memory" is `MemoryStore`.
DURABILITIES: Final = ("process", "power", "memory")


async def open_store(durability: str, data_dir: Path, *, retention: int = 1000,
                     clock: Callable[[], float] = time.time,
                     wal_limit: int = 64 << 20) -> Store:
    """Opens the store for the daemon's `durability`:

    - "process" (survives `kill -9`) and "power" (survives a power cut): the
      SQLite store in `data_dir`, encrypted at rest, at that durability;
    - "memory": a `MemoryStore`, nothing on disk (`data_dir` is not used).

    "memory" never means SQLite's in-memory database: that is the SQLite
    durability "none", for tests and benchmarks (see `open_sqlite_store`).

    Args:
        retention: events each session keeps for resume after a snapshot.
        clock: wall-clock seconds. A SQLite store reads it in its writer
            thread, where trio's clock cannot be read: so the plain wall clock.
        wal_limit: bytes past which a SQLite store truncates its WAL
            (`--wal-limit`).

    Raises:
        ValueError: `durability` is not one of `DURABILITIES`.
        StoreError, KeyRingError: the store or its keys cannot be opened.
    """
    if durability == "memory":
        return MemoryStore(retention=retention)
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, "
                         f"not {durability!r}")
    return await open_sqlite_store(data_dir, durability=durability,
                                   retention_events=retention, clock=clock,
                                   wal_limit=wal_limit)
