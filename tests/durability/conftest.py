"""Fixtures of the durability tests: the daemon as a subprocess that a test
kills, and how many kill cycles to run.

The crash tests run ~10 kill cycles by default. For the long run, pass
``--run-slow`` (200 cycles) or set NEXUS_CRASH_CYCLES to any count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The daemon tests' raw protocol client (tests/daemon/raw_client.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

#: Kill cycles of the crash tests, by default and with --run-slow.
DEFAULT_CYCLES = 10
SLOW_CYCLES = 200




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


