"""`nexusd serve` as a subprocess of the attack suite, and the clients that
talk to it.

Each case gets a temporary directory of its own: data directory, Unix socket,
log. The daemon listens on the Unix socket and, when asked, on a WebSocket at
a free loopback port (port 0: the log line says which). Readiness is its
"listening on unix:PATH" line in the log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nexus_protocol as p

from .._client import NexusClient, Target
from .._procs import pid_rss

__all__ = ["Canary", "DaemonProc", "percentile"]

_ROOT = Path(__file__).resolve().parent.parent.parent
_WS = re.compile(r"listening on wss?://(\[?[^\]/]+\]?):(\d+)/")

#: Bounds on a start (imports, store recovery) and on an orderly stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def _environ(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """This environment without anything that would change the daemon (no
    NEXUSD_* variables, no user config file), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUSD_")}
    env["XDG_CONFIG_HOME"] = str(home)
    env.update(extra)
    return env


class DaemonProc:
    """One run of `python -m nexusd serve` on `data`, logging to `log`, with
    `env` added to its environment."""

    def __init__(self, tmp: Path, *flags: str, data: Path | None = None, name: str = "nexusd",
                 ws: bool = False, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.data = data if data is not None else tmp / "data"
        self.socket = tmp / f"{name}.sock"
        self.log = tmp / f"{name}.log"
        self.args = [sys.executable, "-m", "nexusd", "serve", "--socket", str(self.socket),
                     "--ws", "127.0.0.1:0" if ws else "off", "--http", "off",
                     "--data", str(self.data),
                     *flags]
        self.ws = ws
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws_port: int | None = None

    @property
    def unix(self) -> Target:
        return Target("nexus", "unix", str(self.socket))

    @property
    def websocket(self) -> Target:
        assert self.ws_port is not None
        return Target("nexus", "ws", f"127.0.0.1:{self.ws_port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Starts the process (it may not be listening yet)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, cwd=_ROOT, env=_environ(self.tmp, self.env))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Waits until it listens on every address it was given.

        Raises:
            RuntimeError: it exited first, or took too long.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            m = _WS.search(text) if self.ws else None
            if f"listening on unix:{self.socket}" in text and (not self.ws or m):
                if m is not None:
                    self.ws_port = int(m.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nexusd exited with {self.proc.returncode} before "
                                   f"listening:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nexusd did not listen within {timeout:g}s:\n{self.tail()}")
            time.sleep(0.01)

    def serve(self) -> DaemonProc:
        """Starts it and waits until it listens; returns itself."""
        self.start()
        self.wait_ready()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return pid_rss(self.pid)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> float | None:
        """SIGTERM; the seconds it took to exit, or None if it did not within
        `timeout` (it is then killed)."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def client(self, target: Target | None = None, *, channel: str = "attack") -> NexusClient:
        return NexusClient(target or self.unix, channel=channel, client="attack")

    def stats(self) -> dict[str, Any]:
        c = self.client()
        try:
            reply = c.request(p.Stats(id=c.next_id()))
            assert isinstance(reply, p.Report)
            return dict(reply.report)
        finally:
            c.close()


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` by the nearest-rank method; 0.0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(q * len(ordered) + 0.999999)))
    return ordered[rank - 1]


class Canary:
    """A thread that pings the daemon every `interval` seconds and records
    each round trip; a ping with no answer within `timeout` counts as lost."""

    def __init__(self, target: Target, *, interval: float = 0.005, timeout: float = 10.0
                 ) -> None:
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self.rtts: list[float] = []
        self.sent_at: list[float] = []  # time.monotonic() of each ping in `rtts`
        self.lost = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            client = NexusClient(self.target, channel="canary", client="canary")
        except OSError as exc:
            self.error = f"canary could not connect: {exc}"
            return
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    client.request(p.Ping(id=client.next_id()), timeout=self.timeout)
                except TimeoutError:
                    self.lost += 1
                    continue
                self.rtts.append(time.monotonic() - t0)
                self.sent_at.append(t0)
                self._stop.wait(self.interval)
        except (OSError, ConnectionError) as exc:
            self.error = f"canary connection failed: {exc}"
        finally:
            client.close()

    def between(self, start: float, end: float) -> list[float]:
        """The round trips of the pings sent from `start` to `end` (time.monotonic())."""
        return [r for t, r in zip(self.sent_at, self.rtts, strict=True) if start <= t <= end]

    def figures(self, rtts: list[float] | None = None) -> str:
        ms = [r * 1000 for r in (self.rtts if rtts is None else rtts)]
        return (f"ping p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
                f"max {max(ms, default=0.0):.1f} ms ({len(ms)} pings)")

    def p99(self) -> float:
        return percentile(self.rtts, 0.99)
