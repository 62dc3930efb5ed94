"""Deadlines are judged by the wall clock as it reads now, not by a wall time
read once at start plus trio's (monotonic) clock: a wall clock that steps
forward (a laptop resumed, NTP) expires what is due within the reaper's
`WALL_RECHECK`; one that steps back expires nothing early."""

from __future__ import annotations

from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, make_config, run_daemon

from nexusd._reaper import WALL_RECHECK

HOUR = 3600.0


class SteppingWall:
    """A wall clock that moves with trio's clock, and steps when told."""

    def __init__(self) -> None:
        self.start = 1_750_000_000.0 - trio.current_time()

    def __call__(self) -> float:
        return self.start + trio.current_time()

    def step(self, seconds: float) -> None:
        self.start += seconds


async def test_a_wall_clock_step_forward_expires_what_is_due_promptly(
        tmp_path: Path, socket_dir: Path, autojump_clock: object) -> None:
    wall = SteppingWall()
    config = make_config(tmp_path, socket_dir, hibernate_after=60.0)
    async with run_daemon(config, wall=wall) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c, \
                connect_unix(daemon.socket_path) as watcher:
            watched = await c.call(p.Create, ttl=HOUR)  # active: the reaper's heap
            dormant = await c.call(p.Create, ttl=HOUR)  # hibernated: the store's index
            kept = await c.call(p.Create, ttl=3 * HOUR, idle_timeout=3 * HOUR)
            for created in (watched, dormant, kept):
                assert isinstance(created, p.Created), created
            await watcher.call(p.Attach, session_id=watched.session_id, token=watched.token)
            await watcher.next_of(p.Snapshot)
            await trio.sleep(120)
            assert daemon.registry.active(dormant.session_id) is None  # hibernated
            assert daemon.registry.active(watched.session_id) is not None

            # The machine sleeps for an hour: trio's clock does not see it.
            wall.step(HOUR)
            stepped = trio.current_time()
            watcher.timeout = 2 * WALL_RECHECK
            expired = await watcher.next_of(p.Expired)
            assert expired.session_id == watched.session_id
            assert trio.current_time() - stepped <= WALL_RECHECK + 1e-6
            await trio.sleep(WALL_RECHECK)
            assert await daemon.store.count() == 1
            for gone in (watched, dormant):
                error = await c.call(p.Get, session_id=gone.session_id, token=gone.token)
                assert isinstance(error, p.Error) and error.code == "expired", error
            alive = await c.call(p.Get, session_id=kept.session_id, token=kept.token)
            assert isinstance(alive, p.StateReply), alive


async def test_a_wall_clock_step_back_expires_nothing_early(
        tmp_path: Path, socket_dir: Path, autojump_clock: object) -> None:
    wall = SteppingWall()
    config = make_config(tmp_path, socket_dir, hibernate_after=60.0)
    async with run_daemon(config, wall=wall) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c, \
                connect_unix(daemon.socket_path) as watcher:
            watched = await c.call(p.Create, ttl=HOUR)
            dormant = await c.call(p.Create, ttl=HOUR)
            assert isinstance(watched, p.Created) and isinstance(dormant, p.Created)
            await watcher.call(p.Attach, session_id=watched.session_id, token=watched.token)
            await watcher.next_of(p.Snapshot)
            t0 = trio.current_time()
            await trio.sleep(HOUR / 2)
            assert daemon.registry.active(dormant.session_id) is None  # hibernated

            # The clock is set back half an hour: the sessions have an hour
            # left on it, and trio's clock reaching t0 + HOUR means nothing.
            wall.step(-HOUR / 2)
            await trio.sleep_until(t0 + HOUR + 10)
            assert await daemon.store.count() == 2
            assert not watcher.pending_events()
            for s in (watched, dormant):
                alive = await c.call(p.Get, session_id=s.session_id, token=s.token)
                assert isinstance(alive, p.StateReply), alive

            # They expire when the wall clock reaches their deadline.
            watcher.timeout = HOUR
            expired = await watcher.next_of(p.Expired)
            assert expired.session_id == watched.session_id
            assert wall() == pytest.approx(watched.expires_at, abs=1e-3)
            assert trio.current_time() == pytest.approx(t0 + 1.5 * HOUR, abs=1e-3)
            await trio.sleep(WALL_RECHECK)
            assert await daemon.store.count() == 0
