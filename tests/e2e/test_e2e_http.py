"""`nexusd serve` with its HTTP listener: what the ``nexus`` command writes
reaches an HTTP event stream, in seq order; what curl-like clients write over
HTTP, the CLI reads; SIGTERM ends the stream with `shutdown`."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._procs import Cli, DaemonProcess, clean_environ, http_daemon

#: Hard bound on each read from the event stream, in seconds.
READ_TIMEOUT = 10.0


@pytest.fixture
def daemon(tmp_path: Path, home: Path) -> Iterator[DaemonProcess]:
    """``nexusd serve`` with a Unix socket and HTTP on a free loopback port."""
    yield from http_daemon(tmp_path, home)


class _Events:
    """An event stream read line by line, as `curl -N` prints it."""

    def __init__(self, base: str, path: str, token: str) -> None:
        url = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port,
                                               timeout=READ_TIMEOUT)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200

    def next(self) -> tuple[str, dict[str, Any], str | None] | None:
        """(event, data, id) of the next event; None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline().decode()
            if not line:
                return None
            line = line.rstrip("\n")
            if line == "":
                if "data" in fields:
                    return fields["event"], json.loads(fields["data"]), fields.get("id")
                fields.clear()
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


def _request(base: str, method: str, path: str, token: str | None = None,
             body: Any = None) -> tuple[int, Any]:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=READ_TIMEOUT)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=headers)
    response = conn.getresponse()
    text = response.read()
    conn.close()
    return response.status, json.loads(text) if text else None


def test_cli_writes_reach_an_http_event_stream_in_order(daemon: DaemonProcess,
                                                        home: Path) -> None:
    base = daemon.http_url
    status, created = _request(base, "POST", "/sessions", body={"channel": "api"})
    assert status == 201
    sid, token = created["session_id"], created["token"]
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(daemon.socket),
               "NEXUS_TOKEN": token})
    events = _Events(base, f"/sessions/{sid}/events", token)
    try:
        _follow(daemon, cli, events, base, sid, token)
    finally:
        events.conn.close()


def _follow(daemon: DaemonProcess, cli: Cli, events: _Events, base: str, sid: str,
            token: str) -> None:
    assert [events.next()[0] for _ in range(2)] == ["attached", "snapshot"]  # type: ignore[index]

    r = cli.run("set", sid, "theme", "dark")
    assert r.code == 0, r.err
    r = cli.run("patch", sid, '{"step": 2}', "--delete", "theme")
    assert r.code == 0, r.err
    status, _ = _request(base, "PUT", f"/sessions/{sid}/data/step", token, 3)
    assert status == 200
    got = [events.next() for _ in range(3)]
    assert [(e[0], e[2], e[1]["op"], e[1]["channel"]) for e in got if e] == [
        ("change", "1", "set", "cli"), ("change", "2", "patch", "cli"),
        ("change", "3", "set", "api")]
    # What HTTP wrote, the CLI reads.
    r = cli.run("get", sid)
    assert (r.code, json.loads(r.out)) == (0, {"step": 3})

    # SIGTERM: the stream is told, and ends.
    assert daemon.stop() == 0
    rest = []
    while (event := events.next()) is not None:
        rest.append(event[0])
    assert rest[-1:] == ["shutdown"]
    assert "Traceback" not in daemon.log_text()
