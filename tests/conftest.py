"""Fixtures and options shared by every suite."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="run the long variants (e.g. 200 kill -9 cycles of the crash tests)")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~100 bytes,
    which pytest's tmp_path can exceed)."""
    path = Path(tempfile.mkdtemp(prefix="nx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
