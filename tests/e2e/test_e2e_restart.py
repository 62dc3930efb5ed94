"""A watch rides out a daemon restart: SIGTERM, start again on the same data
directory and socket, and the watch resumes after its last seq, missing
nothing and repeating nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from nexus_client import Backoff, Change, Snapshot, Watch, open_client

from ._procs import DaemonProcess, clean_environ

#: Hard bound on each wait for an event, and on each request (which may wait
#: for the client to reconnect).
WAIT = 20.0

#: Reconnect quickly and keep trying: the test's own bounds decide when to give up.
FAST = Backoff(base=0.05, max_delay=0.25, max_attempts=None)


async def next_change(events: Watch) -> Change:
    with trio.fail_after(WAIT):
        event: Any = await events.__anext__()
    assert isinstance(event, Change), event
    return event


async def test_watch_resumes_after_a_restart_without_gaps_or_duplicates(
        tmp_path: Path, socket_dir: Path, home: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    env = clean_environ(home)
    # Default durability: what was acknowledged before the stop is on disk.
    first = DaemonProcess(data, socket, tmp_path / "first.log", env=env, ws=False)
    second = DaemonProcess(data, socket, tmp_path / "second.log", env=env, ws=False)
    try:
        first.start()
        await first.wait_ready_async()
        async with open_client(str(socket), channel="api", reconnect=FAST,
                               request_timeout=WAIT) as writer, \
                open_client(str(socket), channel="web", reconnect=FAST,
                            request_timeout=WAIT) as watcher:
            info = await writer.create_session("api")
            sid = info.session_id
            watcher.set_token(sid, info.token)
            async with watcher.watch(sid) as events:
                with trio.fail_after(WAIT):
                    snapshot = await events.__anext__()
                assert isinstance(snapshot, Snapshot) and snapshot.seq == 0

                for i in range(1, 6):
                    assert (await writer.set(sid, f"k{i % 3}", i)).seq == i
                before = [await next_change(events) for _ in range(5)]
                assert events.statistics().attaches == 1

                assert await first.stop_async() == 0, first.log_text()
                second.start()
                await second.wait_ready_async()

                # Written as soon as the daemon is back: the watcher may be
                # re-attached already (live) or not yet (replayed on resume).
                for i in range(6, 11):
                    assert (await writer.set(sid, f"k{i % 3}", i)).seq == i
                after = [await next_change(events) for _ in range(5)]

                stats = events.statistics()
                resumed = events.attached
                final = await writer.get(sid)

        seqs = [c.seq for c in before + after]
        assert seqs == list(range(1, 11))  # strictly consecutive: no gap, no duplicate
        assert [c.value for c in before + after] == list(range(1, 11))
        # It resumed after its last seq rather than starting over: the daemon
        # had the changes, so no snapshot replaced the state.
        assert stats.attaches == 2 and stats.cursor == 10
        assert resumed is not None and resumed.recovered
        # The session, with every acknowledged write, survived the restart.
        assert final.seq == 10
        assert final.values == {"k0": 9, "k1": 10, "k2": 8}
        assert second.proc is not None and first.proc is not None
        assert second.proc.pid != first.proc.pid
        assert await second.stop_async() == 0, second.log_text()
    finally:
        first.kill()
        second.kill()
    assert "Traceback" not in first.log_text() + second.log_text()
