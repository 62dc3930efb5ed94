"""How late expiry is against the wall clock: ``python -m bench.clock_drift``.

An in-process daemon (memory store) runs under trio's `MockClock` with a
wall clock that does not keep pace with trio's monotonic one, as real ones
do not: one that gains 1,139 ppm (410 ms in 6 minutes, the drift seen on a
machine whose clock NTP was slewing), with a watched session of 6 minutes'
TTL; and one stepped forward an hour 100 s in (a laptop suspended for an
hour, then resumed), with a watched session of 2 hours' TTL. The figure is
the wall-clock time at which its `expired` arrives minus its `expires_at`.

"fixed offset" is the former clock: wall time read once at start plus trio's
clock, so the daemon is given that as its wall clock (its deadlines and its
sleeps then agree with each other, as they did); "wall clock" is the daemon
reading the drifting wall clock itself. Lateness is measured against the
drifting (true) wall clock in both. Virtual time: the run takes a second.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nexus_protocol as p
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "daemon"))
from raw_client import connect_unix, make_config, run_daemon

PPM = 410e-3 / 360.0 * 1e6
SUSPEND_AT, SUSPEND = 100.0, 3600.0


def drifting(ppm: float) -> Callable[[], float]:
    start, base = 1_750_000_000.0, trio.current_time()
    return lambda: start + (trio.current_time() - base) * (1 + ppm / 1e6)


class Suspended:
    def __init__(self) -> None:
        self.start, self.base = 1_750_000_000.0, trio.current_time()
        self.step = 0.0

    def __call__(self) -> float:
        return self.start + trio.current_time() - self.base + self.step


def fixed_offset(true_wall: Callable[[], float]) -> Callable[[], float]:
    offset = true_wall() - trio.current_time()
    return lambda: trio.current_time() + offset


async def lateness(true_wall: Callable[[], float], daemon_wall: Callable[[], float],
                   suspend: Suspended | None, socket_dir: Path) -> float:
    ttl = 360.0 if suspend is None else 7200.0
    config = make_config(socket_dir, socket_dir, ws=None, hibernate_after=3600.0)
    async with run_daemon(config, wall=daemon_wall) as daemon:
        assert daemon.socket_path is not None
        async with connect_unix(daemon.socket_path) as c, \
                connect_unix(daemon.socket_path) as watcher:
            created = await c.call(p.Create, ttl=ttl, idle_timeout=ttl)
            assert isinstance(created, p.Created)
            await watcher.call(p.Attach, session_id=created.session_id, token=created.token)
            await watcher.next_of(p.Snapshot)
            if suspend is not None:
                await trio.sleep(SUSPEND_AT)
                suspend.step = SUSPEND
            watcher.timeout = 2 * SUSPEND
            await watcher.next_of(p.Expired)
            return true_wall() - created.expires_at


async def main() -> None:
    print("expiry lateness vs the wall clock")
    for name in ("drift", "suspend"):
        for mode in ("fixed offset", "wall clock"):
            with tempfile.TemporaryDirectory() as tmp:
                suspend = Suspended() if name == "suspend" else None
                true_wall = suspend if suspend is not None else drifting(PPM)
                daemon_wall = fixed_offset(true_wall) if mode == "fixed offset" else true_wall
                late = await lateness(true_wall, daemon_wall, suspend, Path(tmp))
            what = (f"TTL 360 s, wall gains {PPM:.0f} ppm" if name == "drift"
                    else f"TTL 7200 s, +{SUSPEND:g} s at {SUSPEND_AT:g} s")
            print(f"  {what:34} {mode:13} late by {late * 1000:10.1f} ms")


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
