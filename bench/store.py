"""Benchmark of the SQLite store: acknowledged writes per second, activation
latency, and memory with many dormant sessions.

    python bench/store.py [--quick] [--dir DIR] [--out bench/results/store.json]

- writes/s at each durability level, "batched" (many tasks appending at once,
  so group commit shares each commit) and "sequential" (one task awaiting
  each append before the next: one commit per append);
- activation latency: `load` of a dormant session (p50/p99), in a store of N
  dormant sessions (snapshot only) and in a small store whose sessions each
  carry 100 retained events;
- RSS of a fresh process that opens the store and serves reaper queries and
  activations, with N dormant sessions vs an empty store: dormant sessions
  live on disk, so the difference should be small.

N is 1,000,000 (100,000 with --quick). The dormant sessions are bulk-loaded
with executemany (each with its own data key and encrypted snapshot), not
through `create`. The page cache is warm: latencies are those of a daemon
that has been running, not of a cold disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from nexusd.store._crypto import load_keyring
from nexusd.store._interface import SessionMeta, StoredEvent
from nexusd.store._schema import DB_FILE, INSERT_SESSION, new_session_row
from nexusd.store._sqlite import SqliteStore, open_sqlite_store

PAYLOAD = msgpack.packb({"op": "set", "key": "cart.items", "value": ["sku-1234"] * 8,
                         "version": 17, "channel": "websocket", "seq": 0})
SNAPSHOT = msgpack.packb({"data": {f"key{i}": {"value": "x" * 16, "version": i}
                                   for i in range(8)},
                          "context": {"channel": "api", "history": ["login", "browse"]}})
NOW = time.time()


def machine() -> dict[str, Any]:
    import cryptography
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cryptography": cryptography.__version__,
    }


def meta(sid: str, expires_at: float = NOW + 86400.0) -> SessionMeta:
    return SessionMeta(sid, NOW, 86400.0, expires_at, 1800.0, expires_at - 3600.0,
                       {"ab" * 32: "admin"})


def rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource  # peak, not current: the best there is off Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    def at(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))]
    return {"p50_ms": at(0.50) * 1e3, "p99_ms": at(0.99) * 1e3,
            "mean_ms": statistics.fmean(samples) * 1e3, "n": len(samples)}


# -- writes -----------------------------------------------------------------

async def _writes(store: SqliteStore, tasks: int, seconds: float) -> dict[str, Any]:
    for t in range(tasks):
        await store.create(meta(f"w{t:04d}"), SNAPSHOT)
    before = store.statistics()
    acked = 0
    deadline = trio.current_time() + seconds

    async def writer(t: int) -> None:
        nonlocal acked
        m = meta(f"w{t:04d}")
        seq = 0
        while trio.current_time() < deadline:
            seq += 1
            await store.append(m, [StoredEvent(seq, NOW, PAYLOAD)])
            acked += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(writer, t)
    elapsed = time.perf_counter() - start
    after = store.statistics()
    commits = after.commits - before.commits
    return {"tasks": tasks, "acked": acked, "seconds": round(elapsed, 3),
            "writes_per_s": round(acked / elapsed), "commits": commits,
            "appends_per_commit": round(acked / max(commits, 1), 1)}


async def bench_writes(base: Path, seconds: float, tasks: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for durability in ("none", "process", "power"):
        results[durability] = {}
        for mode, n in (("batched", tasks), ("sequential", 1)):
            data_dir = base / f"writes-{durability}-{mode}"
            store = await open_sqlite_store(None if durability == "none" else data_dir,
                                            durability=durability)
            try:
                results[durability][mode] = await _writes(store, n, seconds)
            finally:
                await store.aclose()
            shutil.rmtree(data_dir, ignore_errors=True)
            r = results[durability][mode]
            print(f"  {durability:8} {mode:10} {r['writes_per_s']:>9,} acked writes/s "
                  f"({r['tasks']} tasks, {r['appends_per_commit']} appends/commit)")
    return results


# -- activation -------------------------------------------------------------

async def bench_activation_with_history(base: Path, sessions: int, loads: int) -> dict[str, Any]:
    data_dir = base / "activation"
    store = await open_sqlite_store(data_dir, retention_events=1000)
    try:
        for i in range(sessions):
            m = meta(f"h{i:05d}")
            await store.create(m, SNAPSHOT)
            await store.append(m, [StoredEvent(seq, NOW, PAYLOAD) for seq in range(1, 101)])
            await store.save_snapshot(m, 100, SNAPSHOT)
    finally:
        await store.aclose()
    store = await open_sqlite_store(data_dir)
    try:
        samples = []
        rng = random.Random(1)
        for _ in range(loads):
            sid = f"h{rng.randrange(sessions):05d}"
            start = time.perf_counter()
            loaded = await store.load(sid)
            samples.append(time.perf_counter() - start)
            assert loaded is not None and len(loaded.history) == 100
    finally:
        await store.aclose()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"sessions": sessions, "events_per_session": 100, **percentiles(samples)}


# -- dormant sessions: bulk load, then measure in a fresh process --------------

def populate(data_dir: Path, n: int) -> dict[str, Any]:
    trio.run(_init_store, data_dir)
    ring = load_keyring(data_dir)
    start = time.perf_counter()
    chunk = 50_000
    with sqlite3.connect(data_dir / DB_FILE, isolation_level=None) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        for base in range(0, n, chunk):
            # Deadlines an hour or more away: none is due during the run.
            rows = [new_session_row(ring, meta(f"d{i:08d}", NOW + 7200.0 + i % 86400),
                                    SNAPSHOT)[0]
                    for i in range(base, min(n, base + chunk))]
            conn.execute("BEGIN")
            conn.executemany(INSERT_SESSION, rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = sum(p.stat().st_size for p in data_dir.iterdir())
    return {"sessions": n, "seconds": round(time.perf_counter() - start, 1),
            "disk_mib": round(size / 2**20, 1)}


async def _init_store(data_dir: Path) -> None:
    await (await open_sqlite_store(data_dir)).aclose()


async def _child(data_dir: Path, sessions: int, loads: int) -> dict[str, Any]:
    before_open = rss_kib()
    store = await open_sqlite_store(data_dir)
    try:
        count = await store.count()
        assert count == sessions, (count, sessions)
        due_start = time.perf_counter()
        due = await store.due(NOW, 100)
        next_deadline = await store.next_deadline()
        reaper_ms = (time.perf_counter() - due_start) * 1e3
        assert due == []
        samples = []
        rng = random.Random(2)
        for _ in range(loads if sessions else 0):
            sid = f"d{rng.randrange(sessions):08d}"
            start = time.perf_counter()
            loaded = await store.load(sid)
            samples.append(time.perf_counter() - start)
            assert loaded is not None
        # Some traffic too, so that the writer and its caches are warmed up.
        for t in range(100):
            await store.create(meta(f"live{t}"), SNAPSHOT)
            await store.append(meta(f"live{t}"), [StoredEvent(1, NOW, PAYLOAD)])
        return {"sessions": sessions, "rss_before_open_kib": before_open,
                "rss_kib": rss_kib(), "reaper_queries_ms": round(reaper_ms, 3),
                "next_deadline_found": next_deadline is not None,
                "activation": percentiles(samples) if samples else None}
    finally:
        await store.aclose()


def measure_in_child(data_dir: Path, sessions: int, loads: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(data_dir), str(sessions), str(loads)],
        capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the measuring process failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- main -------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k sessions, shorter runs")
    parser.add_argument("--dir", type=Path, help="where to put the data (default: a temp dir)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "store.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data_dir, sessions, loads = Path(args.child[0]), int(args.child[1]), int(args.child[2])
        print(json.dumps(trio.run(_child, data_dir, sessions, loads)))
        return

    dormant = 100_000 if args.quick else 1_000_000
    seconds = 1.0 if args.quick else 3.0
    loads = 2_000 if args.quick else 10_000
    base = Path(tempfile.mkdtemp(prefix="nexusd-bench-", dir=args.dir))
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "data_dir": str(base)}
    print("machine:", ", ".join(f"{k} {v}" for k, v in results["machine"].items()))
    print(f"data in {base}")
    try:
        print(f"acknowledged writes ({seconds:g} s each):")
        results["writes"] = trio.run(bench_writes, base, seconds, 100)

        print("activation of a session with 100 retained events:")
        results["activation_with_history"] = a = trio.run(
            bench_activation_with_history, base, 2_000, loads // 2)
        print(f"  p50 {a['p50_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms")

        empty = base / "empty"
        results["empty_store"] = measure_in_child(empty, 0, 0)
        print(f"dormant sessions: bulk-loading {dormant:,} ...")
        full = base / "dormant"
        results["populate"] = populate(full, dormant)
        print(f"  {results['populate']['seconds']} s, {results['populate']['disk_mib']} MiB "
              "on disk")
        results["dormant_store"] = d = measure_in_child(full, dormant, loads)
        e = results["empty_store"]
        act = d["activation"]
        print(f"  activation of a dormant session among {dormant:,}: "
              f"p50 {act['p50_ms']:.3f} ms, p99 {act['p99_ms']:.3f} ms")
        print(f"  reaper queries (due + next_deadline): {d['reaper_queries_ms']} ms")
        print(f"  RSS: empty store {e['rss_kib'] / 1024:.1f} MiB, {dormant:,} dormant "
              f"sessions {d['rss_kib'] / 1024:.1f} MiB "
              f"(+{(d['rss_kib'] - e['rss_kib']) / 1024:.1f} MiB)")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
