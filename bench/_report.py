"""What a bench run shows: the table, the verdicts against the project's
aims, the JSON and the latency plot."""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["aims", "machine", "plot", "table", "write_json"]

X = "\N{MULTIPLICATION SIGN}"

#: "p99 unchanged" allows this much growth, since a p99 moves between runs.
P99_TOLERANCE = 1.25


def machine() -> dict[str, Any]:
    """What the run ran on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "system": f"{platform.system()} {platform.release()}",
            "redis_server": shutil.which("redis-server")}


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


# ---------------------------------------------------------------- verdicts


def _by(rows: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _configs(results: dict[str, Any], transport: str) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    for r in results.get("latency", []):
        key = (r["sessions"], r["subscribers"])
        if r["transport"] == transport and key not in seen:
            seen.append(key)
    return seen


def _where(n: int, k: int) -> str:
    return f"{n:,} session{'s' * (n != 1)}, {k} subscriber{'s' * (k != 1)}"


def aims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each aim of the project, what this run measured for it, and whether it is met."""
    out = []
    lat = results.get("latency", [])

    def latency_aim(name: str, transport: str, role: str, field: str, limit: float) -> None:
        checks = []
        for n, k in _configs(results, transport):
            mine = _by(lat, transport=transport, sessions=n, subscribers=k, role="nexusd")
            base = _by(lat, transport=transport, sessions=n, subscribers=k, role=role)
            if mine and base:
                r = _ratio(mine.get(field), base.get(field))
                if r is not None:
                    checks.append((r, _where(n, k)))
        out.append(_verdict(name, checks, limit))

    latency_aim(f"Unix sync p50 ≤ 1.2{X} the trio relay floor", "unix", "floor", "p50", 1.2)
    latency_aim(f"Unix sync p99 ≤ 2{X} the trio relay floor's p99", "unix", "floor", "p99", 2.0)
    latency_aim("WebSocket sync p50 no worse than the asyncio websockets relay", "ws",
                "asyncio", "p50", 1.0)
    floors = [r for n, k in _configs(results, "ws")
              if (a := _by(lat, transport="ws", sessions=n, subscribers=k, role="floor"))
              and (b := _by(lat, transport="ws", sessions=n, subscribers=k, role="asyncio"))
              and (r := _ratio(a.get("p50"), b.get("p50"))) is not None]
    if floors:
        out[-1]["note"] = (f"the trio relay over trio-websocket measures {min(floors):.2f}"
                           f" to {max(floors):.2f}{X} on this aim")
    tp = results.get("throughput", [])
    checks = []
    for case in dict.fromkeys(r["case"] for r in tp):
        mine = _by(tp, case=case, role="nexusd")
        base = _by(tp, case=case, role="floor")
        if mine and base:
            r = _ratio(mine.get("acked_per_s"), base.get("delivered_per_s"))
            if r is not None:
                checks.append((r, case))
    out.append(_verdict(f"Acknowledged writes/s ≥ 0.8{X} the relay's forwarded messages/s",
                        checks, 0.8, at_least=True))
    fan = results.get("fanout", [])
    mine = _by(fan, role="nexusd")
    base = _by(fan, role="per_subscriber")
    checks = []
    if mine and base:
        r = _ratio(mine.get("last_p50"), base.get("last_p50"))
        if r is not None:
            checks.append((r, "time until the last receives, p50"))
    k = mine["subscribers"] if mine else 100
    out.append(_verdict(f"Fan-out to {k} subscribers in ≤ 0.5{X} the time of a relay that "
                        "encodes per subscriber", checks, 0.5))
    floor = _by(fan, role="floor")
    if floor and base and (r := _ratio(floor.get("last_p50"), base.get("last_p50"))):
        out[-1]["note"] = (f"the trio relay, which encodes once, measures {r:.2f}{X} on this "
                           "aim: the time goes to delivering, not to encoding")
    sessions = sorted({r["sessions"] for r in lat})
    if len(sessions) > 1:
        lo, hi = sessions[0], sessions[-1]
        checks = []
        for transport in ("unix", "ws"):
            for k in sorted({r["subscribers"] for r in lat}):
                a = _by(lat, transport=transport, sessions=lo, subscribers=k, role="nexusd")
                b = _by(lat, transport=transport, sessions=hi, subscribers=k, role="nexusd")
                if a and b:
                    r = _ratio(b.get("p99"), a.get("p99"))
                    if r is not None:
                        checks.append((r, f"{transport}, {k} subscriber{'s' * (k != 1)}"))
        out.append(_verdict(f"p99 unchanged from {lo:,} to {hi:,} active sessions "
                            f"(within {P99_TOLERANCE:g}{X})", checks, P99_TOLERANCE))
    durability = results.get("meta", {}).get("durability")
    if durability == "memory":
        for v in out[:2]:
            v["note"] = ("measured at durability 'memory', the daemon's current default: "
                         "its acknowledgements are not durable, which the aim requires")
    return out


def _verdict(name: str, checks: list[tuple[float, str]], limit: float,
             at_least: bool = False) -> dict[str, Any]:
    def ok(r: float) -> bool:
        return r >= limit if at_least else r <= limit

    if not checks:
        return {"aim": name, "limit": limit, "at_least": at_least, "met": None, "checks": []}
    worst = min(checks) if at_least else max(checks)
    return {"aim": name, "limit": limit, "at_least": at_least,
            "met": all(ok(r) for r, _ in checks),
            "checks": [{"ratio": r, "where": w, "met": ok(r)} for r, w in checks],
            "headline": checks[0], "worst": worst}


# ------------------------------------------------------------------- table


def _f(v: float | None, width: int = 8, digits: int = 1) -> str:
    if v is None or v != v:
        return " " * (width - 1) + "-"
    return f"{v:{width},.{digits}f}"


def _x(r: float | None, width: int = 7) -> str:
    if r is None:
        return " " * (width - 1) + "-"
    return f"{r:{width - 1}.2f}{X}"


def _mark(met: bool) -> str:
    return "ok" if met else "MISS"


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    plan = meta["plan"]
    lines: list[str] = []
    add = lines.append
    m = meta["machine"]
    add(f"nexusd bench — {'QUICK mode: ' + meta['quick_note'] if plan['quick'] else 'full run'}")
    add(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, "
        f"{m['implementation']} {m['python']}, {m['system']}; load average "
        f"{meta['load_before']:.2f} before, {meta['load_after']:.2f} after")
    add(f"nexusd {meta['nexusd_version']} at its default durability: {meta['durability']!r}; "
        f"redis: {meta['redis']}")
    if meta["load_before"] > 0.5:
        add("WARNING: the machine was busy when the run started (load average "
            f"{meta['load_before']:.2f}); absolute figures and tails are inflated by other "
            "work, ratios less so (every row is measured in the same run, interleaved).")

    lat = results.get("latency", [])
    if lat:
        add("")
        add(f"1. Sync latency, µs: writer's send -> subscriber's receipt, one way "
            f"({plan['samples']:,} writes per row at {plan['rate']:,.0f}/s after "
            f"{plan['warmup']:,} warm-up; {plan['pad']}-byte padding; every (write, subscriber) "
            "in one HDR histogram). 'nexusd ÷' is nexusd's figure over that row's.")
        for transport, title in (("unix", "Unix socket"), ("ws", "WebSocket")):
            rows = [r for r in lat if r["transport"] == transport]
            if not rows:
                continue
            add("")
            add(f"{title:<43}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'ack p50':>9}"
                f" | {'nexusd ÷ p50':>12}{'p99':>7}  aim")
            for n, k in _configs(results, transport):
                block = [r for r in rows if r["sessions"] == n and r["subscribers"] == k]
                mine = _by(block, role="nexusd")
                head = f"{n:,} session{'s' * (n != 1)}, {k} sub{'s' * (k != 1)}"
                for i, r in enumerate(block):
                    label = r["system"] + (" (floor)" if r["role"] == "floor" else "")
                    nums = "".join(_f(r.get(q), 9) for q in ("p50", "p90", "p99", "p99.9",
                                                              "ack_p50"))
                    line = f"{head if i == 0 else '':<24}{label:<19}{nums}"
                    if "error" in r:
                        add(f"{head if i == 0 else '':<24}{label:<19}  FAILED: {r['error']}")
                        continue
                    flags = []
                    if r.get("lagged"):
                        flags.append(f"{r['lagged']} lagged")
                    if r.get("complete", r["subscribers"]) < r["subscribers"]:
                        flags.append("incomplete")
                    if r is mine or mine is None or r["role"] == "nexusd-json":
                        add(line + " |" + ("  " + ", ".join(flags) if flags else ""))
                        continue
                    r50 = _ratio(mine.get("p50"), r.get("p50"))
                    r99 = _ratio(mine.get("p99"), r.get("p99"))
                    aim = ""
                    if transport == "unix" and r["role"] == "floor" and r50 and r99:
                        aim = (f"p50 ≤1.2{X} {_mark(r50 <= 1.2)}, "
                               f"p99 ≤2{X} {_mark(r99 <= 2.0)}")
                    if transport == "ws" and r["role"] == "asyncio" and r50:
                        aim = f"p50 ≤1{X} {_mark(r50 <= 1.0)}"
                    if flags:
                        aim = (aim + "; " if aim else "") + ", ".join(flags)
                    add(f"{line} | {_x(r50, 12)}{_x(r99, 7)}  {aim}")

    tp = results.get("throughput", [])
    if tp:
        add("")
        add(f"2. Throughput, Unix socket: pipelined writes (one writer keeps {plan['tp_window']} "
            f"unanswered; {plan['many_writers']} writers keep {plan['tp_window'] // 4} each, "
            "one session each), one subscriber per session; "
            f"{plan['tp_measure_s']:g}s measured after {plan['tp_warm_s']:g}s, median of "
            f"{plan['tp_rounds']} round{'s' * (plan['tp_rounds'] != 1)}. 'nexusd ÷' is "
            "nexusd's acknowledged writes/s over the row's forwarded (delivered) messages/s.")
        add(f"{'':<12}{'system':<13}{'acked/s':>10}{'delivered/s':>13}{'server CPU':>12}"
            f" | {'nexusd ÷':>9}  aim")
        for case in dict.fromkeys(r["case"] for r in tp):
            block = [r for r in tp if r["case"] == case]
            mine = _by(block, role="nexusd")
            for i, r in enumerate(block):
                if "error" in r:
                    add(f"{case if i == 0 else '':<12}{r['system']:<13}  FAILED: {r['error']}")
                    continue
                line = (f"{case if i == 0 else '':<12}{r['system']:<13}"
                        f"{r['acked_per_s']:>10,.0f}{r['delivered_per_s']:>13,.0f}"
                        f"{r['server_cpu']:>11.0%} ")
                if r is mine or mine is None:
                    add(line + "|" + (f"  {r['lagged']} lagged" if r.get("lagged") else ""))
                    continue
                ratio = _ratio(mine.get("acked_per_s"), r["delivered_per_s"])
                aim = ""
                if r["role"] == "floor" and ratio is not None:
                    aim = f"≥0.8{X} {_mark(ratio >= 0.8)}"
                    if r["server_cpu"] < 0.85:
                        aim += (f" (the relay used {r['server_cpu']:.0%} of a core: it was "
                                "held back by the clients, so this ratio flatters nexusd)")
                add(f"{line}| {_x(ratio, 9)}  {aim}")

    fan = results.get("fanout", [])
    if fan:
        k = fan[0]["subscribers"]
        add("")
        add(f"3. Fan-out, Unix socket: one write to {k} subscribers, µs from the writer's "
            f"send until the last (and the first) receives it; {plan['fanout_writes']} writes at "
            f"{plan['fanout_rate']:g}/s. deliveries/s = {k} / (last p50).")
        add(f"{'system':<31}{'last p50':>9}{'p90':>9}{'p99':>9}{'first p50':>10}"
            f"{'deliveries/s':>13} | {'nexusd ÷':>9}  aim")
        mine = _by(fan, role="nexusd")
        for r in fan:
            if "error" in r:
                add(f"{r['system']:<31}  FAILED: {r['error']}")
                continue
            line = (f"{r['system']:<31}{_f(r['last_p50'], 9)}{_f(r['last_p90'], 9)}"
                    f"{_f(r['last_p99'], 9)}{_f(r['first_p50'], 10)}"
                    f"{r['deliveries_per_s']:>13,.0f} ")
            if r is mine or mine is None:
                add(line + "|")
                continue
            ratio = _ratio(mine.get("last_p50"), r["last_p50"])
            aim = f"≤0.5{X} {_mark(ratio <= 0.5)}" if r["role"] == "per_subscriber" and ratio \
                else ""
            add(f"{line}| {_x(ratio, 9)}  {aim}")

    mem = results.get("memory")
    if mem:
        add("")
        add("4. Memory, RSS of the server process (growth over a warmed-up server, divided "
            "by the count)")
        mine = _by(mem["sessions"], system="nexusd")
        for r in mem["sessions"]:
            if "error" in r:
                add(f"  per active session, {r['system']}: FAILED: {r['error']}")
                continue
            ratio = "" if r is mine or mine is None else \
                "   nexusd ÷ " + _x(_ratio(mine.get("bytes_per_session"),
                                           r["bytes_per_session"]), 0)
            add(f"  per active session ({r['sessions']:,}, one subscriber each) "
                f"{r['system']:<17}{r['bytes_per_session'] / 1024:8.2f} KiB{ratio}")
        for r in mem["connections"]:
            if "error" in r:
                add(f"  per idle connection, {r['transport']} {r['system']}: FAILED: "
                    f"{r['error']}")
                continue
            mine = _by(mem["connections"], system="nexusd", transport=r["transport"])
            ratio = "" if r is mine or mine is None else \
                "   nexusd ÷ " + _x(_ratio(mine.get("bytes_per_connection"),
                                           r["bytes_per_connection"]), 0)
            add(f"  per idle connection ({r['connections']:,}), {r['transport']:<5}"
                f"{r['system']:<24}{r['bytes_per_connection'] / 1024:8.2f} KiB{ratio}")
        d = mem.get("dormant")
        if d and "error" in d:
            add(f"  dormant sessions: FAILED: {d['error']}")
        elif d:
            add(f"  nexusd with {d['sessions']:,} dormant sessions (hibernated after "
                f"{d['hibernate_after_s']:g}s; {d['sessions_active']} still active, "
                f"{d['sessions_stored']:,} stored): RSS {d['rss_dormant'] / 2**20:.1f} MiB vs "
                f"{d['rss_fresh'] / 2**20:.1f} MiB fresh "
                f"({_x(_ratio(d['rss_dormant'], d['rss_fresh']), 0).strip()}), "
                f"{d['bytes_per_dormant_session']:,.0f} bytes per dormant session; peak while "
                f"creating {d['rss_peak'] / 2**20:.1f} MiB")

    http = results.get("http")
    if http:
        add("")
        rate = next((r["rate"] for r in http if "rate" in r), 0)
        add(f"5. HTTP channel, µs: sync (writer's send -> subscriber's receipt) and the "
            f"writer's round trip (request -> response); writes paced at {rate:g}/s on one "
            "kept-alive connection, as in 1. otherwise; '÷ floor' is the round trip over "
            "that of the bare hypercorn+Starlette endpoint")
        add(f"{'case':<50}{'sync p50':>10}{'p99':>10}{'rtt p50':>10}{'p99':>10} | rtt ÷ floor")
        floor = _by(http, role="floor")
        for r in http:
            if "error" in r:
                add(f"{r['case']:<50}FAILED: {r['error']}")
                continue
            sync = f"{_f(r.get('p50'), 10)}{_f(r.get('p99'), 10)}" if "p50" in r else " " * 20
            # Only an HTTP request's round trip compares with the floor's.
            ratio = "" if r is floor or floor is None or r.get("write_via") != "http" else \
                _x(_ratio(r.get("ack_p50"), floor.get("ack_p50")), 7)
            add(f"{r['case']:<50}{sync}{_f(r.get('ack_p50'), 10)}{_f(r.get('ack_p99'), 10)} | "
                f"{ratio}")

    runs = results.get("workflows")
    if runs:
        add("")
        add("6. Workflows, µs: one worker process (nexus_client's Worker), runs journaled at "
            "the default durability; dispatch: run sent -> the worker's function starts; "
            "progress: the worker's report sent -> the requester's progress event; execute: "
            "run sent -> result received, no steps")
        add(f"{'case':<50}{'p50':>10}{'p90':>10}{'p99':>10} | ÷ Kailash")
        reference = _by(runs, role="reference")
        for r in runs:
            if "error" in r:
                add(f"{r['case']:<50}FAILED: {r['error']}")
            elif "runs_per_s" in r:
                add(f"{r['case']:<50}{r['runs_per_s']:10.0f} runs/s over "
                    f"{r['window_s']:g}s")
            else:
                ratio = "" if r is reference or reference is None or \
                    not r["case"].startswith("execute") else \
                    _x(_ratio(r.get("p50"), reference.get("p50")), 7)
                add(f"{r['case']:<50}{_f(r.get('p50'), 10)}{_f(r.get('p90'), 10)}"
                    f"{_f(r.get('p99'), 10)} | {ratio}")

    verdicts = results.get("aims", [])
    if verdicts:
        add("")
        add("Aims")
        for v in verdicts:
            if v["met"] is None:
                add(f"  n/a   {v['aim']}: not measured (a measurement failed or was skipped)")
                continue
            head_r, head_w = v["headline"]
            worst_r, worst_w = v["worst"]
            n_met = sum(c["met"] for c in v["checks"])
            text = f"  {'met ' if v['met'] else 'MISS'}  {v['aim']}: {head_r:.2f}{X} ({head_w})"
            if len(v["checks"]) > 1:
                text += (f"; worst {worst_r:.2f}{X} ({worst_w}); met in {n_met} of "
                         f"{len(v['checks'])}")
            add(text)
            if v.get("note"):
                add(f"        note: {v['note']}")
    return "\n".join(lines)


# -------------------------------------------------------------------- files


def write_json(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    stamped = out / f"bench-{results['meta']['started'].replace(':', '').replace('-', '')}.json"
    stamped.write_text(text)
    (out / "latest.json").write_text(text)
    return stamped


def plot(results: dict[str, Any], path: Path) -> bool:
    """Latency percentile curves per transport; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except ImportError:
        return False
    lat = results.get("latency", [])
    sessions = sorted({r["sessions"] for r in lat})
    if not lat:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), sharey=True)
    colours = {"nexusd": "C3", "floor": "C0", "asyncio": "C2", "redis": "C7"}

    def x_of(q: float) -> float:
        return 1.0 / max(1e-6, 1.0 - q / 100.0)

    def draw(ax: Any, rows: list[dict[str, Any]], label_of: Any, style_of: Any) -> None:
        for r in rows:
            curve = r.get("curve") or []
            if not curve:
                continue
            xs = [x_of(q) for q, _ in curve]
            ys = [v for _, v in curve]
            ax.plot(xs, ys, label=label_of(r), **style_of(r))

    titles = {"unix": "Unix socket", "ws": "WebSocket"}
    for ax, transport in zip(axes[:2], ("unix", "ws"), strict=True):
        rows = [r for r in lat if r["transport"] == transport and r["sessions"] == sessions[0]]
        draw(ax, rows,
             lambda r: f"{r['system']}, {r['subscribers']} sub{'s' * (r['subscribers'] != 1)}",
             lambda r: {"color": colours.get(r["role"], "k"),
                        "linestyle": "-" if r["subscribers"] == 1 else "--",
                        "linewidth": 2.2 if r["role"] == "nexusd" else 1.4})
        ax.set_title(f"{titles[transport]}, {sessions[0]:,} active session"
                     f"{'s' * (sessions[0] != 1)}")
    rows = [r for r in lat if r["transport"] == "unix" and r["subscribers"] == 1
            and r["role"] in ("nexusd", "floor")]
    draw(axes[2], rows,
         lambda r: f"{r['system']}, {r['sessions']:,} session{'s' * (r['sessions'] != 1)}",
         lambda r: {"color": colours[r["role"]],
                    "linestyle": [":", "--", "-"][min(2, sessions.index(r["sessions"]))]
                    if len(sessions) > 2 else ("-" if r["sessions"] == sessions[0] else "--")})
    axes[2].set_title("Unix socket, 1 subscriber, by active sessions")
    ticks = [50, 90, 99, 99.9, 99.99]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator([x_of(q) for q in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda x, _pos: f"{100 * (1 - 1 / x):g}%"))
        ax.set_xlim(1.0, x_of(99.99))
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("one-way sync latency, µs (log)")
    meta = results["meta"]
    fig.suptitle(f"nexusd sync latency vs baselines ({'quick' if meta['plan']['quick'] else 'full'}"
                 f" run {meta['started']}, durability {meta['durability']!r}; "
                 f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(results: dict[str, Any]) -> str:
    """The README's "Performance" section for this run."""
    meta = results["meta"]
    m = meta["machine"]
    mode = "quick run (`--quick`)" if meta["plan"]["quick"] else "full run"
    verdicts = results.get("aims", [])
    lines = [
        "## Performance",
        "",
        "Measured by `python -m bench` (see `bench/__init__.py` for what each figure means "
        "and how it is taken). Every nexusd figure is printed beside a baseline measured in "
        "the same run, with the same client processes and payloads: a minimal trio relay "
        "over the same transports (the floor any trio daemon pays), an asyncio "
        "`websockets` relay, and Redis (HSET + PUBLISH).",
        "",
        f"Latest {mode}: {meta['started']}, commit {meta['commit']}, nexusd "
        f"{meta['nexusd_version']} at its default durability **{meta['durability']}**; "
        f"{meta['seconds']:.0f} s.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB RAM, "
        f"{m['implementation']} {m['python']}, {m['system']}; load average "
        f"{meta['load_before']:.2f} at the start.",
        "",
        "Reproduce:",
        "",
        "```sh",
        "pip install -e '.[bench]'      # and redis-server for the Redis baseline",
        "python -m bench                # full run, several minutes",
        "python -m bench --quick        # under a minute, a subset",
        "```",
        "",
        "Where the project stands against its aims:",
        "",
    ]
    for v in verdicts:
        if v["met"] is None:
            lines.append(f"- n/a — {v['aim']}: not measured")
            continue
        head_r, head_w = v["headline"]
        worst_r, worst_w = v["worst"]
        n_met = sum(c["met"] for c in v["checks"])
        text = f"- **{'met' if v['met'] else 'missed'}** — {v['aim']}: {head_r:.2f}{X} ({head_w})"
        if len(v["checks"]) > 1:
            text += f"; worst {worst_r:.2f}{X} ({worst_w}); met in {n_met} of {len(v['checks'])}"
        if v.get("note"):
            text += f" ({v['note']})"
        lines.append(text)
    lines += ["", "The table as the run printed it:", "", "```text", table(results), "```", ""]
    return "\n".join(lines)
