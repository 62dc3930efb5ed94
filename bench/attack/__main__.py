"""``python -m bench.attack [--quick] [--only CASE ...]``: runs the attack
suite (see `bench.attack`), prints its table (Markdown) to stdout and
progress to stderr; exits 1 if any case failed."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import Row
from ._cases import CASES


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row]) -> str:
    lines = ["| case | what was done | outcome | figures |", "|---|---|---|---|"]
    lines += [f"| {r.case} | {_cell(r.done)} | {_cell(r.outcome)} | {_cell(r.figures)} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="every case at a smaller size (under ~90 s in all)")
    parser.add_argument("--only", nargs="+", choices=list(CASES), metavar="CASE",
                        help=f"run only these cases: {', '.join(CASES)}")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directories (daemon logs) and say where")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="nexusd-attack-"))
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for name in args.only or list(CASES):
            tmp = root / name
            tmp.mkdir()
            print(f"{name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                row = CASES[name](tmp, args.quick)
            except Exception as exc:  # a broken case is a failed case, not a crash
                traceback.print_exc()
                row = Row(name, "", f"FAILED: the case itself raised {exc!r}", "")
            rows.append(row)
            print(f"{name}: {row.outcome} ({time.monotonic() - t0:.1f} s)", file=sys.stderr,
                  flush=True)
    finally:
        if args.keep:
            print(f"logs in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown(rows))
    print(f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
