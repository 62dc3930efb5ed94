"""Fixtures of the daemon's tests: a daemon started in-process, and clients."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from raw_client import make_config, run_daemon

from nexusd import Daemon


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon_config(**settings): Config settings for the `daemon` fixture")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~100 bytes,
    which pytest's tmp_path can exceed)."""
    path = Path(tempfile.mkdtemp(prefix="nx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def daemon(request: pytest.FixtureRequest, tmp_path: Path,
                 socket_dir: Path) -> AsyncIterator[Daemon]:
    """A running daemon; `@pytest.mark.daemon_config(...)` overrides settings."""
    marker = request.node.get_closest_marker("daemon_config")
    settings = dict(marker.kwargs) if marker is not None else {}
    async with run_daemon(make_config(tmp_path, socket_dir, **settings)) as d:
        yield d
