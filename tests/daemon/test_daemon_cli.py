"""`nexusd serve` as a user runs it: a real process, real sockets, SIGTERM.

These tests run on the real clock: the daemon is another process.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, connect_ws

from nexusd import Daemon, _cli
from nexusd._config import FIELDS, ConfigError, load_config
from nexusd.store import StoreError

NEXUSD = [sys.executable, "-m", "nexusd"]


def _environ(tmp_path: Path) -> dict[str, str]:
    """The test's environment, without settings that would leak into the daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUSD_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no config file there
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # help text unwrapped, whatever the terminal
    return env


async def test_serve_answers_then_exits_cleanly_on_sigterm(tmp_path: Path,
                                                           socket_dir: Path) -> None:
    sock = socket_dir / "n.sock"
    command = [*NEXUSD, "serve", "--socket", str(sock), "--ws", "127.0.0.1:0",
               "--http", "off", "--data", str(tmp_path / "data"), "--shutdown-grace", "5s"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE,
                                               env=_environ(tmp_path))
    assert process.stderr is not None
    log = b""
    try:
        # Started: both listeners say where they are.
        with trio.fail_after(30):
            while b"listening on ws://" not in log or b"listening on unix:" not in log:
                chunk = await process.stderr.receive_some()
                assert chunk, f"nexusd exited early:\n{log.decode()}"
                log += chunk
        port = int(re.search(rb"listening on ws://127\.0\.0\.1:(\d+)/", log)[1])  # type: ignore[index]
        assert port != 0
        assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600

        async with connect_unix(sock, channel="cli") as cli, connect_ws(port) as web:
            created = await cli.call(p.Create, ttl=60)
            assert isinstance(created, p.Created)
            sid = created.session_id
            written = await cli.call(p.Set, session_id=sid, key="greeting", value="hello")
            assert isinstance(written, p.Written) and written.seq == 1
            value = await web.call(p.Get, session_id=sid, key="greeting", token=created.token)
            assert isinstance(value, p.Value)
            assert (value.value, value.version, value.channel) == ("hello", 1, "cli")
            await web.call(p.Attach, session_id=sid, token=created.token)
            await web.next_of(p.Snapshot)

            process.send_signal(signal.SIGTERM)
            # Connected clients are told, then let go.
            assert isinstance(await web.next_event(), p.Shutdown)
            assert await web.wait_closed() == []
            assert isinstance(await cli.next_event(), p.Shutdown)
            assert await cli.wait_closed() == []
        with trio.fail_after(15):
            code = await process.wait()
            log += await _read_rest(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()
    text = log.decode()
    assert code == 0, text
    assert not sock.exists()
    lines = text.splitlines()
    assert len([line for line in lines if "listening on unix:" in line]) == 1
    assert [line for line in lines if f"listening on unix:{sock}" in line]
    ws_lines = [line for line in lines if "listening on ws://" in line]
    assert len(ws_lines) == 1 and ws_lines[0].endswith(f"listening on ws://127.0.0.1:{port}/")
    assert "received SIGTERM" in text
    assert "Traceback" not in text


async def _read_rest(stream: trio.abc.ReceiveStream) -> bytes:
    rest = b""
    while chunk := await stream.receive_some():
        rest += chunk
    return rest


def test_help_names_every_flag(tmp_path: Path) -> None:
    top = subprocess.run([*NEXUSD, "--help"], capture_output=True, text=True, timeout=30,
                         env=_environ(tmp_path))
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout and "--version" in top.stdout
    # It offers the listeners there are, and no other.
    assert "Unix socket" in top.stdout and "WebSocket" in top.stdout and "HTTP" in top.stdout
    assert "MCP" not in top.stdout

    serve = subprocess.run([*NEXUSD, "serve", "--help"], capture_output=True, text=True,
                           timeout=30, env=_environ(tmp_path))
    assert serve.returncode == 0, serve.stderr
    flags = ["--config", *("--" + name.replace("_", "-") for name in FIELDS)]
    missing = [flag for flag in flags if flag not in serve.stdout]
    assert missing == []
    # The help says which defaults apply, and a setting is never shown empty.
    assert "(default: 1048576)" in serve.stdout
    assert "NEXUSD_" in serve.stdout
    lines = {line.split()[0]: line for line in serve.stdout.splitlines()
             if line.startswith("  --")}
    # Only durations carry a unit; a rate is a number.
    assert "(default: 10)" in _help_of(serve.stdout, "--create-rate")
    assert "(default: 60s)" in _help_of(serve.stdout, "--hibernate-after")
    assert "(default: 24h)" in _help_of(serve.stdout, "--default-ttl")
    # A setting with a few values names them in its placeholder.
    assert "--require-create-key auto|always|never" in lines["--require-create-key"]
    assert "--durability process|power|memory" in lines["--durability"]
    # A default the help describes is not contradicted by another.
    hosts = _help_of(serve.stdout, "--allowed-hosts")
    assert "default: the address each listener listens on" in hosts
    assert hosts.count("default:") == 1, hosts


def _help_of(text: str, flag: str) -> str:
    """The help of `flag` in argparse's output, its lines joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {flag} "))
    end = next(i for i in range(start + 1, len(lines))
               if not lines[i].startswith(" " * 5) or lines[i].startswith("  --"))
    return " ".join(line.strip() for line in lines[start:end])


def test_bad_settings_exit_2_with_the_setting_named(tmp_path: Path) -> None:
    result = subprocess.run([*NEXUSD, "serve", "--max-frame", "lots", "--socket", "off",
                             "--ws", "off", "--http", "off", "--data", str(tmp_path)],
                            capture_output=True, text=True, timeout=30, env=_environ(tmp_path))
    assert result.returncode == 2
    assert "max_frame" in result.stderr
    result = subprocess.run([*NEXUSD], capture_output=True, text=True, timeout=30,
                            env=_environ(tmp_path))
    assert result.returncode == 2 and "serve" in result.stdout


async def test_the_gc_policy_freezes_survivors_and_collects_in_full_on_its_own_schedule(
        autojump_clock: object, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_cli, "GC_FULL_EVERY", 25.0)
    threshold = gc.get_threshold()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cli._gc_policy)
            await trio.sleep(_cli.GC_FREEZE_EVERY + 0.1)
            # CPython collects no more in full by itself; survivors are frozen.
            assert gc.get_threshold() == (*threshold[:2], _cli.GC_OLDEST_THRESHOLD)
            assert gc.get_freeze_count() > 0
            assert "full garbage collection" not in caplog.text
            with caplog.at_level(logging.INFO, logger="nexusd"):
                await trio.sleep(20)
            assert re.search(r"full garbage collection: \d+ unreachable objects, \d+ ms",
                             caplog.text)
            nursery.cancel_scope.cancel()
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def test_the_gc_policy_collects_young_objects_cpython_does_not_count(
        autojump_clock: object) -> None:
    # CPython counts allocations minus deallocations: new objects made while
    # as many old (frozen) ones die trigger no collection, and the young
    # generation grows until one collection walks it all at once (with
    # 20,000 actors woken together: 260,000 objects, a 200-400 ms pause).
    threshold = gc.get_threshold()
    old: list[list[int]] = [[] for _ in range(30_000)]
    gc.freeze()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cli._gc_policy)
            await trio.lowlevel.checkpoint()
            young: list[list[int]] = []
            for _ in range(30_000):
                old.pop()
                young.append([])
            assert len(gc.get_objects(0)) >= 30_000  # CPython has not collected them
            await trio.sleep(1.5 * _cli.GC_YOUNG_EVERY)
            assert len(gc.get_objects(0)) + len(gc.get_objects(1)) < 5_000
            nursery.cancel_scope.cancel()
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _serve_error(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NEXUSD, "serve", "--data", str(tmp_path / "data"),
                           "--durability", "memory", "--http", "off", *flags],
                          capture_output=True, text=True, timeout=30, env=_environ(tmp_path))


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``nexusd: error:`` line of a failed run, which has no traceback."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nexusd: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve_error(tmp_path, "--socket", "off", "--ws", f"127.0.0.1:{port}")
    assert _error_line(result) == (
        f"nexusd: error: address 127.0.0.1:{port} is in use (another nexusd?)")


@pytest.mark.parametrize("flag", ["--ws", "--http"])
def test_an_address_not_on_this_machine_is_one_error_line_naming_it(tmp_path: Path,
                                                                    flag: str) -> None:
    # 192.0.2.1 (TEST-NET-1) is nobody's address: binding it fails.
    others = {"--ws": "off", "--http": "off"}
    others[flag] = "192.0.2.1:80"
    result = _serve_error(tmp_path, "--socket", "off", "--ws", others["--ws"],
                          "--http", others["--http"])
    assert _error_line(result).startswith("nexusd: error: cannot listen on 192.0.2.1:80: ")


async def test_a_socket_a_live_daemon_serves_is_one_error_line(daemon: Daemon,
                                                               tmp_path: Path) -> None:
    assert daemon.socket_path is not None
    command = [*NEXUSD, "serve", "--data", str(tmp_path / "data2"), "--durability", "memory",
               "--socket", str(daemon.socket_path), "--ws", "off", "--http", "off"]
    with trio.fail_after(30):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False, env=_environ(tmp_path))
    result = subprocess.CompletedProcess(command, done.returncode, done.stdout.decode(),
                                         done.stderr.decode())
    assert _error_line(result) == (
        f"nexusd: error: address {daemon.socket_path} is in use (another nexusd?)")
    # The live daemon keeps its socket, and still answers on it.
    async with connect_unix(daemon.socket_path) as client:
        assert isinstance(await client.call(p.Ping), p.Pong)


@pytest.mark.parametrize("failure", [
    ExceptionGroup("nested", [ExceptionGroup("deeper", [
        OSError(errno.EADDRINUSE, "address 127.0.0.1:1 is in use (another nexusd?)")])]),
    ExceptionGroup("several", [
        OSError(errno.EACCES, "Permission denied", "/data/keys"),
        ExceptionGroup("inner", [StoreError("the store is locked")])]),
], ids=["nested", "several"])
def test_start_up_errors_are_one_line_whatever_their_shape(
        failure: ExceptionGroup[Exception], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def serve(config: object) -> None:
        raise failure
    monkeypatch.setattr(_cli, "_serve", serve)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code = _cli.main(["serve", "--socket", "off", "--ws", "off", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines() == [{
        "nested": "nexusd: error: address 127.0.0.1:1 is in use (another nexusd?)",
        "several": "nexusd: error: Permission denied: /data/keys; the store is locked",
    }[failure.message]]


def test_an_unexpected_error_is_one_line_and_its_traceback_is_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    async def serve(config: object) -> None:
        raise ExceptionGroup("bug", [ZeroDivisionError("division by zero")])
    monkeypatch.setattr(_cli, "_serve", serve)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code = _cli.main(["serve", "--socket", "off", "--ws", "off", "--data", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "nexusd: error: unexpected ZeroDivisionError: division by zero"]
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.exc_info is not None


def test_the_http_listener_setting(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}  # no config file
    assert load_config(None, env, {}).http == "127.0.0.1:8000"  # the guide's port
    assert load_config(None, {**env, "NEXUSD_HTTP": "off"}, {}).http is None
    assert load_config(None, env, {"http": "[::1]:0"}).http == "[::1]:0"
    with pytest.raises(ConfigError, match="http must be HOST:PORT or off, not 'nope'"):
        load_config(None, env, {"http": "nope"})
    with pytest.raises(ConfigError, match="sse_queue must be at least 1"):
        load_config(None, env, {"sse_queue": "0"})
