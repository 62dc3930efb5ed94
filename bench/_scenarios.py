"""The measurements of a bench run, each against nexusd and its baselines in
the same run, with the same client processes and the same payloads.

- `latency`: one-way sync latency, writer send -> subscriber receipt.
- `throughput`: sustained acknowledged writes/s, one pipelining writer and
  many; deliveries/s seen by the subscribers.
- `fanout`: one write to 100 subscribers, time until the last receives it.
- `memory`: RSS per active session, per idle connection, and with many
  dormant sessions.
- `http`: the HTTP channel: HTTP PUT -> Unix subscriber, Unix write -> SSE
  subscriber, beside the round trip of a bare hypercorn+Starlette endpoint.

Each returns plain dicts (the JSON of the run); `bench._report` turns them
into the table, the verdicts and the plot.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import attrs
from hdrh.histogram import HdrHistogram

from ._procs import BenchError, Processes, Server, Worker, nexus_stats

__all__ = ["Plan", "Scenarios", "summarize"]

#: The HTTP workflow-execute round trip of the Kailash Nexus platform (the
#: guide's), as published for this kind of machine: quoted, not measured here.
KAILASH_HTTP_MS = 3.16

#: Percentiles reported, and those plotted (a denser set for the curves).
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
CURVE = [100.0 * (1.0 - 10 ** (-i / 20)) for i in range(0, 81)]  # 0% .. 99.99%


@attrs.frozen
class Plan:
    """How much of everything a run does."""

    quick: bool
    sessions: tuple[int, ...]
    subscribers: tuple[int, ...]
    rate: float  # paced writes/s, latency and fan-out alike
    warmup: int
    samples: int
    pad: int  # bytes of padding in each written value
    redis_tcp: bool
    tp_rounds: int
    tp_warm_s: float
    tp_measure_s: float
    tp_window: int
    many_writers: int
    fanout_subscribers: int
    fanout_rate: float
    fanout_warmup: int
    fanout_writes: int
    mem_sessions: int
    mem_connections: int
    dormant: int
    http_rate: float = 200.0  # paced HTTP writes/s: one connection, one request at a time

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(quick=True, sessions=(1, 1000), subscribers=(1, 10), rate=500.0,
                       warmup=50, samples=300, pad=64, redis_tcp=False, tp_rounds=1,
                       tp_warm_s=0.2, tp_measure_s=0.8, tp_window=128, many_writers=8,
                       fanout_subscribers=100, fanout_rate=25.0, fanout_warmup=5,
                       fanout_writes=20, mem_sessions=1000, mem_connections=200,
                       dormant=5_000)
        return cls(quick=False, sessions=(1, 1000, 10_000), subscribers=(1, 10), rate=500.0,
                   warmup=500, samples=5_000, pad=64, redis_tcp=True, tp_rounds=3,
                   tp_warm_s=1.0, tp_measure_s=4.0, tp_window=128, many_writers=8,
                   fanout_subscribers=100, fanout_rate=25.0, fanout_warmup=20,
                   fanout_writes=300, mem_sessions=10_000, mem_connections=2000,
                   dormant=100_000)


def summarize(encoded: str) -> dict[str, Any]:
    """Percentiles (µs) and the plotting curve of an encoded HDR histogram."""
    h = HdrHistogram.decode(encoded)
    n = h.get_total_count()
    out: dict[str, Any] = {"count": n}
    if n == 0:
        return out
    curve = [q for q in CURVE if q <= 100.0 * (1 - 1 / n)]
    values = _values_at(h, n, [*PERCENTILES.values(), *curve])
    for name, pct in PERCENTILES.items():
        out[name] = values[pct] / 1e3
    out["max"] = h.get_max_value() / 1e3
    out["curve"] = [[round(q, 4), values[q] / 1e3] for q in curve]
    return out


def _values_at(h: HdrHistogram, n: int, percentiles: list[float]) -> dict[float, int]:
    """What `h.get_value_at_percentile` returns, for many percentiles in one
    pass over the non-empty buckets (each call would walk all of them)."""
    wanted = sorted(set(percentiles))
    need = [max(1, int(min(q, 100.0) * n / 100 + 0.5)) for q in wanted]  # as hdrh does
    out: dict[float, int] = {}
    i = cum = 0
    for index, count in ((j, c) for j, c in enumerate(list(h.counts)) if c):
        cum += count
        while i < len(wanted) and cum >= need[i]:
            v = h.get_value_from_index(index)
            out[wanted[i]] = (h.get_highest_equivalent_value(v) if wanted[i]
                              else h.get_lowest_equivalent_value(v))
            i += 1
        if i == len(wanted):
            break
    for q in wanted[i:]:
        out[q] = h.get_max_value()
    return out


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    i = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[i]


@attrs.define
class _System:
    """One measured server behind one transport, in the latency matrix."""

    transport: str  # unix | ws
    label: str
    role: str  # nexusd | floor | asyncio | redis
    server: Server
    target_key: str
    writer: str = ""


class Scenarios:
    def __init__(self, procs: Processes, plan: Plan, say: Callable[[str], None]) -> None:
        self.procs = procs
        self.plan = plan
        self.say = say
        self.pad = "x" * plan.pad
        self._writers: Worker | None = None
        self._subscribers: Worker | None = None
        self._open: set[str] = set()  # writers held by the current writer process

    @property
    def writers(self) -> Worker:
        if self._writers is None:
            self._writers = self.procs.worker("writer")
        return self._writers

    @property
    def subscribers(self) -> Worker:
        if self._subscribers is None:
            self._subscribers = self.procs.worker("subscriber")
        return self._subscribers

    def _failed(self, what: str, exc: BenchError, **row: Any) -> dict[str, Any]:
        """A measurement that failed: said, recorded, and the client
        processes replaced (they may be mid-command) before the run goes on."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        self.say(f"  {what}: FAILED: {first}")
        for w in (self._writers, self._subscribers):
            if w is not None:
                w.stop()
        self._writers = self._subscribers = None
        self._open.clear()
        row["error"] = first
        return row

    # ----------------------------------------------------------------- latency

    def latency(self, nexusd: Server, relay: Server, ws_relay: Server,
                redis: Server | None) -> list[dict[str, Any]]:
        plan = self.plan
        systems = [_System("unix", "nexusd", "nexusd", nexusd, "unix"),
                   _System("unix", "trio relay", "floor", relay, "unix")]
        if redis is not None:
            systems.append(_System("unix", "redis", "redis", redis, "unix"))
        systems += [_System("ws", "nexusd", "nexusd", nexusd, "ws"),
                    _System("ws", "nexusd json", "nexusd-json", nexusd, "wsjson"),
                    _System("ws", "trio relay", "floor", relay, "ws"),
                    _System("ws", "websockets relay", "asyncio", ws_relay, "ws")]
        if redis is not None and plan.redis_tcp:
            systems.append(_System("ws", "redis (tcp)", "redis", redis, "tcp"))
        # One measured session per server, shared by its transports, so that
        # "N active sessions" is exactly N on every server.
        sessions: dict[str, tuple[str, str]] = {}

        def writer_for(system: _System) -> tuple[str, str]:
            if system.writer not in self._open:
                shared = sessions.get(system.server.name)
                reply = self.writers.call(
                    "open_writer", name=system.writer,
                    target=system.server.targets[system.target_key].to_dict(),
                    session_id=shared[0] if shared else None,
                    token=shared[1] if shared else None)
                sessions.setdefault(system.server.name,
                                    (reply["session_id"], reply["token"]))
                self._open.add(system.writer)
            return sessions[system.server.name]

        for i, system in enumerate(systems):
            system.writer = f"lat{i}"
        keeper = self.procs.worker("keeper")
        keep_on = {nexusd.name: "unix", relay.name: "unix", ws_relay.name: "ws"}
        if redis is not None:
            keep_on[redis.name] = "unix"
        servers = {s.server.name: s.server for s in systems}
        rows = []
        for n in plan.sessions:
            for name, server in servers.items():
                r = keeper.call("keep", timeout=600, name=name,
                                target=server.targets[keep_on[name]].to_dict(), count=n - 1)
                self.say(f"  {name}: {n:,} active sessions ({n - 1:,} kept by a subscriber "
                         f"each, set up in {r['elapsed']:.1f}s)")
            for k in plan.subscribers:
                for system in systems:
                    what = (f"{system.transport:4} {system.label:17} sessions={n:<6,} "
                            f"subs={k:<3}")
                    t0 = time.monotonic()
                    try:
                        sid, token = writer_for(system)
                        row = self._latency_once(system, sid, token, k)
                    except BenchError as exc:
                        row = self._failed(what, exc, transport=system.transport,
                                           system=system.label, role=system.role,
                                           subscribers=k)
                    else:
                        self.say(f"  {what} p50={row.get('p50', 0):8.1f}µs "
                                 f"p99={row.get('p99', 0):8.1f}µs "
                                 f"({time.monotonic() - t0:.1f}s)")
                    row["sessions"] = n
                    rows.append(row)
        return rows

    def _latency_once(self, system: _System, sid: str, token: str, k: int) -> dict[str, Any]:
        plan = self.plan
        count = plan.warmup + plan.samples
        duration = count / plan.rate
        target = system.server.targets[system.target_key]
        cid = self.subscribers.start("subscribe", target=target.to_dict(),
                                     sessions=[[sid, token]], k=k, expected=count,
                                     skip=plan.warmup, timeout_s=duration + 30)
        self.subscribers.wait(cid, "ready", timeout=60)
        cpu0 = system.server.cpu()
        wrote = self.writers.call("write", timeout=duration + 60, name=system.writer,
                                  rate=plan.rate, count=count, pad=self.pad,
                                  warmup=plan.warmup, timeout_s=duration + 30)
        cpu1 = system.server.cpu()
        got = self.subscribers.wait(cid, timeout=duration + 60)
        row: dict[str, Any] = {
            "transport": system.transport, "system": system.label, "role": system.role,
            "subscribers": k, "writes": count, "rate": plan.rate,
            "lagged": got["lagged"], "complete": got["complete"],
            "server_cpu_us_per_write": (cpu1 - cpu0) / count * 1e6,
            "late_max_us": wrote["late_max_ns"] / 1e3,
            "hist": got["hist"],
        }
        row.update(summarize(got["hist"]))
        ack = summarize(wrote["ack_hist"])
        row["ack_p50"], row["ack_p99"] = ack.get("p50"), ack.get("p99")
        return row

    # -------------------------------------------------------------- throughput

    def throughput(self, nexusd: Server, relay: Server) -> list[dict[str, Any]]:
        plan = self.plan
        systems: list[tuple[str, str, Server]] = [("nexusd", "nexusd", nexusd),
                                                  ("trio relay", "floor", relay)]
        cases = [("one writer", 1, plan.tp_window),
                 (f"{plan.many_writers} writers", plan.many_writers,
                  max(1, plan.tp_window // 4))]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _round in range(plan.tp_rounds):
            for case, writers, window in cases:
                for label, role, server in systems:
                    info = {"case": case, "system": label, "role": role, "writers": writers,
                            "window": window}
                    try:
                        r = self._throughput_once(server, writers, window)
                    except BenchError as exc:
                        r = self._failed(f"{case} {label}", exc)
                    else:
                        self.say(f"  {case:10} {label:11} {r['acked_per_s']:9,.0f} acked "
                                 f"writes/s, {r['delivered_per_s']:9,.0f} deliveries/s, "
                                 f"server CPU {r['server_cpu']:.0%}")
                    r.update(info)
                    runs.setdefault((case, label), []).append(r)
        rows = []
        for results in runs.values():
            good = [r for r in results if "error" not in r]
            if not good:
                rows.append(results[0])
                continue
            # The median round, by acknowledged writes/s.
            good.sort(key=lambda r: r["acked_per_s"])
            row = dict(good[len(good) // 2])
            row["rounds"] = [r["acked_per_s"] for r in good]
            row["failed_rounds"] = len(results) - len(good)
            rows.append(row)
        return rows

    def _throughput_once(self, server: Server, writers: int, window: int) -> dict[str, Any]:
        plan = self.plan
        target = server.targets["unix"]
        names = [f"tp{i}" for i in range(writers)]
        sessions = []
        for name in names:
            r = self.writers.call("open_writer", name=name, target=target.to_dict())
            self._open.add(name)
            sessions.append([r["session_id"], r["token"]])
        start = time.monotonic_ns() + 300_000_000
        m0 = start + int(plan.tp_warm_s * 1e9)
        m1 = m0 + int(plan.tp_measure_s * 1e9)
        stop = m1 + 100_000_000
        total = (stop - time.monotonic_ns()) / 1e9
        sub = self.subscribers.start("subscribe", target=target.to_dict(), sessions=sessions,
                                     k=1, expected=1 << 62, mode="count", window=[m0, m1],
                                     timeout_s=total + 10)
        self.subscribers.wait(sub, "ready", timeout=60)
        cid = self.writers.start("pipeline", names=names, window=window, pad=self.pad,
                                 start_ns=start, measure=[m0, m1], stop_ns=stop)
        _sleep_until(m0)
        cpu0 = server.cpu()
        _sleep_until(m1)
        cpu1 = server.cpu()
        wrote = self.writers.wait(cid, timeout=total + 30)
        got = self.subscribers.wait(sub, timeout=total + 30)
        for name in names:
            self.writers.call("close", name=name)
            self._open.discard(name)
        seconds = plan.tp_measure_s
        return {"acked_per_s": wrote["acked_in_window"] / seconds,
                "delivered_per_s": got["counted"] / seconds,
                "server_cpu": (cpu1 - cpu0) / seconds, "lagged": got["lagged"],
                "seconds": seconds}

    # -------------------------------------------------------------------- HTTP

    def http(self, nexusd: Server, floor: Server) -> list[dict[str, Any]]:
        """Paced writes as in `latency`, one subscriber, through the HTTP
        channel: PUT over HTTP to a Unix subscriber, a Unix write to an
        event-stream subscriber, and PUTs to the bare endpoint (its round
        trip only: the floor of any HTTP write)."""
        cases = [("HTTP PUT -> Unix subscriber", "nexusd", nexusd, "http", "unix"),
                 ("Unix write -> SSE subscriber", "nexusd", nexusd, "unix", "http"),
                 ("bare hypercorn+Starlette PUT", "floor", floor, "http", None)]
        rows = []
        for label, role, server, write_via, watch_via in cases:
            row: dict[str, Any] = {"case": label, "role": role, "write_via": write_via}
            try:
                row.update(self._http_once(server, write_via, watch_via))
            except BenchError as exc:
                row = self._failed(label, exc, **row)
            else:
                sync = f"sync p50 {row['p50']:8.1f}µs, " if watch_via else ""
                self.say(f"  {label:30} {sync}round trip p50 {row['ack_p50']:8.1f}µs")
            rows.append(row)
        rows.append({"case": "Kailash Nexus HTTP workflow execute (published)",
                     "role": "reference", "write_via": "http",
                     "ack_p50": KAILASH_HTTP_MS * 1000})
        return rows

    def _http_once(self, server: Server, write_via: str,
                   watch_via: str | None) -> dict[str, Any]:
        plan = self.plan
        count = plan.warmup + plan.samples
        duration = count / plan.http_rate
        name = f"http-{write_via}"
        w = self.writers.call("open_writer", name=name,
                              target=server.targets[write_via].to_dict())
        self._open.add(name)
        cid = None
        if watch_via is not None:
            cid = self.subscribers.start("subscribe", target=server.targets[watch_via].to_dict(),
                                         sessions=[[w["session_id"], w["token"]]], k=1,
                                         expected=count, skip=plan.warmup,
                                         timeout_s=duration + 30)
            self.subscribers.wait(cid, "ready", timeout=60)
        cpu0 = server.cpu()
        wrote = self.writers.call("write", timeout=duration + 60, name=name,
                                  rate=plan.http_rate, count=count, pad=self.pad,
                                  warmup=plan.warmup, timeout_s=duration + 30)
        cpu1 = server.cpu()
        self.writers.call("close", name=name)
        self._open.discard(name)
        row: dict[str, Any] = {"writes": count, "rate": plan.http_rate,
                               "server_cpu_us_per_write": (cpu1 - cpu0) / count * 1e6}
        ack = summarize(wrote["ack_hist"])
        row["ack_p50"], row["ack_p99"] = ack.get("p50"), ack.get("p99")
        if cid is not None:
            got = self.subscribers.wait(cid, timeout=duration + 60)
            row.update(lagged=got["lagged"], complete=got["complete"], hist=got["hist"])
            row.update(summarize(got["hist"]))
        return row

    # ------------------------------------------------------------------ fan-out

    def fanout(self, nexusd: Server, relay: Server,
               per_subscriber: Server) -> list[dict[str, Any]]:
        rows = []
        for label, role, server in [("nexusd", "nexusd", nexusd),
                                    ("relay, encode per subscriber", "per_subscriber",
                                     per_subscriber),
                                    ("trio relay", "floor", relay)]:
            try:
                row = self._fanout_once(server)
            except BenchError as exc:
                row = self._failed(label, exc, subscribers=self.plan.fanout_subscribers)
            else:
                self.say(f"  {label:29} last of {row['subscribers']} after "
                         f"{row['last_p50']:8.1f}µs (p50), first after "
                         f"{row['first_p50']:7.1f}µs")
            row.update(system=label, role=role)
            rows.append(row)
        return rows

    def _fanout_once(self, server: Server) -> dict[str, Any]:
        plan = self.plan
        target = server.targets["unix"]
        w = self.writers.call("open_writer", name="fan", target=target.to_dict())
        self._open.add("fan")
        count = plan.fanout_warmup + plan.fanout_writes
        duration = count / plan.fanout_rate
        k = plan.fanout_subscribers
        cid = self.subscribers.start("subscribe", target=target.to_dict(),
                                     sessions=[[w["session_id"], w["token"]]], k=k,
                                     expected=count, mode="fanout",
                                     skip=plan.fanout_warmup, timeout_s=duration + 30)
        self.subscribers.wait(cid, "ready", timeout=60)
        cpu0 = server.cpu()
        self.writers.call("write", timeout=duration + 60, name="fan",
                          rate=plan.fanout_rate, count=count, pad=self.pad,
                          warmup=plan.fanout_warmup, timeout_s=duration + 30)
        cpu1 = server.cpu()
        got = self.subscribers.wait(cid, timeout=duration + 60)
        self.writers.call("close", name="fan")
        self._open.discard("fan")
        last = [v / 1e3 for v in got["to_last_ns"]]
        first = [v / 1e3 for v in got["to_first_ns"]]
        row: dict[str, Any] = {
            "subscribers": k, "writes": len(last),
            "incomplete_writes": got["incomplete_writes"], "lagged": got["lagged"],
            "server_cpu_us_per_write": (cpu1 - cpu0) / count * 1e6,
            "first_p50": _percentile(first, 50),
        }
        for name, pct in PERCENTILES.items():
            if name != "p99.9":
                row[f"last_{name}"] = _percentile(last, pct)
        row["deliveries_per_s"] = k / (row["last_p50"] / 1e6) if last else 0.0
        return row

    # ------------------------------------------------------------------- memory

    def memory(self, redis_available: bool, durability: str) -> dict[str, Any]:
        """RSS growth of fresh servers (started side by side, measured one at
        a time) per active session and per idle connection; then nexusd with
        many dormant sessions."""
        plan = self.plan
        procs = self.procs
        out: dict[str, Any] = {"sessions": [], "connections": []}
        holder = procs.worker("holder")
        warm = 100
        labels = ["nexusd", "trio relay"]
        for label, server in zip(labels, procs.start(procs.nexusd, procs.relay), strict=True):
            assert server is not None
            row: dict[str, Any] = {"system": label, "sessions": plan.mem_sessions}
            try:
                target = server.targets["unix"].to_dict()
                holder.call("keep", name="m", target=target, count=warm)
                rss0 = _settled_rss(server)
                holder.call("keep", timeout=600, name="m", target=target,
                            count=warm + plan.mem_sessions)
                rss1 = _settled_rss(server)
                holder.call("close", name="m")
            except BenchError as exc:
                holder.stop()
                holder = procs.worker("holder")
                out["sessions"].append(self._failed(f"{label} sessions", exc, **row))
                continue
            finally:
                procs.stop(server)
            row.update(rss_before=rss0, rss_after=rss1,
                       bytes_per_session=(rss1 - rss0) / plan.mem_sessions)
            out["sessions"].append(row)
            self.say(f"  {label:16} {row['bytes_per_session'] / 1024:6.1f} KiB per active "
                     "session")
        specs: list[tuple[str, str, Callable[[], Server | None]]] = [
            ("nexusd", "unix", procs.nexusd), ("nexusd", "ws", procs.nexusd),
            ("trio relay", "unix", procs.relay), ("trio relay", "ws", procs.relay),
            ("websockets relay", "ws", procs.ws_relay)]
        if redis_available:
            specs.append(("redis", "unix", lambda: procs.redis(durability)))
            if plan.redis_tcp:
                specs.append(("redis", "tcp", lambda: procs.redis(durability)))
        servers = procs.start(*(factory for _, _, factory in specs))
        for (label, transport, _), server in zip(specs, servers, strict=True):
            assert server is not None
            row = {"system": label, "transport": transport,
                   "connections": plan.mem_connections}
            try:
                target = server.targets[transport].to_dict()
                holder.call("idle", name="warm", target=target, count=20)
                rss0 = _settled_rss(server)
                holder.call("idle", timeout=600, name="m", target=target,
                            count=plan.mem_connections)
                rss1 = _settled_rss(server)
                holder.call("release", name="m")
                holder.call("release", name="warm")
            except BenchError as exc:
                holder.stop()
                holder = procs.worker("holder")
                out["connections"].append(
                    self._failed(f"{label} {transport} connections", exc, **row))
                continue
            finally:
                procs.stop(server)
            row.update(rss_before=rss0, rss_after=rss1,
                       bytes_per_connection=(rss1 - rss0) / plan.mem_connections)
            out["connections"].append(row)
            self.say(f"  {label:16} {transport:4} "
                     f"{row['bytes_per_connection'] / 1024:6.1f} KiB per idle connection")
        try:
            out["dormant"] = self._dormant(holder)
        except BenchError as exc:
            out["dormant"] = self._failed("dormant sessions", exc)
        return out

    def _dormant(self, holder: Worker) -> dict[str, Any]:
        plan = self.plan
        hibernate = 1.0
        server = self.procs.nexusd("--hibernate-after", f"{hibernate:g}s")
        try:
            target = server.targets["unix"]
            holder.call("dormant", target=target.to_dict(), count=100)
            _wait_dormant(target, 100, 30)
            rss_fresh = _settled_rss(server)
            t0 = time.monotonic()
            cid = holder.start("dormant", target=target.to_dict(), count=plan.dormant)
            peak = rss_fresh
            while True:
                peak = max(peak, server.rss())
                try:
                    created = holder.wait(cid, timeout=0.25)
                    break
                except BenchError as exc:
                    if "no 'result'" not in str(exc):
                        raise
            create_s = time.monotonic() - t0
            stats = _wait_dormant(target, 100 + plan.dormant, 120 + plan.dormant / 1000)
            peak = max(peak, server.rss())
            rss = _settled_rss(server)
        finally:
            self.procs.stop(server)
        row = {"sessions": created["count"], "hibernate_after_s": hibernate,
               "create_s": create_s, "rss_fresh": rss_fresh, "rss_peak": peak,
               "rss_dormant": rss, "sessions_active": stats["sessions_active"],
               "sessions_stored": stats["sessions_stored"],
               "bytes_per_dormant_session": (rss - rss_fresh) / max(1, created["count"])}
        self.say(f"  nexusd with {created['count']:,} dormant sessions: RSS "
                 f"{rss / 2**20:.1f} MiB (fresh {rss_fresh / 2**20:.1f} MiB, peak while "
                 f"creating {peak / 2**20:.1f} MiB)")
        return row


def _sleep_until(ns: int) -> None:
    delay = (ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _settled_rss(server: Server, quiet: float = 0.2, limit: float = 5.0) -> int:
    """The server's RSS once it has stopped changing for `quiet` seconds."""
    end = time.monotonic() + limit
    last = server.rss()
    while time.monotonic() < end:
        time.sleep(quiet)
        now = server.rss()
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def _wait_dormant(target: Any, stored: int, timeout: float) -> dict[str, Any]:
    """Waits until no session is active and `stored` are stored; the stats."""
    end = time.monotonic() + timeout
    while True:
        stats = nexus_stats(target)
        if stats["sessions_active"] == 0 and stats["sessions_stored"] >= stored:
            return stats
        if time.monotonic() > end:
            return stats
        time.sleep(0.25)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
