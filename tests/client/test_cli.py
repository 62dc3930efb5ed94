"""The ``nexus`` CLI, run in-process against the fake daemon in a thread."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nexus_client as nc
import pytest
from nexus_client._cli import main
from nexus_protocol import Message

from .fakeserver import ThreadedServer


class LineStream(io.StringIO):
    """A stdout that lets another thread wait for the n-th line."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def write(self, text: str) -> int:
        with self._cond:
            n = super().write(text)
            self._cond.notify_all()
        return n

    def wait_lines(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.getvalue().count("\n") >= n, timeout)


class CLI:
    """Runs ``nexus`` in-process with a fixed environment."""

    def __init__(self, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
        self.capsys = capsys
        self.env = env

    def __call__(self, *argv: str, **env: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(argv), environ={**self.env, **env})
        out, err = self.capsys.readouterr()
        return code, out, err

    def watch(self, *argv: str, after_lines: int, action: Callable[[], Any]
              ) -> tuple[int, str, str]:
        """Runs ``nexus watch``; once it printed `after_lines` lines, `action`
        runs in another thread."""
        self.capsys.readouterr()
        out = LineStream()

        def trigger() -> None:
            out.wait_lines(after_lines)
            action()

        t = threading.Thread(target=trigger, daemon=True)
        t.start()
        code = main(["watch", *argv], environ=self.env, stdout=out)
        t.join(10)
        return code, out.getvalue(), self.capsys.readouterr().err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv)
        assert code == 0, err
        return json.loads(out)

    @property
    def credentials(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "nexus" / "credentials.json"


@pytest.fixture
def cli(threaded: ThreadedServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> CLI:
    return CLI(capsys, {"NEXUS_SOCKET": threaded.path, "HOME": str(tmp_path),
                        "XDG_CONFIG_HOME": str(tmp_path / "config")})


def create(cli: CLI, *extra: str) -> dict[str, Any]:
    doc: dict[str, Any] = cli.json("session", "create", "--json", *extra)
    return doc


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800),
    ("1h30m", 5400), ("1.5h", 5400), ("0.5", 0.5), ("2H", 7200), (" 1m 30s ", 90),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert nc.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5m", "0", "0s", "m", "1m-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        nc.parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42), ("4.5", 4.5), ("true", True), ("null", None), ('"42"', "42"),
    ('{"a": [1, 2]}', {"a": [1, 2]}), ("[]", []), ("hello", "hello"),
    ("hello world", "hello world"), ("{not json", "{not json"), ("NaN", "NaN"),
    ("Infinity", "Infinity"), ("", ""),
])
def test_parse_value(text: str, value: Any) -> None:
    assert nc.parse_value(text) == value


def test_exit_code_table() -> None:
    E = nc.ExitCode
    assert [int(c) for c in E] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130]
    assert set(nc.EXIT_CODE_DESCRIPTIONS) == set(E)
    cases: list[tuple[BaseException, nc.ExitCode]] = [
        (nc.SessionNotFound(), E.NOT_FOUND), (nc.SessionExpired(), E.EXPIRED),
        (nc.Unauthorized(), E.UNAUTHORIZED), (nc.Forbidden(), E.UNAUTHORIZED),
        (nc.Conflict(), E.CONFLICT), (nc.Busy(), E.UNAVAILABLE),
        (nc.Unavailable(), E.UNAVAILABLE), (nc.Timeout(), E.UNAVAILABLE),
        (nc.CannotConnect(), E.CONNECTION), (nc.ConnectionLost(), E.CONNECTION),
        (nc.ProtocolError(), E.PROTOCOL), (nc.UnsupportedVersion(), E.PROTOCOL),
        (nc.BadRequest(), E.USAGE), (nc.TooLarge(), E.USAGE),
        (nc.InternalError(), E.FAILURE), (RuntimeError(), E.FAILURE),
    ]
    for exc, code in cases:
        assert nc.exit_code_for(exc) is code, exc


def test_help_shows_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    for code in nc.ExitCode:
        assert f"{int(code):>3}  " in out
    for argv in (["session", "create", "--help"], ["watch", "--help"], ["run", "--help"]):
        assert main(argv) == 0
        assert "usage: nexus" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["session", "create", "--ttl", "abc"], ["set", "ID", "KEY"],
    ["watch", "ID", "--since", "-1"], ["run", "wf"], ["patch", "ID", "[1]"],
    ["patch", "ID", "--set", "novalue"], ["--timeout", "0", "ping"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, environ={}) == nc.ExitCode.USAGE
    assert "nexus: error:" in capsys.readouterr().err


def test_socket_and_url_are_exclusive(cli: CLI) -> None:
    code, _, err = cli("--socket", "/x", "--url", "ws://h:1/", "ping")
    assert code == 2 and "either --socket or --url" in err
    code, _, err = cli("ping", "--url", "http://h/")
    assert code == 2 and "unsupported address" in err


# --------------------------------------------------------------- commands


def test_create_prints_one_json_object_and_stores_the_token(cli: CLI,
                                                            threaded: ThreadedServer) -> None:
    code, out, _ = cli("session", "create", "--channel", "cli", "--ttl", "30m", "--idle", "10m",
                       "--user", "u1", "--meta", "team=\"ops\"", "--json")
    assert code == 0
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert {"session_id", "token", "expires_at"} <= set(doc)
    sent = threaded.server.requests_of("create")[0]
    assert (sent.channel, sent.ttl, sent.idle_timeout, sent.user_id, sent.metadata) == (  # type: ignore[attr-defined]
        "cli", 1800.0, 600.0, "u1", {"team": "ops"})
    assert threaded.server.hellos[0][1].channel == "cli"

    path = cli.credentials
    assert doc["credentials"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert stored["sessions"][doc["session_id"]]["token"] == doc["token"]

    # A later command finds the token without being told.
    code, out, _ = cli("set", doc["session_id"], "k", "1")
    assert code == 0 and "version 1" in out


def test_create_human_output_and_no_save(cli: CLI) -> None:
    code, out, _ = cli("session", "create", "--no-save")
    assert code == 0
    assert out.startswith("session   ") and "token     tok_" in out
    assert not cli.credentials.exists()


def test_set_get_delete_patch(cli: CLI) -> None:
    sid = create(cli)["session_id"]
    assert cli("set", sid, "obj", '{"a": [1, 2]}')[0] == 0
    assert cli("set", sid, "text", "hello world")[0] == 0
    assert cli("set", sid, "num", "42")[0] == 0
    assert cli("set", sid, "quoted", "42", "--string")[0] == 0
    assert cli.json("get", sid, "obj") == {"a": [1, 2]}
    assert cli.json("get", sid, "text") == "hello world"
    assert cli.json("get", sid, "quoted") == "42"
    assert cli("get", sid, "text", "--raw")[1] == "hello world\n"
    assert cli("set", sid, "nothing", "null")[0] == 0
    assert cli.json("get", sid, "nothing") is None  # written, as null
    for extra in ((), ("--entry",), ("--raw",)):
        code, out, err = cli("get", sid, "missing", *extra)
        assert (code, out) == (nc.ExitCode.NOT_FOUND, "")
        assert err == f"nexus: error: no key 'missing' in the session (session {sid})\n"
    assert cli.json("get", sid, "num", "--entry")["version"] == 1

    written = cli.json("set", sid, "num", "43", "--expect", "1", "--json")
    assert written["version"] == 2
    code, _, err = cli("set", sid, "num", "44", "--expect", "1")
    assert code == nc.ExitCode.CONFLICT and "nexus: error: version conflict" in err

    assert cli("delete", sid, "text")[0] == 0
    code, _, err = cli("delete", sid, "text")
    assert code == nc.ExitCode.NOT_FOUND and "no key 'text'" in err

    patched = cli.json("patch", sid, '{"a": 1}', "--set", "b=[true]", "--delete", "obj",
                       "--json")
    assert set(patched["versions"]) == {"a", "b", "obj"}
    assert cli.json("get", sid) == {"a": 1, "b": [True], "num": 43, "quoted": "42",
                                    "nothing": None}
    assert cli("patch", sid)[0] == nc.ExitCode.USAGE


def test_show_context_switch_renew_summary_grant(cli: CLI, threaded: ThreadedServer) -> None:
    sid = create(cli)["session_id"]
    cli("set", sid, "theme", '"dark"')
    assert cli("context", sid, "--preferences", '{"verbose": true}',
               "--history", '["step1"]')[0] == 0
    code, out, _ = cli("session", "show", sid)
    assert code == 0
    assert f"session   {sid}" in out and 'theme = "dark"' in out
    assert "preferences:" in out and "verbose: true" in out
    shown = cli.json("session", "show", sid, "--json")
    assert shown["data"] == {"theme": "dark"} and shown["context"]["history"] == ["step1"]

    code, out, _ = cli("switch", sid, "--to", "mcp", "--reason", "ai help")
    assert code == 0 and out.startswith("switched to mcp")
    assert threaded.server.requests_of("switch_begin")[0].reason == "ai help"  # type: ignore[attr-defined]
    assert cli.json("switch", sid, "--to", "api", "--begin-only", "--json")["completed"] is False

    renewed = cli.json("renew", sid, "--ttl", "1h", "--json")
    assert renewed["expires_at"] > 0
    assert threaded.server.requests_of("renew")[0].ttl == 3600  # type: ignore[attr-defined]
    assert cli.json("summary", sid, "--json")["session_id"] == sid
    code, out, _ = cli("grant", sid, "--scope", "read")
    assert code == 0 and out.strip().startswith("tok_")


def test_errors_are_one_line_with_documented_codes(cli: CLI, threaded: ThreadedServer) -> None:
    code, out, err = cli("get", "3f00", "k", "--token", "t")
    assert (code, out) == (nc.ExitCode.NOT_FOUND, "")
    assert err.startswith("nexus: error: session 3f00 not found")
    assert err.count("\n") == 1

    other = threaded.call_sync(threaded.server.add_session, "tok_other")
    code, _, err = cli("get", other)
    assert code == nc.ExitCode.UNAUTHORIZED
    assert f"not authorized for session {other}" in err and "NEXUS_TOKEN" in err
    assert cli("get", other, NEXUS_TOKEN="tok_other")[0] == 0
    assert cli("get", other, "--token", "tok_other")[0] == 0

    sid = create(cli)["session_id"]
    assert cli("invalidate", sid)[0] == 0
    code, _, err = cli("get", sid, "--token", "x")
    assert code == nc.ExitCode.EXPIRED and "has expired" in err

    threaded.server.inject("ping", "busy", "slow down", retry_after=3)
    code, _, err = cli("ping")
    assert code == nc.ExitCode.UNAVAILABLE and "retry in 3s" in err
    threaded.server.inject("ping", "internal", "oops")
    assert cli("ping")[0] == nc.ExitCode.FAILURE


def test_websocket_with_admin_key(capsys: pytest.CaptureFixture[str], sock_path: str,
                                  tmp_path: Path) -> None:
    with ThreadedServer(sock_path, websocket=True).running() as ts:
        env = {"NEXUS_URL": ts.ws_url, "HOME": str(tmp_path)}
        assert main(["status"], environ=env) == nc.ExitCode.UNAUTHORIZED
        err = capsys.readouterr().err
        assert "nexus: error: not allowed" in err and "nexus: hint: admin only" in err
        assert main(["status", "--json"], environ={**env, "NEXUS_ADMIN_KEY": "sekrit"}) == 0
        assert json.loads(capsys.readouterr().out)["uptime_seconds"] == 3725
        assert main(["--admin-key", "wrong", "ping"], environ=env) == nc.ExitCode.UNAUTHORIZED
        assert "bad admin key" in capsys.readouterr().err
        assert ts.server.hellos[0][1].channel == "cli"


def test_cannot_connect_exits_8(cli: CLI, sock_path: str) -> None:
    code, _, err = cli("ping", "--socket", sock_path + ".missing")
    assert code == nc.ExitCode.CONNECTION
    assert "cannot connect" in err and "is nexusd running?" in err


def test_invalidate_forgets_the_stored_token(cli: CLI) -> None:
    sid = create(cli)["session_id"]
    assert sid in json.loads(cli.credentials.read_text())["sessions"]
    code, out, _ = cli("invalidate", sid, "--reason", "done")
    assert code == 0 and "invalidated" in out
    assert sid not in json.loads(cli.credentials.read_text())["sessions"]


def test_run_is_unavailable_on_v1(cli: CLI) -> None:
    sid = create(cli)["session_id"]
    code, out, err = cli("run", "data-processor", "--session", sid, "--continue",
                         "--input", "data=initial")
    assert code == nc.ExitCode.UNAVAILABLE == 7
    assert out == ""
    assert "workflow execution is not available" in err
    assert "does not execute workflows" in err


def test_status_sessions_ping(cli: CLI, threaded: ThreadedServer) -> None:
    code, out, _ = cli("status")
    assert code == 0
    assert "daemon: fake-nexusd/1.0" in out
    assert "uptime_seconds: 1h 2m" in out and "active: 1" in out
    assert cli.json("status", "--json")["connections"] == 2

    sid = create(cli)["session_id"]
    code, out, _ = cli("sessions")
    assert code == 0 and out.startswith(sid)
    assert [s["session_id"] for s in cli.json("session", "list", "--json")["sessions"]] == [sid]
    code, out, _ = cli("ping")
    assert code == 0 and out.startswith("pong from fake-nexusd/1.0")

    threaded.server.unix_admin = False
    code, _, err = cli("status")
    assert code == nc.ExitCode.UNAUTHORIZED and "--admin-key" in err


# ------------------------------------------------------------------- watch


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_watch_json_until_expired(cli: CLI, threaded: ThreadedServer) -> None:
    sid = create(cli)["session_id"]
    cli("set", sid, "k", "1")

    async def changes_then_expiry() -> None:
        await threaded.server.write(sid, "k", 2)
        await threaded.server.end(sid, "expired", "idle")

    code, out, _ = cli.watch(sid, "--json", after_lines=2,
                             action=lambda: threaded.call(changes_then_expiry))
    assert code == nc.ExitCode.EXPIRED == 4
    events = _lines(out)
    assert [e["type"] for e in events] == ["snapshot", "presence", "change", "expired"]
    assert events[0]["entries"]["k"]["value"] == 1
    assert (events[2]["seq"], events[2]["value"]) == (2, 2)
    assert events[3]["reason"] == "idle"


def test_watch_since_human_until_invalidated(cli: CLI, threaded: ThreadedServer) -> None:
    sid = create(cli)["session_id"]
    for v in ("1", "2", "3"):
        cli("set", sid, "k", v)

    def invalidate() -> None:
        threaded.call(threaded.server.end, sid, "invalidated", "logout")

    code, out, _ = cli.watch(sid, "--since", "1", after_lines=3, action=invalidate)
    assert code == nc.ExitCode.INVALIDATED
    lines = out.splitlines()
    assert "#2 set k = 2 (v2)" in lines[0] and "#3 set k = 3 (v3)" in lines[1]
    assert "joined on cli" in lines[2]
    assert lines[3] == f"session {sid} invalidated (logout)"


def test_watch_ctrl_c_exits_0(cli: CLI, threaded: ThreadedServer) -> None:
    sid = create(cli)["session_id"]
    assert threading.current_thread() is threading.main_thread()
    code, out, err = cli.watch(sid, after_lines=2,
                               action=lambda: os.kill(os.getpid(), signal.SIGINT))
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("#0 snapshot")
    # The watch detached on its way out.
    threaded.wait_for(lambda: not threaded.server.sessions[sid].subscribers)


def test_watch_missing_session(cli: CLI) -> None:
    code, out, err = cli("watch", "nope", "--token", "t")
    assert (code, out) == (nc.ExitCode.NOT_FOUND, "")
    assert "session nope not found" in err


def test_format_event_lines() -> None:
    from nexus_client._render import format_event

    def change(op: str, **kw: Any) -> Message:
        return nc.Change(session_id="s", seq=7, op=op, ts=0.0, channel="api", writer="c1",
                         **kw)

    assert "#7 delete k (v3)" in format_event(change("delete", key="k", version=3))
    assert "#7 patch a=1, -b" in format_event(change("patch", value={
        "set": {"a": 1}, "delete": ["b"], "versions": {"a": 1, "b": 2}}))
    assert "switch api -> cli (why) [t1]" in format_event(change("switch_begin", value={
        "from_channel": "api", "to_channel": "cli", "reason": "why", "transition_id": "t1"}))
    assert "[api c1]" in format_event(change("context", value={"current_channel": "mcp"}))
    snap = nc.Snapshot(session_id="s", seq=4, entries={"a": {}}, context={}, recovered=False)
    assert "state replaced" in format_event(snap)


def test_format_duration() -> None:
    from nexus_client._render import format_duration

    assert [format_duration(s) for s in (0, 0.25, 42, 90, 3725, 90000)] == [
        "0s", "0.25s", "42s", "1m 30s", "1h 2m", "1d 1h"]


# ------------------------------------------------------------- credentials


def test_credential_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert nc.default_credentials_path() == tmp_path / "cfg" / "nexus" / "credentials.json"
    monkeypatch.setenv("NEXUS_CREDENTIALS", str(tmp_path / "x.json"))
    assert nc.default_credentials_path() == tmp_path / "x.json"
    assert nc.default_credentials_path({"HOME": "/h"}) == Path(
        "/h/.config/nexus/credentials.json")

    path = tmp_path / "deep" / "dir" / "creds.json"
    store = nc.CredentialStore(path)
    assert store.get("s1") is None
    store.put("s1", "t1", expires_at=None)
    store.put("old", "t0", expires_at=1.0)  # already expired: pruned on the next write
    store.put("s2", "t2", expires_at=4e9)
    assert store.all() == {"s1": "t1", "s2": "t2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.remove("s1") and not store.remove("s1")
    assert store.all() == {"s2": "t2"}

    os.chmod(path, 0o644)  # loosened by hand: tightened again on the next write
    store.put("s3", "t3")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    path.write_text('{"s9": "flat-token"}')  # a bare mapping is read too
    assert store.get("s9") == "flat-token"
    path.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        store.get("s9")


def test_prune_forgets_expired_tokens_only(tmp_path: Path) -> None:
    # What `Nexus.cleanup_expired_sessions` does. A file another process
    # wrote: its expired entry was never pruned by a write.
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"sessions": {
        "gone": {"token": "t0", "expires_at": 1.0},
        "live": {"token": "t1", "expires_at": 4e9},
        "open": {"token": "t2", "expires_at": None}}}))
    store = nc.CredentialStore(path)
    assert store.prune() == 1
    assert nc.CredentialStore(path).all() == {"live": "t1", "open": "t2"}
    assert store.prune() == 0
