"""A throwaway `redis-server` for the Redis engine's tests.

`RedisServer` runs Debian's `redis-server` on 127.0.0.1, on a free port, in a
directory of its own, and can stop it, `kill -9` it and start it again on the
same port and directory (its AOF kept), as a crash test needs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

#: Persistence as the engine's default durability "process" wants it: an
#: append-only file written before each reply, fsynced every second; no RDB.
DEFAULT_OPTIONS: Final = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "")
_START_TIMEOUT: Final = 10.0


def redis_server_binary() -> str | None:
    """The path of `redis-server`, or None if it is not installed."""
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process on 127.0.0.1 (see the module docstring).

    Args:
        options: command-line options of the server besides its port, bind
            address and directory.
        password: the password clients must give (``requirepass``), if any.
        directory: where it keeps its files (a new temporary one by default,
            removed by `close`).
    """

    def __init__(self, options: Sequence[str] = DEFAULT_OPTIONS, *,
                 directory: Path | None = None, password: str | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.password = password
        self.options = tuple(options) + (("--requirepass", password) if password else ())
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="nx-redis-")) if directory is None else directory
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Starts the server and waits until it answers PING; returns its URL.

        Raises:
            RuntimeError: it did not answer within 10 s (its log is in the message).
        """
        if self.running:
            return self.url
        log = self.dir / "redis.log"
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--logfile", str(log), "--daemonize", "no",
             *self.options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.ping():
                return self.url
            time.sleep(0.02)
        self.kill()
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{text[-2000:]}")

    def ping(self) -> bool:
        """Whether the server answers PING now (a plain socket: no client needed).
        A server still loading its AOF answers -LOADING, which is no."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    if not s.recv(64).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stops the server as an operator does (SIGTERM: it flushes its AOF)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kills the server with SIGKILL: what it has not written is lost."""
        self._end(signal.SIGKILL)

    def restart(self) -> str:
        """Starts the server again on the same port and directory (a stopped or
        killed one replays its AOF); returns its URL."""
        if self.running:
            self.stop()
        return self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Kills the server and removes its directory if this object made it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
