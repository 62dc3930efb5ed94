"""Limits for untrusted clients, as a client meets them: scopes by request,
who may create and how fast, bounded lifetimes and sizes, caps on stored and
active sessions, time bounds on connections, and the connection limits."""

from __future__ import annotations

import socket as stdlib_socket
import struct
from pathlib import Path

import attrs
import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix, connect_ws, make_config

from nexusd import Daemon

# ------------------------------------------------------- scopes by request


async def test_a_request_is_served_with_its_own_tokens_scope(daemon: Daemon,
                                                             autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as owner:
        made = await owner.call(p.Create)
        assert isinstance(made, p.Created)
        granted = await owner.call(p.Grant, session_id=made.session_id, scope="read",
                                   token=made.token)
        assert isinstance(granted, p.Granted)
    async with connect_unix(daemon.socket_path) as gateway:
        # The connection proves the admin token first ...
        read = await gateway.call(p.Get, session_id=made.session_id, token=made.token)
        assert isinstance(read, p.StateReply)
        # ... then a request with a read token is served as read, not admin.
        refused = await gateway.call(p.Set, session_id=made.session_id, key="k", value=1,
                                     token=granted.token)
        assert isinstance(refused, p.Error) and refused.code == "forbidden", refused
        # A request without a token uses the token proven last: the read one.
        still = await gateway.call(p.Set, session_id=made.session_id, key="k", value=1)
        assert isinstance(still, p.Error) and still.code == "forbidden", still
        again = await gateway.call(p.Set, session_id=made.session_id, key="k", value=1,
                                   token=made.token)
        assert isinstance(again, p.Written), again


# ------------------------------------------------------------ who may create


@pytest.mark.daemon_config(create_rate=1.0, create_burst=3)
async def test_creates_over_the_network_are_rate_limited_per_peer(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.ws_port is not None and daemon.socket_path is not None
    async with connect_ws(daemon.ws_port) as c:
        for _ in range(3):
            assert isinstance(await c.call(p.Create), p.Created)
        refused = await c.call(p.Create)
        assert isinstance(refused, p.Error) and refused.code == "busy", refused
        assert refused.retry_after == pytest.approx(1.0)
        async with connect_ws(daemon.ws_port) as other:  # same peer, same bucket
            again = await other.call(p.Create)
            assert isinstance(again, p.Error) and again.code == "busy"
        await trio.sleep(1.0)
        assert isinstance(await c.call(p.Create), p.Created)
    async with connect_unix(daemon.socket_path) as local:  # the socket's owner: no bucket
        for _ in range(5):
            assert isinstance(await local.call(p.Create), p.Created)
    limits = (await daemon.stats())["limits"]
    assert limits["creates_refused"] == 2


@pytest.mark.daemon_config(require_create_key="always", create_key="let-me-create")
async def test_the_create_key_is_needed_over_the_network_when_required(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.ws_port is not None and daemon.socket_path is not None
    async with connect_ws(daemon.ws_port) as anonymous:
        refused = await anonymous.call(p.Create)
        assert isinstance(refused, p.Error) and refused.code == "forbidden", refused
        assert "create key" in refused.message
    async with connect_ws(daemon.ws_port, credential="let-me-create") as keyed:
        assert isinstance(keyed.welcome, p.Welcome) and not keyed.welcome.admin
        assert isinstance(await keyed.call(p.Create), p.Created)
    async with connect_ws(daemon.ws_port, hello=False) as wrong:
        refused = await wrong.hello(credential="guess")
        assert isinstance(refused, p.Error) and refused.code == "unauthorized"
    async with connect_unix(daemon.socket_path) as local:
        assert isinstance(await local.call(p.Create), p.Created)


def test_a_loopback_only_daemon_needs_no_create_key(tmp_path: Path) -> None:
    base = make_config(tmp_path, tmp_path)
    assert not Daemon(base).requires_create_key()
    assert Daemon(attrs.evolve(base, ws="0.0.0.0:0")).requires_create_key()
    assert not Daemon(attrs.evolve(base, ws="0.0.0.0:0",
                                   require_create_key="never")).requires_create_key()


# ------------------------------------------------------ lifetimes and sizes


@pytest.mark.daemon_config(max_ttl=100.0, default_ttl=50.0, max_idle=30.0, default_idle=10.0)
async def test_a_lifetime_above_the_bound_is_clamped_and_the_reply_says_so(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        asked = daemon.wall()
        made = await c.call(p.Create, ttl=30 * 86400.0, idle_timeout=86400.0)
        assert isinstance(made, p.Created) and made.clamped
        assert made.expires_at == pytest.approx(asked + 100.0, abs=1e-3)
        assert made.idle_timeout == 30.0
        within = await c.call(p.Create, ttl=80.0)
        assert isinstance(within, p.Created) and not within.clamped
        renewed = await c.call(p.Renew, session_id=made.session_id, ttl=1e9, token=made.token)
        assert isinstance(renewed, p.Renewed) and renewed.clamped
        assert renewed.expires_at == pytest.approx(daemon.wall() + 100.0, abs=1e-3)
        bad = await c.call(p.Create, ttl=-1.0)
        assert isinstance(bad, p.Error) and bad.code == "bad_request"


@pytest.mark.daemon_config(max_metadata=1000, max_context=1000)
async def test_metadata_and_context_are_bounded_in_bytes(daemon: Daemon,
                                                         autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        big = await c.call(p.Create, metadata={"pad": "x" * 2000})
        assert isinstance(big, p.Error) and big.code == "bad_request", big
        assert "1000" in big.message
        made = await c.call(p.Create, metadata={"pad": "x" * 500})
        assert isinstance(made, p.Created)
        sid, token = made.session_id, made.token
        wide = await c.call(p.UpdateContext, session_id=sid, token=token,
                            preferences={"pad": "x" * 2000})
        assert isinstance(wide, p.Error) and wide.code == "bad_request", wide
        switch = await c.call(p.SwitchBegin, session_id=sid, token=token, to_channel="cli",
                              context={"pad": "x" * 2000})
        assert isinstance(switch, p.Error) and switch.code == "bad_request", switch
        state = await c.call(p.Get, session_id=sid, token=token)
        assert isinstance(state, p.StateReply) and state.seq == 0  # nothing changed
        fits = await c.call(p.UpdateContext, session_id=sid, token=token,
                            preferences={"pad": "x" * 500})
        assert isinstance(fits, p.Written)


# ------------------------------------------------------ stored and active


@pytest.mark.daemon_config(max_sessions=3)
async def test_creates_beyond_the_stored_bound_are_busy(daemon: Daemon,
                                                        autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        made = [await c.call(p.Create) for _ in range(3)]
        assert all(isinstance(m, p.Created) for m in made)
        refused = await c.call(p.Create)
        assert isinstance(refused, p.Error) and refused.code == "busy", refused
        first = made[0]
        assert isinstance(first, p.Created)
        await c.call(p.Invalidate, session_id=first.session_id, token=first.token)
        assert isinstance(await c.call(p.Create), p.Created)


@pytest.mark.daemon_config(max_active_sessions=3)
async def test_at_the_active_bound_the_least_recently_used_unwatched_hibernate(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c, \
            connect_unix(daemon.socket_path) as watcher:
        made = []
        for _ in range(3):
            m = await c.call(p.Create)
            assert isinstance(m, p.Created)
            made.append(m)
            await trio.sleep(1)
        # The oldest is watched: the next oldest is the one to make room.
        await watcher.call(p.Attach, session_id=made[0].session_id, token=made[0].token)
        await c.call(p.Get, session_id=made[2].session_id, token=made[2].token)
        fourth = await c.call(p.Create)
        assert isinstance(fourth, p.Created)
        await trio.sleep(0.1)
        active = {m.session_id for m in made if daemon.registry.active(m.session_id)}
        assert active == {made[0].session_id, made[2].session_id}
        assert daemon.registry.statistics().made_room == 1
        # The one that left comes back on demand, with its data.
        back = await c.call(p.Get, session_id=made[1].session_id, token=made[1].token)
        assert isinstance(back, p.StateReply)
        # Every active session watched: no room, and new activations are busy.
        for m in (made[0], made[1], made[2], fourth):
            if daemon.registry.active(m.session_id):
                await watcher.call(p.Attach, session_id=m.session_id, token=m.token)
        refused = await c.call(p.Create)
        assert isinstance(refused, p.Error) and refused.code == "busy", refused
        assert (await daemon.stats())["limits"]["sessions_refused"] == 1


# ------------------------------------------------------------------- time


@pytest.mark.daemon_config(read_timeout=5.0)
async def test_a_frame_begun_must_complete_within_the_read_timeout(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        t0 = trio.current_time()
        # The header of a 1000-byte frame, and half of it.
        await c.send_raw(struct.pack(">I", 1000) + b"\x81" + b"\x00" * 499)
        got = await c.wait_closed()
        assert trio.current_time() - t0 == pytest.approx(5.0, abs=0.01)
        assert [(e.code, "5 s" in e.message) for e in got if isinstance(e, p.Error)] == [
            ("bad_request", True)]
    async with connect_unix(daemon.socket_path) as patient:
        # Whole frames, however far apart, are fine.
        await trio.sleep(60)
        assert isinstance(await patient.call(p.Ping), p.Pong)


@pytest.mark.daemon_config(idle_connection_timeout=60.0)
async def test_an_idle_connection_without_a_subscription_is_closed(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path, timeout=120) as idle, \
            connect_unix(daemon.socket_path) as watching:
        made = await watching.call(p.Create)
        assert isinstance(made, p.Created)
        await watching.call(p.Attach, session_id=made.session_id, token=made.token)
        t0 = trio.current_time()
        await idle.call(p.Ping)
        got = await idle.wait_closed()
        assert trio.current_time() - t0 == pytest.approx(60.0, abs=0.01)
        assert [e.code for e in got if isinstance(e, p.Error)] == ["unavailable"]
        await trio.sleep(600)
        assert isinstance(await watching.call(p.Ping), p.Pong)  # watching: kept


# --------------------------------------------------------------- connections


@pytest.mark.daemon_config(max_connections_per_peer=2)
async def test_connections_beyond_the_per_peer_bound_are_refused_at_once(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.ws_port is not None
    async with connect_ws(daemon.ws_port), connect_ws(daemon.ws_port):
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.ws_port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                              b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 503"), answer
    async with connect_ws(daemon.ws_port) as again:  # room again
        assert isinstance(await again.call(p.Ping), p.Pong)
    assert (await daemon.stats())["limits"]["connections_refused"] == 1


@pytest.mark.daemon_config(max_connections=2)
async def test_at_the_connection_bound_a_new_client_is_told_busy(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port is not None
    async with connect_ws(daemon.ws_port), connect_ws(daemon.ws_port):
        # The socket's owner still gets in (its reserve) ...
        async with connect_unix(daemon.socket_path) as owner:
            assert isinstance(await owner.call(p.Ping), p.Pong)
        # ... a network client is told busy before its upgrade completes.
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        await sock.connect(("127.0.0.1", daemon.ws_port))
        await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                        b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        with trio.fail_after(5):
            answer = await sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
