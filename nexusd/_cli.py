"""The `nexusd` command: `nexusd serve` runs the daemon."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from . import __version__
from ._config import DURATIONS, FIELDS, Config, ConfigError, default_config_path, load_config
from ._daemon import PID_FILE, Daemon
from ._keys_cli import keys_list, keys_retire, keys_rotate
from .store import KeyRingError, StoreError

__all__ = ["main"]

log = logging.getLogger("nexusd")

_FLAG_NAMES = {"socket": "--socket", "ws": "--ws", "data": "--data"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexusd",
        description="nexusd: real-time session sync daemon. Clients reach it over a Unix "
                    "socket, WebSocket and HTTP, each on a channel it names (api, cli, web, mcp "
                    "or any label) that the session records; every change is journaled, "
                    "then seen by every client attached to the session, in order.",
    )
    parser.add_argument("--version", action="version", version=f"nexusd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    defaults = Config()
    serve = sub.add_parser(
        "serve", help="run the daemon in the foreground",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the daemon in the foreground until SIGINT or SIGTERM.",
        epilog=(
            "Settings come from, in increasing precedence: embedded defaults; the TOML\n"
            f"file given by --config (default {default_config_path(os.environ)}, if it\n"
            "exists), with the same names as the flags (max_frame = 2097152); environment\n"
            "variables NEXUSD_<NAME> (NEXUSD_WS=off, NEXUSD_HIBERNATE_AFTER=5m); flags.\n"
            "Durations take 250ms, 90s, 30m, 2h, 7d or plain seconds.\n\n"
            "On SIGINT/SIGTERM the daemon stops accepting, tells clients 'shutdown',\n"
            "finishes in-flight requests within --shutdown-grace, and exits 0.\n"
            "SIGHUP reloads the master key ring (see 'nexusd keys')."),
    )
    serve.add_argument("--config", type=str, default=None, metavar="FILE",
                       help="TOML configuration file")
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        text = field.metadata.get("help", "")
        # A help that names its own default (one made at run time) shows no other.
        shown = ("" if "default:" in text else
                 f" (default: {_show(getattr(defaults, name), name in DURATIONS)})")
        choices = field.metadata.get("choices")
        serve.add_argument(flag, dest=name, default=argparse.SUPPRESS,
                           metavar="|".join(choices) if choices else name.split("_")[-1].upper(),
                           help=text + shown)
    keys = sub.add_parser(
        "keys", help="manage the master keys that encrypt the store",
        description="The master key ring in DATA/keys wraps each session's data key. "
                    "'rotate' adds a new current key and tells the daemon serving the data "
                    "directory (SIGHUP), which re-wraps every session's data key under it in "
                    "the background (values are never rewritten); 'retire' then removes an "
                    "old key.")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                      help=f"data directory (default: {defaults.data})")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_sub.add_parser("list", parents=[data],
                        help="list master keys and how many sessions use each")
    keys_sub.add_parser("rotate", parents=[data],
                        help="add a new master key and make it current")
    retire = keys_sub.add_parser("retire", parents=[data],
                                 help="remove a master key no session uses")
    retire.add_argument("key_id", metavar="KEY_ID")
    return parser


def _keys(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.keys_command == "list":
            keys_list(config.data)
        elif args.keys_command == "rotate":
            keys_rotate(config.data)
            _signal_daemon(config.data)
        else:
            keys_retire(config.data, args.key_id)
    except (KeyRingError, StoreError) as exc:
        print(f"nexusd: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _signal_daemon(data: Path) -> None:
    """Tells the daemon serving `data`, if any, to reload its key ring."""
    try:
        pid = int((data / PID_FILE).read_text())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        print("no daemon is running on this data directory; the next one to start "
              "re-wraps every session's data key under the new key")
        return
    print(f"told the running daemon (pid {pid}) to re-wrap every session's data key "
          "under the new key, in the background")


def _show(value: Any, duration: bool) -> str:
    """A setting's default as the help shows it: durations with a unit,
    other numbers as they are."""
    if value is None:
        return "off"
    if duration and isinstance(value, float):
        if value.is_integer() and value >= 3600 and not value % 3600:
            return f"{int(value // 3600)}h"
        return f"{value:g}s"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return str(value)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Redis client logs each script it loads on a new connection.
    logging.getLogger("coredis").setLevel(max(logging.WARNING,
                                              getattr(logging, level.upper())))


#: How often the young generations are collected, how often survivors are
#: moved out of the collector's sight, and how often everything is collected
#: in full. See `_gc_policy`.
GC_YOUNG_EVERY = 0.05
GC_FREEZE_EVERY = 10.0
GC_FULL_EVERY = 3600.0
#: Collections of the middle generation before CPython collects in full by
#: itself: never, in practice; `_gc_policy` does it on its own schedule.
GC_OLDEST_THRESHOLD = 1_000_000_000


async def _gc_policy() -> None:
    """Keeps garbage-collection pauses short in a long-running daemon.

    CPython's full collections walk every tracked object: with thousands of
    active sessions that is hundreds of thousands of objects and a pause of a
    large fraction of a second, at moments nobody chooses. Objects that have
    survived a while (session state, actors, connections) are frozen every few
    seconds, so automatic collections only walk what is young; once an hour
    everything is unfrozen and collected in full, so that cyclic garbage among
    old objects is reclaimed, with the pause logged. CPython's own full
    collections are turned off: between two freezes, a burst of new sessions
    would otherwise make one walk all of them at once.

    The young generations are also collected every `GC_YOUNG_EVERY`, not
    only when CPython decides: it counts allocations *minus deallocations*,
    so while as many old objects die as new ones are made (thousands of
    actors each replacing the frames it waits in, as a closed watcher or a
    hibernation wakes them) no collection comes, the young generation grows
    to hundreds of thousands of objects, and the first collection then walks
    them all: 200-400 ms, and as much again in the middle generation. Every
    50 ms, it only ever walks what 50 ms made.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_OLDEST_THRESHOLD)
    last_full = last_freeze = trio.current_time()
    while True:
        await trio.sleep(GC_YOUNG_EVERY)
        gc.collect(1)
        now = trio.current_time()
        if now - last_freeze < GC_FREEZE_EVERY:
            continue
        last_freeze = now
        if now - last_full >= GC_FULL_EVERY:
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            log.info("full garbage collection: %d unreachable objects, %.0f ms", found,
                     (time.perf_counter() - started) * 1000)
            last_full = trio.current_time()
        gc.freeze()


async def _serve(config: Config) -> None:
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_gc_policy)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                       signal.SIGHUP) as signals:
            await nursery.start(daemon.run)
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    daemon.reload_keys_soon()
                    continue
                daemon.stop()
                break
            # A second signal while draining stops at once.
            async def second() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        continue
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()
            nursery.start_soon(second)
            # `daemon.run` returns when drained; what is left (`second`, the GC
            # policy) only waits.
            await daemon.stopped.wait()
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    config_file = getattr(args, "config", None)
    try:
        config = load_config(None if config_file is None else _path(config_file),
                             os.environ, flags)
    except ConfigError as exc:
        parser.exit(2, f"nexusd: error: {exc}\n")
    if args.command == "keys":
        return _keys(args, config)
    _configure_logging(config.log_level)
    log.info("nexusd %s starting (pid %d, durability %s, data %s)", __version__, os.getpid(),
             config.durability, config.data)
    try:
        trio.run(_serve, config)
    except Exception as error:  # exception groups too, however nested
        return _report(error)
    return 0


#: Errors that say what is wrong around the daemon (a port in use, a store
#: that cannot be opened), not what is wrong in it: no traceback for them.
_EXPECTED = (StoreError, KeyRingError, OSError)


def _report(error: Exception) -> int:
    """Says why the daemon could not start, or stopped: one ``nexusd: error:``
    line on stderr naming every failure once (and the traceback of any
    unexpected one in the log); returns the exit status."""
    leaves = _leaves(error)
    if not all(isinstance(leaf, _EXPECTED) for leaf in leaves):
        log.critical("stopped by an unexpected error", exc_info=error)
    messages = dict.fromkeys(_describe(leaf) for leaf in leaves)
    print(f"nexusd: error: {'; '.join(messages)}", file=sys.stderr)
    return 1


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in `error`, exception groups opened at every depth."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _describe(error: BaseException) -> str:
    """What went wrong, for a person."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    if isinstance(error, _EXPECTED):
        return str(error) or type(error).__name__
    return f"unexpected {type(error).__name__}: {error}"


def _path(text: str) -> Path:
    return Path(text).expanduser()

