"""``nexus session create`` keeps the token, so the next commands need none."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from ._procs import Cli


def test_session_create_json_stores_the_token_for_later_commands(cli: Cli,
                                                                  home: Path) -> None:
    created = cli.run("session", "create", "--channel", "cli", "--json")
    assert created.code == 0, created.err
    lines = created.out.splitlines()
    assert len(lines) == 1, created.out
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    sid, token = doc["session_id"], doc["token"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid), sid
    assert isinstance(token, str) and len(token) >= 40
    assert doc["channel"] == "cli" and doc["seq"] == 0

    # The token is in the credentials file NEXUS_CREDENTIALS names, readable
    # only by its owner, and the command said where it went.
    credentials = Path(cli.env["NEXUS_CREDENTIALS"])
    assert doc["credentials"] == str(credentials)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    stored = json.loads(credentials.read_text())["sessions"]
    assert stored[sid]["token"] == token

    # No --token from here on.
    r = cli.run("set", sid, "greeting", '{"text": "hello", "n": 1}')
    assert (r.code, r.out) == (0, "set greeting: version 1 (seq 1)\n"), r.err
    r = cli.run("set", sid, "name", "Ada")
    assert r.code == 0, r.err

    r = cli.run("get", sid, "greeting")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"text": "hello", "n": 1}
    r = cli.run("get", sid, "name")
    assert (r.code, r.out) == (0, '"Ada"\n'), r.err  # JSON, so a string is quoted...
    r = cli.run("get", sid, "name", "--raw")
    assert (r.code, r.out) == (0, "Ada\n"), r.err  # ...unless asked otherwise
    r = cli.run("get", sid)
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"greeting": {"text": "hello", "n": 1}, "name": "Ada"}
    r = cli.run("get", sid, "greeting", "--entry")
    assert r.code == 0, r.err
    entry = json.loads(r.out)
    assert (entry["version"], entry["channel"]) == (1, "cli")

    # It really is the stored token that lets them in: without the file, no entry.
    r = cli.run("get", sid, "greeting", env={"NEXUS_CREDENTIALS": str(home / "none.json")})
    assert r.code == 5
    assert f"not authorized for session {sid}" in r.error_line
    assert "nexus: hint: no token for session" in r.err
