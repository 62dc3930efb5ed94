"""`nexusd serve` as a subprocess, for tests that kill it or restart it.

The daemon's stderr goes to a log file (a pipe nobody drained could block
it); readiness is its "listening on unix:PATH" line in that log.
"""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import trio

__all__ = ["DB_FILE", "DaemonProcess", "daemon_process", "db_check", "wait_until"]

DB_FILE = "nexusd.db"

#: Hard bound on a start (imports, store recovery) and on a graceful stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def _environ(home: Path) -> dict[str, str]:
    """The test's environment without settings that would change the daemon:
    no NEXUSD_* variables, no user config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUSD_")}
    env["XDG_CONFIG_HOME"] = str(home)
    return env


class DaemonProcess:
    """One run of `python -m nexusd serve` on a data directory."""

    def __init__(self, data: Path, socket: Path, log: Path, *flags: str) -> None:
        self.data = data
        self.socket = socket
        self.log = log
        self.args = [sys.executable, "-m", "nexusd", "serve", "--socket", str(socket),
                     "--ws", "off", "--http", "off", "--data", str(data), *flags]
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await trio.lowlevel.open_process(
                self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env=_environ(self.log.parent))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def ready(self) -> bool:
        return f"listening on unix:{self.socket}" in self.log_text()

    async def wait_ready(self) -> None:
        """Waits for the daemon to listen.

        Raises:
            AssertionError: it exited first, or took too long.
        """
        assert self.proc is not None
        with trio.move_on_after(START_TIMEOUT):
            while not self.ready:
                if self.proc.returncode is not None:
                    raise AssertionError(f"the daemon exited with {self.proc.returncode} "
                                         f"before listening:\n{self.log_text()[-4000:]}")
                await trio.sleep(0.005)
            return
        raise AssertionError(f"the daemon did not listen within {START_TIMEOUT}s:\n"
                             f"{self.log_text()[-4000:]}")

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        with trio.fail_after(STOP_TIMEOUT):
            await self.proc.wait()

    def terminate_nowait(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    async def terminate(self) -> int:
        """SIGTERM, and its exit status once it has drained and stopped."""
        assert self.proc is not None
        self.terminate_nowait()
        with trio.fail_after(STOP_TIMEOUT):
            return await self.proc.wait()

    async def aclose(self) -> None:
        """Makes sure the process is gone (after a failure, say)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
                await self.proc.wait()


@asynccontextmanager
async def daemon_process(data: Path, socket: Path, log: Path,
                         *flags: str) -> AsyncIterator[DaemonProcess]:
    """A started daemon process (not yet necessarily listening); killed on the
    way out if the test left it running."""
    daemon = DaemonProcess(data, socket, log, *flags)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.aclose()


def db_check(data: Path) -> dict[str, tuple[int, int, int]]:
    """Checks the database as the last process left it: `PRAGMA integrity_check`,
    and a journal without gaps. Returns, per session, (snapshot_seq, first
    journaled seq, last journaled seq), 0s for none.

    Opened read-only, so that closing this connection does not checkpoint the
    WAL: the next daemon recovers the files exactly as the kill left them.

    Raises:
        AssertionError: the database is corrupt, or a session's journal has a gap.
    """
    uri = f"file:{data / DB_FILE}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        assert result == [("ok",)], f"integrity_check: {result}"
        sessions = {sid: (snapshot_seq, 0, 0) for sid, snapshot_seq in
                    conn.execute("SELECT id, snapshot_seq FROM sessions")}
        for sid, first, last, n in conn.execute(
                "SELECT session_id, min(seq), max(seq), count(*) FROM events "
                "GROUP BY session_id"):
            assert sid in sessions, f"events of session {sid}, which has no row"
            assert n == last - first + 1, f"session {sid}: {n} events in {first}..{last}"
            snapshot_seq = sessions[sid][0]
            # Events after the snapshot must continue it: none may be missing.
            assert first <= snapshot_seq + 1, (
                f"session {sid}: snapshot at {snapshot_seq}, journal starts at {first}")
            sessions[sid] = (snapshot_seq, first, last)
    return sessions


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str, *,
                     bound: float = 10.0, interval: float = 0.01) -> None:
    """Polls `condition` (a function, or an async one) until it is true.

    For state that no trio event announces: a subprocess, or work that the
    store does in its threads.

    Raises:
        AssertionError: not true within `bound` seconds.
    """
    with trio.move_on_after(bound):
        while True:
            done = condition()
            if inspect.isawaitable(done):
                done = await done
            if done:
                return
            await trio.sleep(interval)
    raise AssertionError(f"not within {bound}s: {what}")
