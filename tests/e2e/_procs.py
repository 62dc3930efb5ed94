"""The daemon and the ``nexus`` command as a user runs them: real processes.

`DaemonProcess` runs ``python -m nexusd serve`` with its log in a file (a pipe
nobody drains could block the daemon); it is ready when the log says where it
listens. `Cli` runs the ``nexus`` console script. Every wait has a hard bound,
in real seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import attrs
import trio

__all__ = [
    "CLI_TIMEOUT",
    "NEXUS",
    "NEXUSD",
    "Cli",
    "CliResult",
    "DaemonProcess",
    "clean_environ",
]

#: Hard bounds, in seconds: a daemon start (imports, store recovery), a
#: graceful stop, one ``nexus`` command.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 30.0

NEXUSD = [sys.executable, "-m", "nexusd"]


def _nexus_command() -> list[str]:
    """The installed ``nexus`` script beside this Python, as a user would run it."""
    script = Path(sys.executable).with_name("nexus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from nexus_client._cli import main; "
                                  "sys.exit(main())"]


NEXUS = _nexus_command()


def clean_environ(home: Path) -> dict[str, str]:
    """This process's environment without anything that would point the
    daemon or the CLI somewhere else: no NEXUS_*/NEXUSD_* settings, no user
    config, credentials in `home`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEXUS_", "NEXUSD_")) and k != "XDG_RUNTIME_DIR"}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_STATE_HOME"] = str(home / "state")
    env["NEXUS_CREDENTIALS"] = str(home / "credentials.json")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


class DaemonProcess:
    """One run of ``nexusd serve`` on a data directory and a socket path."""

    def __init__(self, data: Path, socket: Path, log: Path, *flags: str,
                 env: Mapping[str, str], ws: bool = True, http: bool = False) -> None:
        self.data = data
        self.socket = socket
        self.log = log
        self.args = [*NEXUSD, "serve", "--socket", str(socket),
                     "--ws", "127.0.0.1:0" if ws else "off",
                     "--http", "127.0.0.1:0" if http else "off", "--data", str(data),
                     "--shutdown-grace", "2s", *flags]
        self.env = dict(env)
        self.ws = ws
        self.http = http
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=self.env)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def ready(self) -> bool:
        """Listening on every listener it was given (as of this run's log)."""
        text = self.log_text().rsplit(" starting (pid ", 1)[-1]
        return (f"listening on unix:{self.socket}" in text
                and (not self.ws or "listening on ws://" in text)
                and (not self.http or "listening on http://" in text))

    @property
    def http_url(self) -> str:
        urls = re.findall(r"listening on (http://127\.0\.0\.1:\d+)/", self.log_text())
        assert urls, f"no HTTP listener in the log:\n{self.log_text()}"
        return str(urls[-1])

    @property
    def ws_url(self) -> str:
        urls = re.findall(r"listening on (ws://127\.0\.0\.1:\d+/)", self.log_text())
        assert urls, f"no WebSocket listener in the log:\n{self.log_text()}"
        return str(urls[-1])

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nexusd exited with {self.proc.returncode} before it "
                                 f"listened:\n{self.log_text()[-4000:]}")

    def wait_ready(self) -> None:
        """Waits (blocking) until the daemon listens.

        Raises:
            AssertionError: it exited first, or took over `START_TIMEOUT`.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready:
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"nexusd did not listen within {START_TIMEOUT:g}s:\n"
                                     f"{self.log_text()[-4000:]}")
            time.sleep(0.01)

    async def wait_ready_async(self) -> None:
        """`wait_ready` for trio code."""
        with trio.fail_after(START_TIMEOUT):
            while not self.ready:
                self._check_alive()
                await trio.sleep(0.01)

    def stop(self) -> int:
        """SIGTERM, and its exit status once it has drained and exited."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    async def stop_async(self) -> int:
        """`stop` for trio code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        # subprocess's own timeout bounds the wait.
        return await trio.to_thread.run_sync(partial(self.proc.wait, timeout=STOP_TIMEOUT))

    def kill(self) -> None:
        """Makes sure the process is gone (after a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


@attrs.frozen
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The ``nexus: error: ...`` line (there must be exactly one)."""
        lines = [line for line in self.err.splitlines() if line.startswith("nexus: error: ")]
        assert len(lines) == 1, f"expected one error line in stderr:\n{self.err}"
        return lines[0]


@attrs.define
class Cli:
    """Runs ``nexus`` with `env` (plus per-call additions)."""

    env: dict[str, str]

    def _environ(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.env, **(env or {})}

    def run(self, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = CLI_TIMEOUT) -> CliResult:
        done = subprocess.run([*NEXUS, *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout,
                              env=self._environ(env))
        return CliResult(done.returncode, done.stdout, done.stderr)

    def run_all(self, commands: Sequence[Sequence[str]], *,
                env: Mapping[str, str] | None = None) -> list[CliResult]:
        """Runs independent commands side by side; their results in order."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self.run(*args, env=env), commands))

    async def arun(self, *args: str, env: Mapping[str, str] | None = None) -> CliResult:
        """`run` for trio code (the process is killed after `CLI_TIMEOUT`)."""
        with trio.fail_after(CLI_TIMEOUT):
            done = await trio.run_process([*NEXUS, *args], capture_stdout=True,
                                          capture_stderr=True, check=False,
                                          stdin=subprocess.DEVNULL, env=self._environ(env))
        return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())


def http_daemon(tmp_path: Path, home: Path) -> Iterator[DaemonProcess]:
    """Runs ``nexusd serve`` with a Unix socket and HTTP on a free loopback
    port (memory durability, no WebSocket) until the generator is closed."""
    sockets = Path(tempfile.mkdtemp(prefix="nx-"))
    process = DaemonProcess(tmp_path / "data", sockets / "n.sock", tmp_path / "nexusd.log",
                            "--durability", "memory", env=clean_environ(home),
                            ws=False, http=True)
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()
        shutil.rmtree(sockets, ignore_errors=True)
