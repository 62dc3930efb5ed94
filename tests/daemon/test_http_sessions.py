"""The HTTP channel against a real daemon's listener: the sessions API, what
other channels see of HTTP writes and what an event stream sees of theirs,
resume by Last-Event-ID."""

from __future__ import annotations

import nexus_protocol as p
import pytest
import trio
from http_client import TIMEOUT, http_client, open_events
from raw_client import connect_unix

from nexusd import Daemon

HTTP = pytest.mark.daemon_config(http="127.0.0.1:0")


async def _create(daemon: Daemon, **body: object) -> tuple[str, str]:
    async with http_client(daemon) as client:
        r = await client.post("/sessions", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/sessions/{created['session_id']}"
    return created["session_id"], created["token"]


@HTTP
async def test_http_writes_reach_a_unix_watcher_in_seq_order(daemon: Daemon) -> None:
    sid, token = await _create(daemon, channel="api", user_id="u1", metadata={"team": "x"})
    assert daemon.socket_path is not None
    with trio.fail_after(TIMEOUT):
        async with connect_unix(daemon.socket_path, channel="cli") as watcher, \
                http_client(daemon, token) as client:
            await watcher.call(p.Attach, session_id=sid, token=token)
            assert (await watcher.next_of(p.Snapshot)).seq == 0

            r = await client.put(f"/sessions/{sid}/data/theme", json="dark")
            assert (r.status_code, r.json()["seq"], r.headers["etag"]) == (200, 1, '"1"')
            r = await client.put(f"/sessions/{sid}/data/theme", json="light",
                                 headers={"If-Match": '"1"'})
            assert (r.status_code, r.headers["etag"]) == (200, '"2"')
            r = await client.patch(f"/sessions/{sid}/data",
                                   json={"set": {"a": 1, "b": [1, {"c": None}]},
                                         "delete": ["theme"], "expect": {"theme": 2}})
            assert r.json()["versions"] == {"a": 1, "b": 1, "theme": 3}
            r = await client.delete(f"/sessions/{sid}/data/a", headers={"If-Match": "1"})
            assert r.status_code == 200
            r = await client.post(f"/sessions/{sid}/context",
                                  json={"preferences": {"lang": "fr"}})
            assert r.json()["seq"] == 5
            r = await client.post(f"/sessions/{sid}/switch", json={"to_channel": "mcp"})
            transition = r.json()["transition_id"]
            r = await client.post(f"/sessions/{sid}/switch",
                                  json={"transition_id": transition})
            assert r.json() == {"seq": 7, "transition_id": transition}
            r = await client.post(f"/sessions/{sid}/renew", json={"ttl": 600})
            assert r.json()["seq"] == 8

            changes = [await watcher.next_of(p.Change) for _ in range(8)]
        assert [(c.seq, c.op, c.channel) for c in changes] == [
            (1, "set", "api"), (2, "set", "api"), (3, "patch", "api"), (4, "delete", "api"),
            (5, "context", "api"), (6, "switch_begin", "api"), (7, "switch_complete", "api"),
            (8, "renew", "api")]
        assert changes[1].value == "light" and changes[2].value["set"]["b"] == [1, {"c": None}]

        # What the session holds, as "cli" sees it, over HTTP.
        async with http_client(daemon, token) as client:
            r = await client.get(f"/sessions/{sid}", params={"channel": "cli"})
            state = r.json()
            assert (state["seq"], set(state["entries"])) == (8, {"b"})
            assert state["context"]["preferences"] == {"lang": "fr"}
            r = await client.get(f"/sessions/{sid}/data/b")
            assert r.json()["value"] == [1, {"c": None}] and r.headers["etag"] == '"1"'
            summary = (await client.get(f"/sessions/{sid}/summary")).json()
            assert (summary["channels_used"], summary["user_id"]) == (["api", "cli"], "u1")


@HTTP
async def test_unix_writes_reach_an_event_stream_in_seq_order(daemon: Daemon) -> None:
    assert daemon.socket_path is not None
    with trio.fail_after(TIMEOUT):
        async with connect_unix(daemon.socket_path, channel="cli") as writer:
            created = await writer.call(p.Create)
            assert isinstance(created, p.Created)
            sid, token = created.session_id, created.token
            async with open_events(daemon, sid, token) as events:
                snapshot = await events.next()
                assert snapshot is not None and snapshot.event == "snapshot"
                assert (snapshot.id, snapshot.data["seq"]) == ("0", 0)
                for i in range(1, 21):
                    await writer.call(p.Set, session_id=sid, key=f"k{i % 3}", value=i)
                got = [await events.next() for _ in range(20)]
        assert [(e.event, e.id, e.data["seq"]) for e in got if e] == [
            ("change", str(i), i) for i in range(1, 21)]
        assert all(e.data["channel"] == "cli" and e.data["value"] == int(e.id)
                   for e in got if e)


@pytest.mark.daemon_config(http="127.0.0.1:0", retention=5)
async def test_resume_with_last_event_id(daemon: Daemon) -> None:
    sid, token = await _create(daemon)
    with trio.fail_after(TIMEOUT):
        async with http_client(daemon, token) as client:
            for i in range(1, 5):
                await client.put(f"/sessions/{sid}/data/k", json=i)
            # Exactly what came after seq 2, then live.
            async with open_events(daemon, sid, token,
                                   headers={"Last-Event-ID": "2"}) as events:
                assert [(e.event, e.id) for e in [await events.next(), await events.next()]
                        if e] == [("change", "3"), ("change", "4")]
                await client.put(f"/sessions/{sid}/data/k", json=5)
                live = await events.next()
                assert live is not None and (live.id, live.data["value"]) == ("5", 5)
            # `?since=` says the same for clients that cannot set headers.
            async with open_events(daemon, sid, token, query="?since=4") as events:
                e = await events.next()
                assert e is not None and (e.event, e.id) == ("change", "5")
            # Past the retention window (5 changes): a snapshot, not recovered.
            for i in range(6, 13):
                await client.put(f"/sessions/{sid}/data/k", json=i)
            async with open_events(daemon, sid, token,
                                   headers={"Last-Event-ID": "1"}) as events:
                e = await events.next()
                assert e is not None and e.event == "snapshot"
                assert (e.id, e.data["recovered"], e.data["entries"]["k"]["value"]) == (
                    "12", False, 12)
