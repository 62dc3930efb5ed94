"""Several daemons on one Redis: cross-daemon sync, writes/s, failover.

    python -m bench.cluster [--quick] [--json PATH]

Real daemons (``nexusd serve --engine redis://...``, subprocesses sharing one
key ring) on one `redis-server` (AOF, ``appendfsync everysec``), at durability
"process", with `nexus_client` as the client. In one run:

1. sync latency: the writer's `set` sent -> the subscriber's `Change`
   received, writer and subscriber in this process (one clock); writer on
   the session's owner A and subscriber on daemon B, beside both on A, beside
   the Redis floor: a coredis client doing HSET then PUBLISH (a payload the
   size of the change event), a second coredis connection subscribed. The
   three are measured in interleaved rounds, so that load drifts hit all;
2. acknowledged writes/s: K writers (one client and one session each, a
   bounded number of sets in flight) spread over one, two and three daemons,
   each session owned by the daemon its writer is connected to ("local"), or
   by another one ("forwarded": every write crosses Redis pub/sub twice);
   beside K coredis clients writing HSET + XADD pipelines (the floor);
3. failover: a session owned by daemon X, a writer on B setting a new key
   every ~10 ms (each set retried on `unavailable`/`busy`/`timeout`), a
   watcher on C; X is killed with SIGKILL between two writes. Measured: the
   kill -> the first acknowledged write; the kill -> the watcher receiving
   it; then checked: every write acknowledged is read back, and the watcher
   saw every seq, without a gap. Repeated with a fresh X each time.

Everything shares this machine's cores (daemons, Redis and this client): the
CPU each process used during each measurement and the load average are in
the output. Progress goes to stderr, the table to stdout, the JSON to
bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import coredis
import msgpack
import nexus_protocol as p
import trio
from nexus_client import AsyncClient, Backoff, open_client, retry_async

from ._procs import BenchError, Processes, Server, pid_cpu
from ._report import loadavg, machine

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.json"
PREFIX = "bench"
LEASE = 1.5
PAD = "x" * 64  # a small value: {"i": n, "pad": PAD}
X = "\N{MULTIPLICATION SIGN}"


@attrs.frozen
class Plan:
    quick: bool
    samples: int  # latency samples per system
    rounds: int  # latency rounds (the systems take turns)
    writers: int  # throughput: clients, one session each
    window: int  # throughput: sets in flight per writer
    warm_s: float
    measure_s: float
    tp_rounds: int  # throughput: rounds per case (the median is kept)
    failovers: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 500, 5, 8, 8, 0.5, 2.0, 1, 3)
        return cls(False, 5000, 10, 8, 8, 1.0, 4.0, 3, 10)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(samples: list[float]) -> dict[str, Any]:
    """p50/p99/p99.9 of `samples` (seconds), in µs."""
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, math.ceil(len(s) * q) - 1)] * 1e6

    return {"p50": statistics.median(s) * 1e6, "p99": at(0.99), "p999": at(0.999),
            "n": len(s)}


def _change_size(value: Any) -> int:
    """Bytes of the `Change` frame body a subscriber receives for one set."""
    return len(p.encode_body(p.Change(session_id="x" * 43, seq=1_000, op="set",
                                      ts=time.time(), channel="api", writer="bench-writer",
                                      key="k", value=value, version=1_000)))


# ---------------------------------------------------------------- processes


class Cluster:
    """redis-server and the daemons on it, started through `Processes`."""

    def __init__(self, procs: Processes, durability: str) -> None:
        self.procs = procs
        self.durability = durability
        self.redis: Server | None = None
        self.daemons: list[Server] = []
        self.sockets: dict[Server, str] = {}
        self._keys: Path | None = None
        self._n = itertools.count(1)

    @property
    def url(self) -> str:
        assert self.redis is not None
        return f"redis://{self.redis.targets['tcp'].address}/0"

    def start_redis(self) -> None:
        self.redis = self.procs.redis("everysec")
        if self.redis is None:
            raise BenchError("redis-server is not installed")

    def start_daemon(self) -> Server:
        n = next(self._n)
        data = self.procs.tmp / f"data-{n}"
        data.mkdir()
        if self._keys is not None:  # one key ring for the whole cluster
            shutil.copyfile(self._keys, data / "keys")
            os.chmod(data / "keys", 0o600)
        sock = self.procs.tmp / f"d{n}.sock"
        server = self.procs.spawn(f"nexusd-{n}", [
            sys.executable, "-m", "nexusd", "serve", "--engine", self.url,
            "--engine-prefix", PREFIX, "--data", str(data), "--socket", str(sock),
            "--ws", "off", "--http", "off", "--durability", self.durability,
            "--lease", f"{LEASE:g}s"], {"unix"})
        if self._keys is None:
            self._keys = data / "keys"
            if not self._keys.exists():
                raise BenchError(f"the first daemon wrote no key ring at {self._keys}")
        self.daemons.append(server)
        self.sockets[server] = str(sock)
        return server

    def kill(self, server: Server) -> None:
        """SIGKILL, as a crash."""
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        self.daemons.remove(server)
        self.procs.stop(server)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: each daemon, Redis and this process."""
        out = {f"daemon{i}": pid_cpu(d.pid) for i, d in enumerate(self.daemons)}
        if self.redis is not None:
            out["redis"] = pid_cpu(self.redis.pid)
        out["client"] = time.process_time()
        out["machine"] = machine_busy()
        return out


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat):
    this run's processes and everyone else's."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float
              ) -> dict[str, float]:
    """Each process's CPU use over `seconds`, as a fraction of one core;
    "machine": all cores, "others": what processes outside this run used."""
    out = {k: round((after[k] - before[k]) / seconds, 3) for k in before if k in after}
    out["others"] = round(max(0.0, out["machine"] - sum(
        v for k, v in out.items() if k != "machine")), 3)
    return out


@contextlib.asynccontextmanager
async def client(cluster: Cluster, server: Server, tokens: dict[str, str] | None = None,
                 **kwargs: Any) -> AsyncIterator[AsyncClient]:
    async with open_client(cluster.sockets[server], channel="api", tokens=tokens or {},
                           client_name="bench", **kwargs) as c:
        yield c


def redis_client(cluster: Cluster) -> coredis.Redis[bytes]:
    return coredis.Redis.from_url(cluster.url, decode_responses=False)


async def redis_calls(r: coredis.Redis[bytes]) -> dict[str, int]:
    """Commands Redis has served so far, by name (INFO commandstats)."""
    info = await r.info("commandstats")
    return {str(k).removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
            if isinstance(v, dict)}


# ------------------------------------------------------------------ latency


class NexusPair:
    """A writer on one daemon and a subscriber on another (or the same)."""

    def __init__(self, writer: AsyncClient, watcher: AsyncClient, sid: str) -> None:
        self.writer, self.watcher, self.sid = writer, watcher, sid
        self.arrivals: trio.MemorySendChannel[tuple[int, float]]
        self.arrivals, self._got = trio.open_memory_channel(math.inf)

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with self.watcher.watch(self.sid) as events:
            task_status.started()
            async for event in events:
                if type(event) is p.Change:
                    self.arrivals.send_nowait((event.value["i"], time.perf_counter()))

    async def sample(self, i: int) -> float:
        t0 = time.perf_counter()
        await self.writer.set(self.sid, "k", {"i": i, "pad": PAD})
        j, t1 = await self._got.receive()
        if j != i:
            raise BenchError(f"subscriber received value {j}, expected {i}")
        return float(t1 - t0)


class RedisPair:
    """The floor: HSET then PUBLISH on one connection, SUBSCRIBE on another."""

    def __init__(self, cmd: coredis.Redis[bytes], size: int) -> None:
        self.cmd = cmd
        self.pad = b"x" * size
        self.channel = f"{PREFIX}:floor:ch"
        self._send, self._got = trio.open_memory_channel[tuple[int, float]](math.inf)

    async def watch(self, sub: coredis.Redis[bytes], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with sub.pubsub(channels=[self.channel], ignore_subscribe_messages=True) as ps:
            task_status.started()
            async for message in ps:
                if message.get("type") == "message":
                    t = time.perf_counter()
                    data = message["data"]
                    assert isinstance(data, bytes)
                    self._send.send_nowait((int(data[:12]), t))

    async def sample(self, i: int) -> float:
        payload = b"%012d" % i + self.pad[12:]
        t0 = time.perf_counter()
        await self.cmd.hset(f"{PREFIX}:floor:h", {"k": payload})
        await self.cmd.publish(self.channel, payload)
        j, t1 = await self._got.receive()
        if j != i:
            raise BenchError(f"redis subscriber received {j}, expected {i}")
        return t1 - t0


async def latency(cluster: Cluster, plan: Plan) -> list[dict[str, Any]]:
    a, b = cluster.daemons[0], cluster.daemons[1]
    size = _change_size({"i": 10**6, "pad": PAD})
    warm = max(20, plan.samples // plan.rounds // 10)
    per_round = plan.samples // plan.rounds
    names = ["cross-daemon: writer on A (owner), subscriber on B",
             "one daemon: writer and subscriber on A",
             f"Redis floor: HSET + PUBLISH ({size} B) -> SUBSCRIBE"]
    times: dict[str, list[float]] = {n: [] for n in names}
    async with contextlib.AsyncExitStack() as stack:
        owner = await stack.enter_async_context(client(cluster, a))
        sid = (await owner.create_session()).session_id
        sid2 = (await owner.create_session()).session_id
        tokens = dict(owner._tokens)
        on_b = await stack.enter_async_context(client(cluster, b, tokens))
        on_a = await stack.enter_async_context(client(cluster, a, tokens))
        cmd = await stack.enter_async_context(redis_client(cluster))
        sub = await stack.enter_async_context(redis_client(cluster))
        nursery = await stack.enter_async_context(trio.open_nursery())
        pairs: dict[str, NexusPair | RedisPair] = {
            names[0]: NexusPair(owner, on_b, sid), names[1]: NexusPair(owner, on_a, sid2),
            names[2]: RedisPair(cmd, size)}
        for pair in pairs.values():
            if isinstance(pair, NexusPair):
                await nursery.start(pair.watch)
            else:
                await nursery.start(pair.watch, sub)
        counter = itertools.count()
        for rnd in range(plan.rounds):
            for name, pair in pairs.items():
                for _ in range(warm):
                    await pair.sample(next(counter))
                times[name] += [await pair.sample(next(counter)) for _ in range(per_round)]
            say(f"  latency round {rnd + 1}/{plan.rounds}: " + ", ".join(
                f"{statistics.median(v) * 1e6:.0f}" for v in times.values()) + " µs p50")
        nursery.cancel_scope.cancel()
    rows: list[dict[str, Any]] = [{"case": name, **pct(v), "payload_bytes": size}
                                  for name, v in times.items()]
    base = rows[2]
    for r in rows:
        for q in ("p50", "p99", "p999"):
            r[f"{q}_x_floor"] = r[q] / base[q]
    return rows


# --------------------------------------------------------------- throughput


async def _run_for(plan: Plan, cluster: Cluster,
                   writers: Sequence[Callable[[], Awaitable[int]]], tasks: int
                   ) -> dict[str, Any]:
    """Runs each of `writers` (a call returns how many writes it had
    acknowledged) in `tasks` tasks; counts the acknowledgements inside the
    measurement window."""
    start = trio.current_time()
    m0, m1 = start + plan.warm_s, start + plan.warm_s + plan.measure_s
    counted = 0
    cpu: dict[str, dict[str, float]] = {}
    calls: dict[str, dict[str, int]] = {}

    async def loop(write: Callable[[], Awaitable[int]]) -> None:
        nonlocal counted
        while True:
            n = await write()
            now = trio.current_time()
            if m0 <= now < m1:
                counted += n
            elif now >= m1:
                return

    async def sampler() -> None:
        async with redis_client(cluster) as r:
            await trio.sleep_until(m0)
            cpu["0"] = cluster.cpu()
            calls["0"] = await redis_calls(r)
            await trio.sleep_until(m1)
            cpu["1"] = cluster.cpu()
            calls["1"] = await redis_calls(r)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for write in writers:
            for _ in range(tasks):
                nursery.start_soon(loop, write)
    per_write = {k: round((n - calls["0"].get(k, 0)) / max(1, counted), 2)
                 for k, n in calls["1"].items() if k != "info"}
    return {"acked_per_s": counted / plan.measure_s,
            "cpu": cpu_share(cpu["0"], cpu["1"], plan.measure_s),
            "redis_calls_per_write": {k: v for k, v in sorted(
                per_write.items(), key=lambda kv: -kv[1]) if v >= 0.01}}


async def _nexus_write(c: AsyncClient, sid: str, keys: Iterator[int]) -> int:
    n = next(keys)
    await c.set(sid, f"k{n % 16}", {"i": n, "pad": PAD})
    return 1


async def _redis_writes(r: coredis.Redis[bytes], key: str, value: bytes, n: int) -> int:
    async with r.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.hset(key, {"k": value})
            pipe.xadd(f"{key}:log", {"p": value})
    return n


async def nexus_throughput(cluster: Cluster, plan: Plan, daemons: int, forwarded: bool
                           ) -> dict[str, Any]:
    """K writers, writer k on daemon k mod `daemons`; its session owned by
    that daemon, or (`forwarded`) by the next one."""
    servers = cluster.daemons[:daemons]
    async with contextlib.AsyncExitStack() as stack:
        writes = []
        for k in range(plan.writers):
            on = servers[k % daemons]
            owner = servers[(k + 1) % daemons] if forwarded else on
            async with client(cluster, owner) as creator:
                info = await creator.create_session()
            c = await stack.enter_async_context(
                client(cluster, on, {info.session_id: info.token}))
            writes.append(functools.partial(_nexus_write, c, info.session_id,
                                            itertools.count()))
        return await _run_for(plan, cluster, writes, plan.window)


async def redis_throughput(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    """K coredis clients, each sending pipelines of `plan.window` writes (HSET
    + XADD each): as many writes in flight per client as a nexus writer has,
    at a lower cost to this process than one task per write."""
    value = b"v" * len(msgpack.packb({"i": 10**6, "pad": PAD}))
    async with contextlib.AsyncExitStack() as stack:
        writes = []
        for k in range(plan.writers):
            r = await stack.enter_async_context(redis_client(cluster))
            writes.append(functools.partial(_redis_writes, r, f"{PREFIX}:floor:s{k}", value,
                                            plan.window))
        return await _run_for(plan, cluster, writes, 1)


# ----------------------------------------------------------------- failover


async def failover_once(cluster: Cluster, victim: Server, writer_on: Server,
                        watcher_on: Server, *, before: int = 50, after: int = 30,
                        period: float = 0.010) -> dict[str, Any]:
    """One failover (see the module docs); a dict of what was measured."""
    async with client(cluster, victim) as creator:
        info = await creator.create_session()
    tokens = {info.session_id: info.token}
    sid = info.session_id
    acked: list[tuple[int, float, float]] = []  # (n, sent, acked)
    seen: list[tuple[int, str, float]] = []  # (seq, key, received)
    snapshots: list[tuple[int, bool]] = []
    errors: dict[str, int] = {}
    killed_at = math.nan
    policy = Backoff(base=0.02, max_delay=0.2, max_attempts=None)

    async with (client(cluster, writer_on, tokens, request_timeout=15.0) as w,
                client(cluster, watcher_on, tokens) as wc, trio.open_nursery() as nursery):
        last_seen = trio.Event()
        want: list[str] = []

        async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with wc.watch(sid) as events:
                task_status.started()
                async for e in events:
                    if type(e) is p.Snapshot:
                        snapshots.append((e.seq, bool(getattr(e, "recovered", True))))
                    elif type(e) is p.Change:
                        seen.append((e.seq, e.key or "", time.perf_counter()))
                        if want and e.key == want[0]:
                            last_seen.set()

        await nursery.start(watch)

        async def set_once(n: int) -> None:
            try:
                await w.set(sid, f"k{n}", n)
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                raise

        first_after: int | None = None
        tick = trio.current_time()
        with trio.fail_after(30):
            for n in itertools.count():
                t0 = time.perf_counter()
                await retry_async(lambda n=n: set_once(n), policy)  # type: ignore[misc]
                acked.append((n, t0, time.perf_counter()))
                if n + 1 == before:
                    cluster.kill(victim)
                    killed_at = time.perf_counter()
                elif n >= before and first_after is None:
                    first_after = n
                elif first_after is not None and n >= first_after + after:
                    break
                tick += period
                await trio.sleep_until(tick)
            want.append(f"k{acked[-1][0]}")
            if not any(k == want[0] for _, k, _ in seen):
                await last_seen.wait()
        state = await w.get(sid)
        nursery.cancel_scope.cancel()

    assert first_after is not None
    _, sent, ack = acked[first_after]
    when_seen = next(t for _, k, t in seen if k == f"k{first_after}")
    missing = [n for n, _, _ in acked
               if (e := state.entries.get(f"k{n}")) is None or e.value != n]
    seqs = [s for s, _, _ in seen]
    start = snapshots[0][0] if snapshots else 0
    gaps = [(x, y) for x, y in itertools.pairwise([start, *seqs]) if y != x + 1]
    seen_keys = {k for _, k, _ in seen}
    unseen = [n for n, _, _ in acked if f"k{n}" not in seen_keys]
    return {"kill_to_ack_s": ack - killed_at, "kill_to_watcher_s": when_seen - killed_at,
            "first_write_wait_s": ack - sent, "acked": len(acked),
            "acked_before_kill": before, "missing_after": missing,
            "watcher_gaps": gaps, "watcher_unseen": unseen,
            "resyncs": [s for s in snapshots[1:] if not s[1]], "errors_retried": errors}


async def failover(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    runs = []
    for r in range(plan.failovers):
        victim = cluster.daemons[0]
        writer_on, watcher_on = cluster.daemons[1], cluster.daemons[2]
        run = await failover_once(cluster, victim, writer_on, watcher_on)
        runs.append(run)
        ok = not (run["missing_after"] or run["watcher_gaps"] or run["watcher_unseen"])
        say(f"  failover {r + 1}/{plan.failovers}: kill -> ack "
            f"{run['kill_to_ack_s'] * 1e3:.0f} ms, -> watcher {run['kill_to_watcher_s'] * 1e3:.0f}"
            f" ms; {'nothing lost, no gap' if ok else 'LOST OR GAP: ' + json.dumps(run)}")
        # [B, C] remain; a new daemon joins at the end, and B is the next victim.
        await trio.to_thread.run_sync(cluster.start_daemon)
    out: dict[str, Any] = {"runs": runs}
    for field in ("kill_to_ack_s", "kill_to_watcher_s"):
        v = [r[field] for r in runs]
        out[field] = {"min": min(v), "median": statistics.median(v), "max": max(v)}
    out["lost_writes"] = sum(len(r["missing_after"]) for r in runs)
    out["watcher_gaps"] = sum(len(r["watcher_gaps"]) + len(r["watcher_unseen"]) for r in runs)
    return out


# ------------------------------------------------------------------ the run


async def run(procs: Processes, plan: Plan, durability: str) -> dict[str, Any]:
    cluster = Cluster(procs, durability)
    result: dict[str, Any] = {"throughput": []}
    tp = result["throughput"]

    async def throughput(*cases: tuple[str, int, bool | None]) -> None:
        """Each case (name, daemons, forwarded; None: the Redis floor) in turn,
        `plan.tp_rounds` times; the median round of each is kept."""
        runs: dict[str, list[dict[str, Any]]] = {case: [] for case, _, _ in cases}
        for _ in range(plan.tp_rounds):
            for case, daemons, forwarded in cases:
                if forwarded is None:
                    r = await redis_throughput(cluster, plan)
                else:
                    r = await nexus_throughput(cluster, plan, daemons, forwarded)
                r.update(case=case, daemons=daemons, writers=plan.writers,
                         window=plan.window, load=loadavg())
                runs[case].append(r)
                cpu = ", ".join(f"{k} {v:.0%}" for k, v in r["cpu"].items())
                say(f"  {case:44} {r['acked_per_s']:8,.0f} writes/s  (CPU: {cpu})")
        for rounds in runs.values():
            rounds.sort(key=lambda r: r["acked_per_s"])
            row = dict(rounds[len(rounds) // 2])
            row["rounds"] = [round(r["acked_per_s"]) for r in rounds]
            tp.append(row)

    say("starting redis-server and daemon A")
    await trio.to_thread.run_sync(cluster.start_redis)
    await trio.to_thread.run_sync(cluster.start_daemon)
    say("throughput, one daemon")
    await throughput(("Redis floor: HSET + XADD pipelined", 1, None),
                     ("1 daemon, local", 1, False))
    say("starting daemon B")
    await trio.to_thread.run_sync(cluster.start_daemon)
    say("latency")
    result["latency"] = await latency(cluster, plan)
    say("throughput, two daemons")
    await throughput(("2 daemons, local", 2, False),
                     ("2 daemons, forwarded (every write)", 2, True))
    say("starting daemon C")
    await trio.to_thread.run_sync(cluster.start_daemon)
    say("throughput, three daemons")
    await throughput(("3 daemons, local", 3, False),
                     ("3 daemons, forwarded (every write)", 3, True))
    base = tp[0]["acked_per_s"]
    for r in tp:
        r["x_floor"] = r["acked_per_s"] / base
    say("failover")
    result["failover"] = await failover(cluster, plan)
    return result


def table(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"nexusd cluster bench ({'quick' if meta['quick'] else 'full'}), "
             f"{meta['machine']['cores']} cores shared by redis-server, every daemon and this "
             f"client; load average {meta['load_before']:.2f} before, "
             f"{meta['load_after']:.2f} after; durability {meta['durability']!r}, Redis AOF "
             f"appendfsync everysec, lease {LEASE:g} s", ""]
    add = lines.append
    add(f"1. Sync latency, µs: writer's set sent -> subscriber's receipt "
        f"({result['latency'][0]['n']:,} samples each)")
    add(f"{'case':<56}{'p50':>8}{'p99':>8}{'p99.9':>8} | {'÷ floor p50':>11}{'p99':>6}"
        f"{'p99.9':>6}")
    for r in result["latency"]:
        add(f"{r['case']:<56}{r['p50']:8.0f}{r['p99']:8.0f}{r['p999']:8.0f} | "
            f"{r['p50_x_floor']:10.1f}{X}{r['p99_x_floor']:5.1f}{X}{r['p999_x_floor']:5.1f}{X}")
    tp = result["throughput"]
    add("")
    add(f"2. Acknowledged writes/s: {tp[0]['writers']} writers (one client and session each, "
        f"{tp[0]['window']} sets in flight each); local: the session is owned by the writer's "
        "daemon; forwarded: by another one. CPU: share of one core during the measurement "
        f"(machine: all {os.cpu_count()} cores together; others: processes outside this run)")
    add(f"{'case':<44}{'writes/s':>10}{'÷ floor':>9}  CPU (the median of "
        f"{len(tp[0]['rounds'])} round{'s' * (len(tp[0]['rounds']) != 1)})")
    for r in tp:
        cpu = " ".join(f"{k} {v:.0%}" for k, v in r["cpu"].items())
        add(f"{r['case']:<44}{r['acked_per_s']:10,.0f}{r['x_floor']:8.2f}{X}  {cpu}")
        add(f"{'':<46}rounds {'/'.join(f'{v:,}' for v in r['rounds'])}; "
            "Redis commands per write: " + ", ".join(
            f"{k} {v:g}" for k, v in list(r["redis_calls_per_write"].items())[:5]))
    f = result["failover"]
    add("")
    add(f"3. Failover: kill -9 of a session's owner, writer on another daemon (a set every "
        f"~10 ms, retried), watcher on a third; {len(f['runs'])} runs")
    add(f"{'':<44}{'min':>8}{'median':>8}{'max':>8}")
    for field, label in (("kill_to_ack_s", "kill -> first acknowledged write, ms"),
                         ("kill_to_watcher_s", "kill -> the watcher receives it, ms")):
        v = f[field]
        add(f"{label:<44}{v['min'] * 1e3:8.0f}{v['median'] * 1e3:8.0f}{v['max'] * 1e3:8.0f}")
    retried: dict[str, int] = {}
    for r in f["runs"]:
        for k, n in r["errors_retried"].items():
            retried[k] = retried.get(k, 0) + n
    add(f"acknowledged writes lost: {f['lost_writes']} of {sum(r['acked'] for r in f['runs'])}; "
        f"seqs the watcher missed: {f['watcher_gaps']}; errors retried: "
        f"{retried or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, under ~90 s")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--durability", default="process", choices=("process", "memory"),
                        help="the daemons' --durability (default: process)")
    args = parser.parse_args()
    plan = Plan.of(args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="nx-cluster-bench-"))
    procs = Processes(tmp)
    started = time.time()
    meta = {"quick": plan.quick, "plan": attrs.asdict(plan), "durability": args.durability,
            "lease_s": LEASE, "machine": machine(), "load_before": loadavg(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))}
    try:
        result = trio.run(run, procs, plan, args.durability)
    except BaseException:
        for server in procs.servers:
            if not server.alive():  # e.g. signalled from outside: its log says so
                say(f"{server.name} exited ({server.proc.returncode}); its log ends:\n"
                    + "\n".join(server.log.read_text(errors="replace").splitlines()[-5:]))
        say(f"logs kept in {tmp}")
        raise
    finally:
        procs.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)
    meta.update(load_after=loadavg(), seconds=time.time() - started)
    result["meta"] = meta
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    say(f"{meta['seconds']:.0f} s; JSON in {args.json}")


if __name__ == "__main__":
    main()
