"""The reaper's own heap of active sessions' deadlines, on its own.

The store's deadline index also wakes the reaper; here the store hides its
index, so only the heap can expire an active session on time.
"""

from __future__ import annotations

from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, make_config, run_daemon

from nexusd import MemoryStore
from nexusd.store._interface import SessionMeta


class NoIndexStore(MemoryStore):
    """A store whose deadline index never reports anything."""

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        return []

    async def next_deadline(self) -> float | None:
        return None


async def test_heap_expires_active_sessions_on_time(tmp_path: Path, socket_dir: Path,
                                                    autojump_clock: object) -> None:
    config = make_config(tmp_path, socket_dir)
    async with run_daemon(config, store=NoIndexStore()) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c, \
                connect_unix(daemon.socket_path) as sub:
            created = await c.call(p.Create, ttl=3600, idle_timeout=20)
            sid = created.session_id
            t0 = trio.current_time()
            await sub.call(p.Attach, session_id=sid, token=created.token)
            await sub.next_of(p.Snapshot)
            # Activity at t0+15 moves the idle deadline from t0+20 to t0+35;
            # the heap entry for t0+20 is found stale and pushed back.
            await trio.sleep(15)
            await c.call(p.Get, session_id=sid, key="k")
            sub.timeout = 60
            expired = await sub.next_of(p.Expired)
            assert expired.reason == "idle"
            assert trio.current_time() == pytest.approx(t0 + 35, abs=1e-3)
            assert daemon.registry.active(sid) is None
            stats = daemon.reaper.statistics()
            assert stats.dormant_expired == 0
