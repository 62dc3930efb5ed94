"""Codec throughput: nexus_protocol against raw msgpack on the same frames.

For each typical frame, `encode_body` is timed beside `msgpack.packb` of the
equivalent wire dict, and `decode_body` beside `msgpack.unpackb` of the same
bytes, in the same run and interleaved, so that the ratio (protocol time / raw
time) is what the protocol layer costs on top of msgpack: building the wire
dict, and checking every field and the nesting of every value.

    python bench/codec.py [--quick] [--json PATH]

Prints a table and writes the results as JSON (default bench/results/codec.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import msgpack
import nexus_protocol
from nexus_protocol import Change, Message, Set, Snapshot, decode_body, encode_body

RESULTS = Path(__file__).resolve().parent / "results" / "codec.json"

SESSION_ID = "5f0c8a3e9b2d4c71a6e8f0b3d2c1a9e7"
TOKEN = "nxs_" + "Qm9uam91ciBsZXMgYmVuY2htYXJrcyAhIDEyMzQ1Njc4"
CART = {"items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}], "total": 31.5,
        "currency": "EUR"}


def frames() -> dict[str, Message]:
    """The frames measured, by name."""
    entries = {
        f"key{i:02d}": {"value": {"n": i, "label": f"item {i}", "tags": ["a", "b"]},
                        "version": i + 1, "updated_at": 1_700_000_000.0 + i,
                        "channel": "websocket"}
        for i in range(50)
    }
    context = {"current_channel": "websocket", "preferences": {"theme": "dark"},
               "history": [], "metrics": {}, "updated_at": 1_700_000_000.0}
    return {
        "change event (set)": Change(
            session_id=SESSION_ID, seq=1234, op="set", ts=1_700_000_123.25,
            channel="websocket", writer="c-7f3a", key="cart", value=CART, version=7),
        "set request": Set(id=42, session_id=SESSION_ID, key="cart", value=CART, expect=6,
                           token=TOKEN),
        "snapshot event (50 keys)": Snapshot(
            session_id=SESSION_ID, seq=999, entries=entries, context=context, recovered=True),
    }


def best_ns(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best time of one call, in ns, over `repeat` batches of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def calibrate(fn: Callable[[], object], batch_ns: float) -> int:
    """How many calls of `fn` take about `batch_ns` (after a warm-up)."""
    number = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        took = time.perf_counter_ns() - start
        if took >= batch_ns / 4:
            return max(1, int(number * batch_ns / took))
        number *= 2


def compare(ours: Callable[[], object], raw: Callable[[], object], *, batch_ms: float,
            repeat: int) -> tuple[float, float]:
    """Best ns per call of `ours` and `raw`, measured alternately."""
    number = calibrate(raw, batch_ms * 1e6)
    calibrate(ours, batch_ms * 1e6)  # warm-up
    t_ours = t_raw = float("inf")
    for _ in range(repeat):
        t_ours = min(t_ours, best_ns(ours, number, 1))
        t_raw = min(t_raw, best_ns(raw, number, 1))
    return t_ours, t_raw


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measures every frame; returns the results as a JSON-ready dict."""
    batch_ms, repeat = (2.0, 10) if quick else (5.0, 80)
    rows = []
    for name, message in frames().items():
        body = encode_body(message)
        wire = msgpack.unpackb(body)
        assert decode_body(body) == message
        assert msgpack.packb(wire) == body, "raw packb must produce the same bytes"
        enc = compare(lambda m=message: encode_body(m), lambda w=wire: msgpack.packb(w),
                      batch_ms=batch_ms, repeat=repeat)
        dec = compare(lambda b=body: decode_body(b), lambda b=body: msgpack.unpackb(b),
                      batch_ms=batch_ms, repeat=repeat)
        for op, (ours, raw) in (("encode", enc), ("decode", dec)):
            rows.append({
                "frame": name, "tag": message.TAG, "bytes": len(body), "op": op,
                "protocol_ns": round(ours, 1), "raw_ns": round(raw, 1),
                "protocol_ops_per_s": round(1e9 / ours), "raw_ops_per_s": round(1e9 / raw),
                "ratio": round(ours / raw, 2),
            })
    return {
        "benchmark": "codec",
        "quick": quick,
        "method": (f"best of {repeat} batches of ~{batch_ms:g} ms each, protocol and raw "
                   "interleaved, after a warm-up; ratio = protocol time / raw msgpack time"),
        "environment": {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "msgpack": ".".join(map(str, msgpack.version)),
            "attrs": attrs.__version__,
            "nexus_protocol": nexus_protocol.__version__,
        },
        "results": rows,
    }


def table(results: dict[str, Any]) -> str:
    head = (f"{'frame':<26} {'bytes':>6} {'op':<7} {'protocol ops/s':>15} "
            f"{'raw msgpack ops/s':>18} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in results["results"]:
        lines.append(f"{r['frame']:<26} {r['bytes']:>6} {r['op']:<7} "
                     f"{r['protocol_ops_per_s']:>15,} {r['raw_ops_per_s']:>18,} "
                     f"{r['ratio']:>6.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter, noisier run")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
