"""Fixtures of the daemon's tests: a daemon started in-process, and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raw_client import make_config, run_daemon

from nexusd import Daemon


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon_config(**settings): Config settings for the `daemon` fixture")


@pytest.fixture
async def daemon(request: pytest.FixtureRequest, tmp_path: Path,
                 socket_dir: Path) -> AsyncIterator[Daemon]:
    """A running daemon; `@pytest.mark.daemon_config(...)` overrides settings."""
    marker = request.node.get_closest_marker("daemon_config")
    settings = dict(marker.kwargs) if marker is not None else {}
    async with run_daemon(make_config(tmp_path, socket_dir, **settings)) as d:
        yield d
