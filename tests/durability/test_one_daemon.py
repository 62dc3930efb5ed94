"""One daemon per data directory: a second `nexusd serve` on the same
`--data` refuses to start, naming the first one's pid; once the first is
killed (`kill -9`: nothing cleaned up), the next one starts."""

from __future__ import annotations

from pathlib import Path

import nexus_protocol as p
import trio
from daemon_process import START_TIMEOUT, daemon_process
from raw_client import connect_unix


async def test_a_second_daemon_on_the_same_data_refuses_to_start(
        tmp_path: Path, socket_dir: Path) -> None:
    data = tmp_path / "data"
    async with daemon_process(data, socket_dir / "first.sock", tmp_path / "first.log") as first:
        await first.wait_ready()
        assert first.proc is not None
        async with connect_unix(first.socket) as c:
            created = await c.call(p.Create, ttl=3600)
            assert isinstance(created, p.Created), created
            assert isinstance(await c.call(p.Set, session_id=created.session_id, key="k",
                                           value=1), p.Written)

        async with daemon_process(data, socket_dir / "second.sock",
                                  tmp_path / "second.log") as second:
            assert second.proc is not None
            with trio.fail_after(START_TIMEOUT):
                assert await second.proc.wait() == 1
            errors = [line for line in second.log_text().splitlines()
                      if line.startswith("nexusd: error:")]
            assert errors == [f"nexusd: error: the data directory {data} is in use by "
                              f"nexusd pid {first.proc.pid}"]
            assert not (socket_dir / "second.sock").exists()

        # The first one carries on, unharmed.
        async with connect_unix(first.socket) as c:
            got = await c.call(p.Get, session_id=created.session_id, key="k",
                               token=created.token)
            assert isinstance(got, p.Value) and got.value == 1, got
        await first.kill()

    # kill -9 left the lock file behind, but not the lock.
    async with daemon_process(data, socket_dir / "third.sock", tmp_path / "third.log") as third:
        await third.wait_ready()
        async with connect_unix(third.socket) as c:
            got = await c.call(p.Get, session_id=created.session_id, key="k",
                               token=created.token)
            assert isinstance(got, p.Value) and got.value == 1, got
