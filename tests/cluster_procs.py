"""Several daemons as subprocesses sharing one Redis and one key ring, which
a test kills, pauses and restarts (the `cluster` fixture of tests/conftest.py)."""

from __future__ import annotations

import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

# `nexusd serve` as a subprocess (tests/durability/daemon_process.py), and the
# daemon tests' raw protocol and HTTP clients (tests/daemon/).
sys.path.insert(0, str(Path(__file__).resolve().parent / "durability"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "daemon"))

from daemon_process import DaemonProcess

from nexusd.store import KeyRing


class Cluster:
    """Daemons on one Redis (`url`, keys under `prefix`) with one key ring;
    daemon i listens on `socket(i)` only."""

    def __init__(self, root: Path, sockets: Path, url: str, prefix: str,
                 stack: AsyncExitStack, *flags: str) -> None:
        self.root = root
        self.sockets = sockets
        self.url = url
        self.prefix = prefix
        self.flags = flags
        self.ring = KeyRing.generate()
        self.daemons: list[DaemonProcess] = []
        self._stack = stack

    def socket(self, i: int) -> str:
        return str(self.sockets / f"d{i}.sock")

    def data(self, i: int) -> Path:
        path = self.root / f"d{i}"
        if not path.exists():
            path.mkdir(mode=0o700)
            keys = path / "keys"
            keys.write_text(self.ring.to_json())
            keys.chmod(0o600)
        return path

    async def start(self, n: int, *flags: str) -> list[DaemonProcess]:
        """Starts `n` more daemons and waits until each listens."""
        started = []
        for _ in range(n):
            i = len(self.daemons)
            daemon = DaemonProcess(self.data(i), Path(self.socket(i)), self.root / f"d{i}.log",
                                   "--engine", self.url, "--engine-prefix", self.prefix,
                                   *self.flags, *flags)
            self._stack.push_async_callback(daemon.aclose)
            await daemon.start()
            self.daemons.append(daemon)
            started.append(daemon)
        for daemon in started:
            await daemon.wait_ready()
        return started

    def pause(self, i: int) -> None:
        assert self.daemons[i].proc is not None
        self.daemons[i].proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        assert self.daemons[i].proc is not None
        self.daemons[i].proc.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        return "\n".join(f"--- daemon {i}\n{d.log_text()[-3000:]}"
                         for i, d in enumerate(self.daemons))
