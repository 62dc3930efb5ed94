from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from .fakeserver import FakeServer, ThreadedServer


@pytest.fixture
def sock_path() -> Iterator[str]:
    # tmp_path can exceed the ~108-byte limit of a Unix socket path.
    directory = tempfile.mkdtemp(prefix="nxc-", dir="/tmp")
    try:
        yield str(Path(directory) / "nexusd.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def server(nursery: trio.Nursery, sock_path: str) -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    await nursery.start(fake.serve, sock_path)
    yield fake


@pytest.fixture
def threaded(sock_path: str) -> Iterator[ThreadedServer]:
    with ThreadedServer(sock_path).running() as ts:
        yield ts


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads or writes the real user's config or talks to a real daemon."""
    for var in ("NEXUS_SOCKET", "NEXUS_URL", "NEXUS_TOKEN", "NEXUS_ADMIN_KEY",
                "NEXUS_CREDENTIALS", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
