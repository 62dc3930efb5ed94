"""The processes a bench run starts: servers (nexusd, the relays, Redis) and
client workers. Everything started here is stopped by `Processes.stop_all`,
which the run calls in a ``finally`` (Ctrl-C included).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import nexus_protocol as p

from ._client import NexusClient, RedisClient, Target

__all__ = [
    "BenchError",
    "Processes",
    "Server",
    "Worker",
    "nexus_stats",
    "pid_cpu",
    "pid_rss",
    "redis_persistence",
]


class BenchError(Exception):
    """A process of the bench failed; the message says which and why."""


def pid_rss(pid: int) -> int:
    """Resident set size of process `pid`, in bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def pid_cpu(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Server:
    """A server process, and the addresses it listens on by transport."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.targets: dict[str, Target] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return pid_rss(self.pid)

    def cpu(self) -> float:
        return pid_cpu(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Worker:
    """A client process (`bench._worker`) and its command channel."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log_file, cwd=_ROOT)
        self._ids = itertools.count(1)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def start(self, op: str, **args: Any) -> int:
        cid = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": cid, "op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()
        return cid

    def wait(self, cid: int, event: str = "result", timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"worker {self.name}: no {event!r} within {timeout:g}s"
                                 ) from None
            if reply is None:
                raise BenchError(f"worker {self.name} exited:\n{_tail(self.log)}")
            if reply.get("id") != cid:
                continue
            if reply["event"] == "error":
                raise BenchError(f"worker {self.name}: {reply['error']}\n{reply['traceback']}")
            if reply["event"] == event:
                return reply

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        return self.wait(self.start(op, **args), timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log_file.close()


_ROOT = str(Path(__file__).resolve().parent.parent)
_UNIX = re.compile(r"listening on unix:(\S+)")
_WS = re.compile(r"listening on wss?://(\[?[^\]/]+\]?):(\d+)/")
_HTTP = re.compile(r"listening on https?://(\[?[^\]/]+\]?):(\d+)/")


class Processes:
    """Starts servers and workers in `tmp`, and stops all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[Server] = []
        self.workers: list[Worker] = []
        self._n = itertools.count(1)

    def worker(self, name: str) -> Worker:
        w = Worker(name, self.tmp / f"worker-{name}-{next(self._n)}.log")
        self.workers.append(w)
        return w

    def _spawn(self, name: str, argv: list[str], wait_for: set[str],
               timeout: float = 30.0) -> Server:
        log = self.tmp / f"{name}-{next(self._n)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    cwd=_ROOT)
        server = Server(name, proc, log)
        self.servers.append(server)
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace")
            if "unix" in wait_for and (m := _UNIX.search(text)):
                server.targets["unix"] = Target("nexus", "unix", m.group(1))
            if "ws" in wait_for and (m := _WS.search(text)):
                host = m.group(1).strip("[]")
                server.targets["ws"] = Target("nexus", "ws", f"{host}:{m.group(2)}")
            if "http" in wait_for and (m := _HTTP.search(text)):
                host = m.group(1).strip("[]")
                proto = "http-floor" if name == "http-floor" else "http"
                server.targets["http"] = Target(proto, "tcp", f"{host}:{m.group(2)}")
            if wait_for <= set(server.targets):
                return server
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise BenchError(f"{name} did not start:\n{_tail(log)}")
            time.sleep(0.02)

    def nexusd(self, *extra: str) -> Server:
        """nexusd at its default durability, on a Unix socket, a WebSocket and HTTP."""
        n = next(self._n)
        data = self.tmp / f"nexusd-data-{n}"
        server = self._spawn("nexusd", [
            sys.executable, "-m", "nexusd", "serve", "--socket", str(self.tmp / f"nexusd-{n}.sock"),
            "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(data), *extra],
            {"unix", "ws", "http"})
        # The same listener, on the JSON subprotocol.
        server.targets["wsjson"] = Target("nexus", "wsjson", server.targets["ws"].address)
        return server

    def http_floor(self) -> Server:
        """A bare hypercorn + Starlette endpoint (`bench._http_floor`)."""
        return self._spawn("http-floor", [sys.executable, "-m", "bench._http_floor",
                                          "--http", "127.0.0.1:0"], {"http"})

    def relay(self, *, per_subscriber: bool = False) -> Server:
        """The trio relay (the floor), on a Unix socket and a WebSocket."""
        n = next(self._n)
        argv = [sys.executable, "-m", "bench._relay", "--socket",
                str(self.tmp / f"relay-{n}.sock"), "--ws", "127.0.0.1:0"]
        if per_subscriber:
            argv.append("--per-subscriber")
        name = "relay-per-subscriber" if per_subscriber else "relay"
        return self._spawn(name, argv, {"unix", "ws"})

    def ws_relay(self) -> Server:
        """The asyncio `websockets` relay."""
        return self._spawn("websockets-relay",
                           [sys.executable, "-m", "bench._ws_relay", "--ws", "127.0.0.1:0"],
                           {"ws"})

    def redis(self, durability: str) -> Server | None:
        """redis-server on loopback (a free port) and a Unix socket, persisting
        as `durability` asks; None if redis-server is not installed."""
        exe = shutil.which("redis-server")
        if exe is None:
            return None
        n = next(self._n)
        rdir = self.tmp / f"redis-{n}"
        rdir.mkdir()
        sock = rdir / "redis.sock"
        port = free_port()
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock),
                "--unixsocketperm", "700", "--dir", str(rdir), "--save", "",
                "--daemonize", "no", "--loglevel", "warning", *redis_persistence(durability)]
        log = self.tmp / f"redis-{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        server = Server("redis", proc, log)
        self.servers.append(server)
        server.targets["unix"] = Target("redis", "unix", str(sock))
        server.targets["tcp"] = Target("redis", "tcp", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                client = RedisClient(server.targets["unix"])
                client.command("PING")
                client.close()
                return server
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise BenchError(f"redis-server did not start:\n{_tail(log)}") from None
                time.sleep(0.05)

    def spawn(self, name: str, argv: list[str], wait_for: set[str],
              timeout: float = 30.0) -> Server:
        """Any server: `argv` started in the repository, its log watched until
        it says it listens on each transport of `wait_for` ("unix", "ws",
        "http").

        Raises:
            BenchError: it exited or did not say so within `timeout` seconds.
        """
        return self._spawn(name, argv, wait_for, timeout)

    def start(self, *factories: Callable[[], Server | None]) -> list[Server | None]:
        """Starts servers side by side (each factory is one of the methods
        above, or a lambda around one); their results in order."""
        with concurrent.futures.ThreadPoolExecutor(len(factories)) as pool:
            futures = [pool.submit(f) for f in factories]
            return [f.result() for f in futures]

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        self.workers.clear()
        for s in reversed(self.servers):
            with contextlib.suppress(Exception):
                s.stop()
        self.servers.clear()


#: redis-server flags for each nexusd durability: "memory" keeps nothing;
#: "process" has each write in the append-only file (the OS holds it) before
#: the reply, so it survives kill -9; "power" fsyncs the file on every write;
#: "everysec" fsyncs it every second (what the Redis engine's tests run).
REDIS_DURABILITY: dict[str, list[str]] = {
    "none": ["--appendonly", "no"],
    "memory": ["--appendonly", "no"],
    "process": ["--appendonly", "yes", "--appendfsync", "no"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "power": ["--appendonly", "yes", "--appendfsync", "always"],
}


def redis_persistence(durability: str) -> list[str]:
    """The redis-server flags matching nexusd's `durability` (an unknown
    level gets the strictest)."""
    return REDIS_DURABILITY.get(durability, REDIS_DURABILITY["power"])


def nexus_stats(target: Target) -> dict[str, Any]:
    """The `stats` report of the nexusd (or relay) at `target` (Unix socket:
    the daemon's own user is admin)."""
    client = NexusClient(target, client="bench-stats")
    try:
        reply = client.request(p.Stats(id=client.next_id()))
        assert isinstance(reply, p.Report)
        return dict(reply.report)
    finally:
        client.close()
