"""Fixtures of the end-to-end tests: `nexusd serve` as a subprocess, the
``nexus`` command, and an environment that points nowhere but at them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._procs import Cli, DaemonProcess, clean_environ


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The user's home for this test: config, credentials file."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """In-process clients see the same environment as the subprocesses: no
    real user's config, credentials or daemon."""
    for var in ("NEXUS_SOCKET", "NEXUS_URL", "NEXUS_TOKEN", "NEXUS_ADMIN_KEY",
                "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    for name, value in clean_environ(home).items():
        if name.startswith(("NEXUS_", "XDG_")) or name == "HOME":
            monkeypatch.setenv(name, value)




@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A running ``nexusd serve`` (Unix socket and WebSocket on a free port,
    ``--durability memory``), shared by the tests of a module, each with its
    own sessions; stopped with SIGTERM afterwards, which must end it cleanly."""
    base = tmp_path_factory.mktemp("daemon")
    sockets = Path(tempfile.mkdtemp(prefix="nx-"))
    (base / "home").mkdir()
    process = DaemonProcess(base / "data", sockets / "n.sock", base / "nexusd.log",
                            "--durability", "memory", env=clean_environ(base / "home"))
    process.start()
    try:
        process.wait_ready()
        yield process
        code = process.stop()
        log = process.log_text()
        assert code == 0, log
        assert "Traceback" not in log, log
    finally:
        process.kill()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def cli(daemon: DaemonProcess, home: Path) -> Cli:
    """``nexus`` for this test's user, pointed at `daemon` through NEXUS_SOCKET."""
    return Cli({**clean_environ(home), "NEXUS_SOCKET": str(daemon.socket)})


@pytest.fixture
def offline_cli(home: Path, socket_dir: Path) -> Cli:
    """``nexus`` pointed at a socket nothing listens on."""
    return Cli({**clean_environ(home), "NEXUS_SOCKET": str(socket_dir / "absent.sock")})
