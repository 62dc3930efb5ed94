"""Changes written on one channel are seen on the others, in order, with who
wrote them; presence says who is attached and on which channel."""

from __future__ import annotations

import nexus_protocol as p
from raw_client import connect_unix, connect_ws

from nexusd import Daemon


async def test_unix_and_websocket_see_each_others_writes(daemon: Daemon,
                                                         autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with (connect_unix(daemon.socket_path, channel="cli", client="term") as cli,
                connect_ws(daemon.ws_port, channel="websocket", client="browser") as web):
        created = await cli.call(p.Create, ttl=600)
        assert isinstance(created, p.Created)
        sid, token = created.session_id, created.token

        attached = await cli.call(p.Attach, session_id=sid, scope="write")
        assert isinstance(attached, p.Attached)
        assert (attached.seq, attached.recovered) == (0, False)
        snapshot = await cli.next_of(p.Snapshot)
        assert (snapshot.seq, snapshot.entries, snapshot.recovered) == (0, {}, True)

        # The browser joins: the terminal is told, with the browser's channel label.
        attached = await web.call(p.Attach, session_id=sid, token=token, scope="write")
        assert isinstance(attached, p.Attached) and attached.seq == 0
        assert web.welcome is not None and cli.welcome is not None
        assert {(m["connection_id"], m["channel"]) for m in attached.presence} == {
            (cli.welcome.connection_id, "cli"), (web.welcome.connection_id, "websocket")}
        await web.next_of(p.Snapshot)
        join = await cli.next_of(p.Presence)
        assert (join.action, join.channel, join.client, join.connection_id) == (
            "join", "websocket", "browser", web.welcome.connection_id)

        # Unix -> WebSocket.
        written = await cli.call(p.Set, session_id=sid, key="cart", value={"items": [1, 2]})
        assert isinstance(written, p.Written)
        assert (written.seq, written.version) == (1, 1)
        change = await web.next_of(p.Change)
        assert (change.session_id, change.seq, change.op, change.key, change.value,
                change.version, change.channel, change.writer) == (
            sid, 1, "set", "cart", {"items": [1, 2]}, 1, "cli", "term")
        # The writer, being attached, sees its own change too.
        assert (await cli.next_of(p.Change)).seq == 1

        # WebSocket -> Unix.
        written = await web.call(p.Set, session_id=sid, key="cart", value={"items": [3]},
                                 expect=1, token=token)
        assert isinstance(written, p.Written)
        assert (written.seq, written.version) == (2, 2)
        change = await cli.next_of(p.Change)
        assert (change.seq, change.op, change.key, change.value, change.version,
                change.channel, change.writer) == (
            2, "set", "cart", {"items": [3]}, 2, "websocket", "browser")
        assert (await web.next_of(p.Change)).seq == 2

        # What a late reader gets agrees with what was pushed.
        state = await cli.call(p.Get, session_id=sid)
        assert isinstance(state, p.StateReply)
        assert state.seq == 2
        assert state.entries["cart"]["value"] == {"items": [3]}
        assert state.entries["cart"]["version"] == 2
        assert state.entries["cart"]["channel"] == "websocket"


async def test_leave_carries_the_channel_label(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with connect_unix(daemon.socket_path, channel="cli") as cli:
        created = await cli.call(p.Create)
        assert isinstance(created, p.Created)
        sid = created.session_id
        await cli.call(p.Attach, session_id=sid)
        await cli.next_of(p.Snapshot)
        async with connect_ws(daemon.ws_port, channel="mcp", client="agent") as agent:
            assert isinstance(await agent.call(p.Attach, session_id=sid, token=created.token,
                                               channel="mcp"), p.Attached)
            assert agent.welcome is not None
            agent_id = agent.welcome.connection_id
            join = await cli.next_of(p.Presence)
            assert (join.action, join.channel, join.connection_id) == ("join", "mcp", agent_id)
        leave = await cli.next_of(p.Presence)
        assert (leave.action, leave.channel, leave.client, leave.connection_id) == (
            "leave", "mcp", "agent", agent_id)

        # An explicit detach says the same.
        async with connect_unix(daemon.socket_path, channel="worker") as worker:
            await worker.call(p.Attach, session_id=sid, token=created.token)
            assert (await cli.next_of(p.Presence)).action == "join"
            assert isinstance(await worker.call(p.Detach, session_id=sid), p.Ok)
            leave = await cli.next_of(p.Presence)
            assert (leave.action, leave.channel) == ("leave", "worker")
            # Detached: the worker's writes no longer come back to it.
            await worker.call(p.Set, session_id=sid, key="k", value=1, token=created.token)
            assert (await cli.next_of(p.Change)).channel == "worker"
            await worker.next_of(p.Snapshot)
            await worker.no_event_within(1.0)
