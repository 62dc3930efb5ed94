"""Fixtures of the bus contract: every bus, and subscribers with a bounded queue."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bus_helpers import RETENTION

from nexusd._bus import Bus, LocalBus

# The daemon tests' raw protocol client, for the contract across daemons.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))


@pytest.fixture(params=["LocalBus"])
def bus(request: pytest.FixtureRequest) -> Bus:
    """Every bus, configured with the same retention: the contract holds for all."""
    return LocalBus(retention=RETENTION)
