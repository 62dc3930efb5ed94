"""Master key rotation on a running daemon: `nexusd keys rotate` adds a key and
tells the daemon, which re-wraps every session's data key in the background;
the old key can then be retired, and everything still reads after a restart."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import nexus_protocol as p
import pytest
from daemon_process import daemon_process, wait_until
from raw_client import connect_unix, make_config, run_daemon

from nexusd._daemon import PID_FILE
from nexusd.store._schema import DB_FILE


def _keys(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nexusd", "keys", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=30, check=False)


def _key_ids_in_use(data: Path) -> dict[str, int]:
    uri = f"file:{data / DB_FILE}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return dict(conn.execute("SELECT key_id, count(*) FROM sessions GROUP BY key_id"))


def _ciphertexts(data: Path) -> set[bytes]:
    uri = f"file:{data / DB_FILE}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT payload FROM events")}


async def test_rotate_rewraps_in_the_background_then_retire(tmp_path: Path,
                                                            socket_dir: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    values: dict[str, tuple[str, int]] = {}
    async with daemon_process(data, socket, tmp_path / "first.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket) as c:
            for i in range(20):
                created = await c.call(p.Create)
                assert isinstance(created, p.Created)
                written = await c.call(p.Set, session_id=created.session_id, key="k",
                                       value=f"secret-{i}")
                assert isinstance(written, p.Written)
                values[created.session_id] = (created.token, i)
        (old,) = _key_ids_in_use(data)
        ciphertexts = _ciphertexts(data)

        rotated = _keys(data, "rotate")
        assert rotated.returncode == 0, rotated.stderr
        assert "told the running daemon" in rotated.stdout
        new = rotated.stdout.split("added master key ")[1].split(";")[0]
        assert new != old

        await wait_until(lambda: _key_ids_in_use(data) == {new: 20},
                         "every data key re-wrapped under the new master key")
        assert "re-wrapped 20 session keys" in daemon.log_text()
        # Values were not rewritten: the same ciphertexts are still there.
        assert _ciphertexts(data) == ciphertexts
        assert await daemon.terminate() == 0

    retired = _keys(data, "retire", old)
    assert retired.returncode == 0, retired.stderr
    listed = _keys(data, "list")
    assert old not in listed.stdout and new in listed.stdout

    async with daemon_process(data, socket, tmp_path / "second.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket) as c:
            for sid, (token, i) in values.items():
                value = await c.call(p.Get, session_id=sid, key="k", token=token)
                assert isinstance(value, p.Value), value
                assert value.value == f"secret-{i}"
        assert await daemon.terminate() == 0


async def test_retiring_a_key_still_in_use_is_refused(tmp_path: Path,
                                                      socket_dir: Path) -> None:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    async with daemon_process(data, socket, tmp_path / "d.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket) as c:
            assert isinstance(await c.call(p.Create), p.Created)
        assert await daemon.terminate() == 0
    (old,) = _key_ids_in_use(data)
    # Rotated with no daemon running: nothing re-wraps until one starts.
    rotated = _keys(data, "rotate")
    assert rotated.returncode == 0 and "no daemon is running" in rotated.stdout
    refused = _keys(data, "retire", old)
    assert refused.returncode == 1
    assert refused.stderr.startswith("nexusd: error:") and old in refused.stderr
    assert _key_ids_in_use(data) == {old: 1}


@pytest.mark.parametrize(("durability", "has_keys"), [("process", True), ("memory", False)])
async def test_a_daemon_reloads_keys_only_if_its_store_keeps_them(
        tmp_path: Path, socket_dir: Path, caplog: pytest.LogCaptureFixture, durability: str,
        has_keys: bool) -> None:
    data = tmp_path / "data"
    config = make_config(data, socket_dir, ws=None, durability=durability)
    with caplog.at_level(logging.INFO, logger="nexusd"):
        async with run_daemon(config) as daemon:
            # The pid file is how `nexusd keys rotate` finds the daemon to tell.
            assert (data / PID_FILE).exists() == has_keys
            await daemon.reload_keys()
    assert not (data / PID_FILE).exists()
    if has_keys:
        assert "key ring reloaded; current master key" in caplog.text
    else:
        assert "no key ring to reload: durability is memory" in caplog.text

