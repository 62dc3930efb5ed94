"""Every documented ``nexus`` failure: one ``nexus: error: ...`` line that says
what went wrong, and the exit code from the table in ``nexus --help``.

Sessions are made in-process with ``Nexus(save_credentials=True)``, which
stores their tokens where the CLI looks, as ``nexus session create`` does:
each CLI start costs a third of a second, and creating is not what these
tests are about. Independent commands run side by side.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import trio
from nexus_client import CredentialStore, ExitCode, Nexus, SessionExpired, open_client

from ._procs import CLI_TIMEOUT, NEXUS, Cli, DaemonProcess

#: Hard bound on in-process calls and on waiting for a session to end, in seconds.
WAIT = 10.0


def create(daemon: DaemonProcess, *, ttl: float | None = None) -> str:
    """A new session whose token is in the user's credentials file; its id."""
    with Nexus(str(daemon.socket), save_credentials=True, timeout=WAIT) as app:
        return app.create_session(channel="api", ttl=ttl)


def stored_token(cli: Cli, sid: str) -> str:
    token = CredentialStore(cli.env["NEXUS_CREDENTIALS"]).get(sid)
    assert token is not None
    return token


def test_help_lists_every_exit_code(offline_cli: Cli) -> None:
    r = offline_cli.run("--help")
    assert r.code == 0, r.err
    table = r.out.split("exit codes:", 1)[1]
    for code in ExitCode:
        assert f"  {int(code):>3}  " in table, code
    # The codes these tests expect, by meaning.
    assert {c.name: int(c) for c in ExitCode if 2 <= c <= 10} == {
        "USAGE": 2, "NOT_FOUND": 3, "EXPIRED": 4, "UNAUTHORIZED": 5, "CONFLICT": 6,
        "UNAVAILABLE": 7, "CONNECTION": 8, "PROTOCOL": 9, "INVALIDATED": 10}


def test_usage_errors_exit_2(offline_cli: Cli) -> None:
    cases = [
        ((), "the following arguments are required: COMMAND"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("set", "0123"), "the following arguments are required: KEY, VALUE"),
        (("session", "create", "--ttl", "soon"), "invalid duration 'soon'"),
        (("set", "0123", "k", "v", "--expect", "-1"), "expected a non-negative integer"),
        (("--socket", "/tmp/x.sock", "--url", "ws://127.0.0.1:1/", "ping"),
         "give either --socket or --url, not both"),
    ]
    results = offline_cli.run_all([args for args, _ in cases])
    for (args, text), r in zip(cases, results, strict=True):
        assert r.code == 2, (args, r.err)
        assert text in r.error_line, (args, r.err)


def test_usage_error_found_after_connecting_exits_2(cli: Cli, daemon: DaemonProcess) -> None:
    r = cli.run("patch", create(daemon))
    assert r.code == 2
    assert r.error_line == "nexus: error: patch needs a JSON object, --set K=V or --delete K"


def test_not_found_exits_3(cli: Cli, daemon: DaemonProcess) -> None:
    absent = "0123456789abcdef0123456789abcdef"
    sid = create(daemon)
    no_session, no_key, never_read = cli.run_all([
        ("get", absent, "theme", "--token", "nxs_whatever"), ("delete", sid, "never-set"),
        ("get", sid, "never-set")])
    assert no_session.code == 3
    assert no_session.error_line == f"nexus: error: session {absent} not found"
    for r in (no_key, never_read):
        assert (r.code, r.out) == (3, "")
        assert r.error_line == (
            f"nexus: error: no key 'never-set' in the session (session {sid})")


def test_expired_exits_4(cli: Cli, daemon: DaemonProcess) -> None:
    with Nexus(str(daemon.socket), save_credentials=True, timeout=WAIT) as app:
        sid = app.create_session(channel="api", ttl=1.0)
        # Wait for the deadline, polling cheaply in-process.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                app.get_session_data(sid, "k")
            except SessionExpired:
                break
            assert time.monotonic() < deadline, "the session did not expire"
            time.sleep(0.05)
    for r in cli.run_all([("get", sid, "k"), ("set", sid, "k", "1")]):
        assert r.code == 4
        assert f"session {sid}" in r.error_line and "has expired (ttl)" in r.error_line


def test_invalidated_exits_4(cli: Cli, daemon: DaemonProcess) -> None:
    sid = create(daemon)
    token = stored_token(cli, sid)  # `invalidate` forgets it
    r = cli.run("invalidate", sid, "--reason", "done")
    assert (r.code, r.out) == (0, f"session {sid} invalidated\n"), r.err
    r = cli.run("get", sid, "k", "--token", token)
    assert r.code == 4
    assert f"session {sid}" in r.error_line and "was invalidated" in r.error_line


async def test_watch_exits_10_when_invalidated_and_4_when_expired(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path) -> None:

    async def watch_until_the_end(expected: ExitCode, text: str) -> None:
        async with open_client(str(daemon.socket), request_timeout=WAIT) as client:
            info = await client.create_session("api")
            sid, env = info.session_id, {**cli.env, "NEXUS_TOKEN": info.token}
            errors = tmp_path / f"watch-{sid}.err"
            with errors.open("wb") as stderr, trio.fail_after(CLI_TIMEOUT):
                watch = await trio.lowlevel.open_process(
                    [*NEXUS, "watch", sid], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=stderr, env=env)
            try:
                assert watch.stdout is not None
                out = b""
                with trio.fail_after(CLI_TIMEOUT):
                    while b"snapshot" not in out:  # attached
                        chunk = await watch.stdout.receive_some()
                        assert chunk, (out, errors.read_text())
                        out += chunk
                if expected is ExitCode.INVALIDATED:
                    r = await cli.arun("invalidate", sid, "--reason", "done", env=env)
                    assert r.code == 0, r.err
                else:
                    # Due half a second from now; the watch is attached already.
                    await client.renew(sid, 0.5)
                with trio.fail_after(WAIT):
                    while chunk := await watch.stdout.receive_some():
                        out += chunk
                    assert await watch.wait() == expected, errors.read_text()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    if watch.returncode is None:
                        watch.kill()
                    await watch.wait()
                    assert watch.stdout is not None
                    await watch.stdout.aclose()
        assert f"session {sid} {text}" in out.decode()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_until_the_end, ExitCode.INVALIDATED, "invalidated (done)")
        nursery.start_soon(watch_until_the_end, ExitCode.EXPIRED, "expired (ttl)")


def test_unauthorized_exits_5(cli: Cli, daemon: DaemonProcess) -> None:
    sid = create(daemon)
    r, grant = cli.run_all([("get", sid, "k", "--token", "nxs_not-the-token"),
                            ("grant", sid, "--scope", "read")])
    assert r.code == 5
    assert r.error_line.startswith(f"nexus: error: not authorized for session {sid}")
    assert "token is not valid" in r.error_line

    # A real token whose scope is too narrow is refused too.
    assert grant.code == 0, grant.err
    read_only = grant.out.strip()
    read, write = cli.run_all([("get", sid, "--token", read_only),
                               ("set", sid, "k", "1", "--token", read_only)])
    assert read.code == 0, read.err
    assert write.code == 5
    assert write.error_line.startswith(f"nexus: error: not allowed on session {sid}")
    assert "write" in write.error_line


def test_admin_request_over_websocket_without_admin_key_exits_5(
        cli: Cli, daemon: DaemonProcess) -> None:
    web = {"NEXUS_SOCKET": "", "NEXUS_URL": daemon.ws_url}
    key = (daemon.data / "admin.key").read_text().strip()
    status, sessions, admin = cli.run_all(
        [("status",), ("sessions",), ("status", "--admin-key", key)], env=web)
    for r, request in ((status, "stats"), (sessions, "list_sessions")):
        assert r.code == 5, r.err
        assert r.error_line == f"nexus: error: not allowed: '{request}' needs the admin credential"
        assert "nexus: hint: admin only" in r.err
    # With the daemon's admin key the same request is served.
    assert admin.code == 0, admin.err
    assert admin.out.startswith(f"daemon: nexusd/0.1.0 at {daemon.ws_url}")


def test_conflict_exits_6_and_changes_nothing(cli: Cli, daemon: DaemonProcess) -> None:
    sid = create(daemon)
    assert cli.run("set", sid, "k", "1").code == 0
    r = cli.run("set", sid, "k", "2", "--expect", "5")
    assert r.code == 6
    assert r.error_line.startswith(f"nexus: error: version conflict on session {sid}")
    assert "'k' is at version 1, not 5" in r.error_line
    r = cli.run("get", sid, "k")
    assert (r.code, r.out) == (0, "1\n")


def test_run_of_a_workflow_no_worker_serves_exits_3(cli: Cli, daemon: DaemonProcess) -> None:
    r = cli.run("run", "data-processor", "--session", create(daemon), "--continue")
    assert r.code == 3
    assert "unknown workflow 'data-processor': no worker has registered it" in r.error_line
    assert "nexus: hint: start a worker serving it: `nexus worker MODULE:OBJECT`" in r.err


def test_cannot_connect_exits_8(offline_cli: Cli, socket_dir: Path) -> None:
    absent = socket_dir / "absent.sock"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unix, web = offline_cli.run_all([
        ("--socket", str(absent), "ping"),
        ("--url", f"ws://127.0.0.1:{port}/", "--timeout", "5", "ping")])
    assert unix.code == 8
    assert unix.error_line.startswith(f"nexus: error: cannot connect to unix:{absent}")
    assert unix.error_line.endswith("(is nexusd running?)")
    assert web.code == 8
    assert f"cannot connect to ws://127.0.0.1:{port}/" in web.error_line
