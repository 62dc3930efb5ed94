"""Benchmark of the WAL's size under a sustained write load with readers:
how large the WAL file grows, and the write rate that comes with it.

    python bench/wal.py [--seconds 60] [--wal-limit BYTES] [--dir DIR]

Writer tasks append to their sessions (durability "process") and save a
snapshot every 50 appends, without pause, while reader tasks load sessions
in a loop (so that some read transaction is nearly always open, as under a
busy daemon). The WAL file's size is sampled every 10 ms; the report gives
its peak, its size at the end, the database's size, appends per second and
the store's checkpoint counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from nexusd.store import SessionMeta, StoredEvent
from nexusd.store._schema import DB_FILE
from nexusd.store._sqlite import open_sqlite_store

SESSIONS = 200
WRITERS = 64
READERS = 8
PAYLOAD = os.urandom(600)
SNAPSHOT = os.urandom(16_000)


def meta(i: int) -> SessionMeta:
    now = time.time()
    return SessionMeta(session_id=f"s{i:05d}", created_at=now, ttl=86400.0,
                       expires_at=now + 86400.0, idle_timeout=None, idle_expires_at=None,
                       tokens={"ab" * 32: "admin"})


async def run(data: Path, seconds: float, wal_limit: int | None) -> dict[str, Any]:
    kwargs = {} if wal_limit is None else {"wal_limit": wal_limit}
    store = await open_sqlite_store(data, durability="process", **kwargs)
    wal = data / f"{DB_FILE}-wal"
    metas = [meta(i) for i in range(SESSIONS)]
    seqs = [0] * SESSIONS
    peak = appends = 0
    async with store:
        for m in metas:
            await store.create(m, SNAPSHOT)
        end = trio.current_time() + seconds

        async def writer(w: int) -> None:
            nonlocal appends
            while trio.current_time() < end:
                i = random.randrange(w, SESSIONS, WRITERS)  # each session has one writer
                seqs[i] += 1
                await store.append(metas[i], [StoredEvent(seqs[i], time.time(), PAYLOAD)])
                appends += 1
                if seqs[i] % 50 == 0:
                    await store.save_snapshot(metas[i], seqs[i], SNAPSHOT)

        async def reader() -> None:
            while trio.current_time() < end:
                await store.load(random.choice(metas).session_id)

        async def sampler() -> None:
            nonlocal peak
            while trio.current_time() < end:
                peak = max(peak, wal.stat().st_size if wal.exists() else 0)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for w in range(WRITERS):
                nursery.start_soon(writer, w)
            for _ in range(READERS):
                nursery.start_soon(reader)
            nursery.start_soon(sampler)
        stats = store.statistics()
        final = wal.stat().st_size if wal.exists() else 0
        db = (data / DB_FILE).stat().st_size
    return {"seconds": seconds, "wal_limit": wal_limit, "wal_peak_bytes": peak,
            "wal_final_bytes": final, "db_bytes": db, "appends_per_s": round(appends / seconds),
            "checkpoints": getattr(stats, "checkpoints", None),
            "wal_truncations": getattr(stats, "wal_truncations", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--wal-limit", type=int, help="the store's default if not given")
    parser.add_argument("--dir", type=Path, help="where to put the data (default: a temp dir)")
    args = parser.parse_args()
    data = args.dir or Path(tempfile.mkdtemp(prefix="nexusd-wal-"))
    try:
        print(json.dumps(trio.run(run, data, args.seconds, args.wal_limit), indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
