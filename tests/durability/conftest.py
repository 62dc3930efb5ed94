"""Fixtures of the durability tests: the daemon as a subprocess that a test
kills, and how many kill cycles to run.

The crash tests run ~10 kill cycles by default. For the long run, either set
NEXUS_CRASH_CYCLES (works however pytest is invoked), or pass --run-slow
(200 cycles) when running this directory: ``pytest tests/durability --run-slow``.
pytest only reads options from the conftest files it loads at start-up, so
``--run-slow`` from the repository root needs it registered in a root conftest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The daemon tests' raw protocol client (tests/daemon/raw_client.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

#: Kill cycles of the crash tests, by default and with --run-slow.
DEFAULT_CYCLES = 10
SLOW_CYCLES = 200


def pytest_addoption(parser: pytest.Parser) -> None:
    with contextlib.suppress(ValueError):  # a root conftest registered it already
        parser.addoption("--run-slow", action="store_true", default=False,
                         help="run the long variants of the crash tests (200 kill cycles)")


@pytest.fixture
def crash_cycles(request: pytest.FixtureRequest) -> int:
    """Kill cycles for the main crash test: $NEXUS_CRASH_CYCLES, else 200 with
    --run-slow, else 10."""
    env = os.environ.get("NEXUS_CRASH_CYCLES")
    if env:
        return int(env)
    if request.config.getoption("--run-slow", default=False):
        return SLOW_CYCLES
    return DEFAULT_CYCLES


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~100 bytes,
    which pytest's tmp_path can exceed)."""
    path = Path(tempfile.mkdtemp(prefix="nx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
