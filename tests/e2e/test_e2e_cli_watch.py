"""Writes from the ``nexus`` command reach a watching trio client: each one,
labelled with the CLI's channel, in seq order."""

from __future__ import annotations

import json
import re
from typing import Any

import trio
from nexus_client import Change, Snapshot, Watch, open_client

from ._procs import Cli, DaemonProcess

#: Hard bound on each wait for an event.
EVENT_TIMEOUT = 10.0


async def next_event(events: Watch) -> Any:
    with trio.fail_after(EVENT_TIMEOUT):
        return await events.__anext__()


def apply(state: dict[str, Any], change: Change) -> None:
    """What a watcher does with a change to keep its copy of the data."""
    if change.op == "set":
        state[change.key or ""] = change.value
    elif change.op == "delete":
        state.pop(change.key or "", None)
    elif change.op == "patch":
        state.update(change.value["set"])
        for key in change.value["delete"]:
            state.pop(key, None)


async def test_cli_writes_reach_a_watcher_in_order_labelled_cli(
        daemon: DaemonProcess, cli: Cli) -> None:
    async with open_client(str(daemon.socket), channel="api", request_timeout=10) as client:
        info = await client.create_session("api")
        sid = info.session_id
        as_owner = {"NEXUS_TOKEN": info.token}
        async with client.watch(sid) as events:
            snapshot = await next_event(events)
            assert isinstance(snapshot, Snapshot)
            assert (snapshot.seq, snapshot.entries) == (0, {})

            # What the user types, and the seq each command reports.
            reported: list[int] = []
            r = await cli.arun("set", sid, "theme", "dark", env=as_owner)
            assert (r.code, r.out) == (0, "set theme: version 1 (seq 1)\n"), r.err
            reported.append(1)
            r = await cli.arun("set", sid, "limits", '{"rows": 100, "cols": [1, 2]}', "--json",
                               env=as_owner)
            assert r.code == 0, r.err
            assert json.loads(r.out) == {"seq": 2, "version": 1, "versions": None}
            reported.append(2)
            r = await cli.arun("patch", sid, '{"step": 2}', "--set", "mode=fast",
                               "--delete", "theme", env=as_owner)
            assert r.code == 0, r.err
            patched = re.fullmatch(r"patched 2 set, 1 deleted \(seq (\d+)\)\n", r.out)
            assert patched, r.out
            reported.append(int(patched[1]))
            # Over WebSocket this time: still the CLI's channel.
            r = await cli.arun("delete", sid, "limits", "--json",
                               env={**as_owner, "NEXUS_SOCKET": "", "NEXUS_URL": daemon.ws_url})
            assert r.code == 0, r.err
            assert json.loads(r.out)["version"] == 2
            reported.append(json.loads(r.out)["seq"])
            # --expect 0: only if absent; a deleted key keeps counting versions.
            r = await cli.arun("set", sid, "theme", "light", "--expect", "0", "--json",
                               env=as_owner)
            assert r.code == 0, r.err
            assert json.loads(r.out)["version"] == 3
            reported.append(json.loads(r.out)["seq"])

            changes = [await next_event(events) for _ in reported]

    assert all(isinstance(c, Change) for c in changes), changes
    # Each change once, in order, with the seq the CLI reported, no gap.
    assert [c.seq for c in changes] == reported == [1, 2, 3, 4, 5]
    assert [(c.op, c.key, c.version) for c in changes] == [
        ("set", "theme", 1), ("set", "limits", 1), ("patch", None, None),
        ("delete", "limits", 2), ("set", "theme", 3)]
    assert {(c.channel, c.writer) for c in changes} == {("cli", "nexus-cli")}
    assert changes[1].value == {"rows": 100, "cols": [1, 2]}
    assert changes[2].value == {"set": {"step": 2, "mode": "fast"}, "delete": ["theme"],
                                "versions": {"step": 1, "mode": 1, "theme": 2}}

    # The watcher's copy, built from the changes alone, is what the daemon holds.
    mine: dict[str, Any] = {}
    for change in changes:
        apply(mine, change)
    r = await cli.arun("get", sid, env=as_owner)
    assert r.code == 0, r.err
    assert json.loads(r.out) == mine == {"step": 2, "mode": "fast", "theme": "light"}
