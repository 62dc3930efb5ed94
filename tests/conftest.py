"""Fixtures and options shared by every suite."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from cluster_procs import Cluster
from redis_server import RedisServer, redis_server_binary


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


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The path of Debian's `redis-server` (Redis 7). Tests that need one are
    skipped where it is not installed, except in CI (`$CI` set), where the
    Redis engine's tests must run."""
    binary = redis_server_binary()
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and $CI is set: the Redis engine's tests must run")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """One `redis-server` (Redis 7, AOF on, fsync every second) for the whole
    run; tests keep apart by key prefix (`redis_prefix`), never by FLUSHDB."""
    with RedisServer() as server:
        yield server


_prefixes = itertools.count()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test of this run uses."""
    return f"t{os.getpid()}-{next(_prefixes)}"


@pytest.fixture
async def cluster(tmp_path: Path, socket_dir: Path, redis_server: RedisServer,
                  redis_prefix: str) -> AsyncIterator[Cluster]:
    """A cluster with no daemon yet (`await cluster.start(n)`), on the run's Redis."""
    async with AsyncExitStack() as stack:
        yield Cluster(tmp_path, socket_dir, redis_server.url, redis_prefix, stack)
