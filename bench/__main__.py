"""``python -m bench``: measure nexusd against its baselines, in one run.

    python -m bench --quick      # under a minute: a subset, fewer samples
    python -m bench              # everything (several minutes)

Starts what it needs (nexusd at its default durability, a trio relay, an
asyncio `websockets` relay, redis-server if installed, and the client
processes), measures, prints a table with every nexusd figure beside its
baseline as a ratio and a verdict against the project's aims, writes
``bench/results/latest.json`` (and a timestamped copy) and
``bench/results/latency.png``, and stops everything it started, Ctrl-C
included. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ._procs import BenchError, Processes, nexus_stats, redis_persistence
from ._report import aims, loadavg, machine, markdown, plot, table, write_json
from ._scenarios import Plan, Scenarios
from ._workflows import workflows

PHASES = ("throughput", "fanout", "latency", "http", "workflows", "memory")
RESULTS = Path(__file__).resolve().parent / "results"


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _quick_note(plan: Plan) -> str:
    full = Plan.make(quick=False)
    return (f"{plan.samples:,} samples per latency row (full: {full.samples:,}), "
            f"{' and '.join(f'{n:,}' for n in plan.sessions)} active sessions only (full: "
            f"{', '.join(f'{n:,}' for n in full.sessions)}), no Redis-over-TCP rows, "
            f"{plan.dormant:,} dormant sessions (full: {full.dormant:,}), "
            f"{plan.mem_connections:,} idle connections (full: {full.mem_connections:,}), "
            f"one throughput round of {plan.tp_measure_s:g}s, 200 workflow runs per "
            "latency row (full: 1,000) and 2s runs/s windows (full: 5s). Tails (p99.9) from so few "
            "samples are indicative only.")


def run(args: argparse.Namespace) -> int:
    plan = Plan.make(args.quick)
    phases = args.only or list(PHASES)
    say = _say
    from nexusd import __version__

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta: dict[str, Any] = {
        "started": started, "command": "python -m bench" + (" --quick" if args.quick else ""),
        "plan": attrs.asdict(plan), "machine": machine(), "load_before": loadavg(),
        "nexusd_version": __version__, "commit": _git_commit(), "phases": phases,
    }
    if args.quick:
        meta["quick_note"] = _quick_note(plan)
        say(f"quick mode: {meta['quick_note']}")
    if meta["load_before"] > 0.5:
        say(f"warning: load average {meta['load_before']:.2f}: other work is running; "
            "figures will be noisier")
    results: dict[str, Any] = {"meta": meta}
    tmp = Path(tempfile.mkdtemp(prefix="nexusd-bench-"))
    procs = Processes(tmp)
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    meta["phase_seconds"] = seconds
    ok = False
    try:
        nexusd = procs.nexusd()
        meta["durability"] = nexus_stats(nexusd.targets["unix"])["durability"]
        procs.stop(nexusd)
        say(f"nexusd {__version__}, default durability {meta['durability']!r}")
        use_redis = not args.no_redis and shutil.which("redis-server") is not None
        if args.no_redis:
            meta["redis"] = "skipped (--no-redis)"
        elif not use_redis:
            meta["redis"] = "skipped: redis-server is not on PATH"
            say("redis-server is not on PATH: the Redis baseline is skipped")
        else:
            meta["redis"] = (f"redis-server {_redis_version()}, persistence "
                             f"{' '.join(redis_persistence(meta['durability']))} to match")
        scen = Scenarios(procs, plan, say)
        if "throughput" in phases:
            phase_t0 = time.monotonic()
            say("throughput ...")
            nexusd, relay = procs.start(procs.nexusd, procs.relay)
            results["throughput"] = scen.throughput(nexusd, relay)
            _stop_servers(procs)
            seconds["throughput"] = time.monotonic() - phase_t0
        if "fanout" in phases:
            phase_t0 = time.monotonic()
            say("fan-out ...")
            nexusd, relay, per_subscriber = procs.start(
                procs.nexusd, procs.relay, lambda: procs.relay(per_subscriber=True))
            results["fanout"] = scen.fanout(nexusd, relay, per_subscriber)
            _stop_servers(procs)
            seconds["fanout"] = time.monotonic() - phase_t0
        if "latency" in phases:
            phase_t0 = time.monotonic()
            say("sync latency ...")
            nexusd, relay, ws_relay, redis = procs.start(
                procs.nexusd, procs.relay, procs.ws_relay,
                lambda: procs.redis(meta["durability"]) if use_redis else None)
            results["latency"] = scen.latency(nexusd, relay, ws_relay, redis)
            _stop_servers(procs)
            seconds["latency"] = time.monotonic() - phase_t0
        if "http" in phases:
            phase_t0 = time.monotonic()
            say("HTTP ...")
            nexusd, floor = procs.start(procs.nexusd, procs.http_floor)
            results["http"] = scen.http(nexusd, floor)
            _stop_servers(procs)
            seconds["http"] = time.monotonic() - phase_t0
        if "workflows" in phases:
            phase_t0 = time.monotonic()
            say("workflows ...")
            (nexusd,) = procs.start(procs.nexusd)
            assert nexusd is not None
            results["workflows"] = workflows(procs, plan, nexusd)
            _stop_servers(procs)
            seconds["workflows"] = time.monotonic() - phase_t0
        if "memory" in phases:
            phase_t0 = time.monotonic()
            say("memory ...")
            results["memory"] = scen.memory(use_redis, meta["durability"])
            seconds["memory"] = time.monotonic() - phase_t0
        ok = True
    except KeyboardInterrupt:
        say(f"interrupted: stopping everything the bench started (logs kept in {tmp})")
        return 130
    except BenchError as exc:
        say(f"bench failed: {exc}\n(logs kept in {tmp})")
        return 1
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["load_after"] = loadavg()
    meta["seconds"] = time.monotonic() - t0
    results["aims"] = aims(results)
    out = Path(args.out)
    _say("writing results ...")
    stamped = write_json(results, out)
    png = out / "latency.png"
    plotted = "latency" in results and plot(results, png)
    (out / "performance.md").write_text(markdown(results))
    print(table(results))
    print()
    print(f"{meta['seconds']:.0f}s; wrote {out / 'latest.json'} ({stamped.name}), "
          f"{out / 'performance.md'}" + (f" and {png}" if plotted else ""))
    return 0


def _stop_servers(procs: Processes) -> None:
    for server in list(procs.servers):
        t0 = time.monotonic()
        procs.stop(server)
        _say(f"  stopped {server.name} in {time.monotonic() - t0:.1f}s")


def _redis_version() -> str:
    try:
        text = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                              check=True).stdout
        return text.split("v=")[1].split()[0] if "v=" in text else text.strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


_T0 = time.monotonic()


def _say(text: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops the run as Ctrl-C does: everything started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: fewer samples, 1 and 1,000 sessions only")
    parser.add_argument("--only", action="append", choices=PHASES,
                        help="run only this part (repeatable)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis baseline")
    parser.add_argument("--out", default=str(RESULTS),
                        help=f"directory for the JSON and the plot (default {RESULTS})")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
