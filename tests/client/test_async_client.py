"""AsyncClient against the fake daemon: requests, errors, reconnects."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import nexus_client as nc
import pytest
import trio
import trio.testing
from nexus_protocol import Ok

from .fakeserver import FakeServer

# Exact delays: with jitter fixed at 0.5 the n-th delay is min(8, 2**n) / 2.
FIXED = nc.Backoff(base=1.0, max_delay=8.0, max_attempts=10, jitter=lambda: 0.5)


async def test_session_round_trip(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path, channel="api") as c:
        assert c.connected and c.server == "fake-nexusd/1.0" and c.is_admin
        assert await c.ping() >= 0
        info = await c.create_session(user_id="u1", ttl=60, metadata={"k": 1})
        sid = info.session_id
        assert c.token_for(sid) == info.token
        assert "token" not in repr(info)  # secrets stay out of logs

        w = await c.set(sid, "theme", "dark")
        assert (w.seq, w.version) == (1, 1)
        assert (await c.set(sid, "theme", "light", expect=1)).version == 2
        entry = await c.get(sid, "theme")
        assert (entry.value, entry.version, entry.channel) == ("light", 2, "api")
        assert entry.exists
        missing = await c.get(sid, "nope")
        assert (missing.value, missing.version, missing.exists) == (None, 0, False)

        p = await c.patch(sid, {"a": 1, "b": [1, 2]}, ["theme"], expect={"a": 0})
        assert p.versions == {"a": 1, "b": 1, "theme": 3}
        state = await c.get(sid)
        assert state.values == {"a": 1, "b": [1, 2]} and state.seq == 3
        assert state.entries["a"].version == 1

        await c.delete(sid, "b")
        await c.update_context(sid, channel="mcp", preferences={"verbose": True},
                               history=["step1"], metrics={"ms": 3})
        synced = await c.sync(sid, "mcp")
        assert synced.context["current_channel"] == "mcp"
        assert synced.context["preferences"] == {"verbose": True}
        assert synced.to_dict()["data"] == {"a": 1}

        t = await c.switch_channel(sid, "cli", from_channel="mcp", reason="interactive")
        done = await c.complete_switch(sid, t.transition_id)
        assert done.transition_id == t.transition_id and done.seq == t.seq + 1
        renewal = await c.renew(sid, 120)
        assert renewal.expires_at > info.expires_at - 60
        assert (await c.summary(sid))["session_id"] == sid
        read_token = await c.grant(sid, "read")
        assert read_token.startswith("tok_")

        assert (await c.stats())["uptime_seconds"] == 3725
        page = await c.list_sessions(limit=10)
        assert [s["session_id"] for s in page.sessions] == [sid] and page.after is None

        await c.invalidate(sid)
        assert c.token_for(sid) is None
        with pytest.raises(nc.SessionExpired):
            await c.get(sid, token=info.token)

    sent = server.requests_of("create")[0]
    assert (sent.user_id, sent.ttl, sent.metadata, sent.channel) == (  # type: ignore[attr-defined]
        "u1", 60.0, {"k": 1}, None)


async def test_tokens_for_sessions_created_elsewhere(server: FakeServer, sock_path: str) -> None:
    sid = server.add_session(token="tok_elsewhere", color="red")
    async with nc.open_client(sock_path) as c:
        with pytest.raises(nc.Unauthorized) as info:
            await c.get(sid, "color")
        assert info.value.session_id == sid and info.value.code == "unauthorized"
        assert (await c.get(sid, "color", token="tok_elsewhere")).value == "red"
    async with nc.open_client(sock_path, tokens={sid: "tok_elsewhere"}) as c:
        assert (await c.get(sid, "color")).value == "red"


@pytest.mark.parametrize(("code", "cls"), [
    ("bad_request", nc.BadRequest),
    ("unauthorized", nc.Unauthorized),
    ("forbidden", nc.Forbidden),
    ("not_found", nc.SessionNotFound),
    ("expired", nc.SessionExpired),
    ("conflict", nc.Conflict),
    ("busy", nc.Busy),
    ("too_large", nc.TooLarge),
    ("unsupported_version", nc.UnsupportedVersion),
    ("unavailable", nc.Unavailable),
    ("internal", nc.InternalError),
    ("some_future_code", nc.InternalError),
])
async def test_error_codes_map_to_exceptions(server: FakeServer, sock_path: str, code: str,
                                             cls: type[nc.NexusError]) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        server.inject("set", code, "the server's words", retry_after=2.5)
        with pytest.raises(nc.NexusError) as info:
            await c.set(sid, "k", 1)
        assert type(info.value) is cls
        assert info.value.code == code
        assert info.value.message == "the server's words"
        assert info.value.retry_after == 2.5
        assert info.value.session_id == sid
        # The connection carries on after an error reply.
        assert (await c.set(sid, "k", 1)).version == 1


def test_error_hierarchy() -> None:
    assert issubclass(nc.Forbidden, nc.Unauthorized)
    assert issubclass(nc.CannotConnect, nc.ConnectionLost)
    assert all(issubclass(cls, nc.NexusError) for cls in nc.ERROR_CLASSES.values())


async def test_conflict_and_missing_key(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        await c.set(sid, "k", 1)
        with pytest.raises(nc.Conflict):
            await c.set(sid, "k", 2, expect=0)
        with pytest.raises(nc.SessionNotFound):
            await c.delete(sid, "absent")
        assert (await c.get(sid, "k")).value == 1


async def test_invalid_request_is_refused_locally(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        with pytest.raises(nc.BadRequest, match="longer than"):
            await c.set(sid, "k" * 300, 1)
        with pytest.raises(nc.BadRequest):
            await c.set(sid, "k", object())
        assert server.requests_of("set") == []
        assert (await c.set(sid, "k", 1)).version == 1


async def test_run_is_unavailable_in_v1(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        with pytest.raises(nc.Unavailable, match="not available"):
            await c.run(sid, "data-processor", {"x": 1}, resume=True)


async def test_admin_requests_without_admin_are_forbidden(sock_path: str,
                                                           nursery: trio.Nursery) -> None:
    server = FakeServer(unix_admin=False)
    await nursery.start(server.serve, sock_path)
    async with nc.open_client(sock_path) as c:
        assert not c.is_admin
        with pytest.raises(nc.Forbidden):
            await c.stats()
    async with nc.open_client(sock_path, admin_key="sekrit") as c:
        assert c.is_admin
        assert "uptime_seconds" in await c.stats()


async def test_cannot_connect(sock_path: str) -> None:
    with pytest.raises(nc.CannotConnect, match="cannot connect"):
        async with nc.open_client(sock_path):
            pass  # pragma: no cover


async def test_bad_admin_key_is_refused_at_connect(server: FakeServer, sock_path: str) -> None:
    with pytest.raises(nc.Unauthorized, match="bad admin key"):
        async with nc.open_client(sock_path, admin_key="wrong"):
            pass  # pragma: no cover


async def test_default_target_is_the_default_socket(monkeypatch: pytest.MonkeyPatch,
                                                    nursery: trio.Nursery,
                                                    sock_path: str) -> None:
    runtime = Path(sock_path).parent
    (runtime / "nexusd").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    server = FakeServer()
    await nursery.start(server.serve, str(runtime / "nexusd" / "nexusd.sock"))
    async with nc.open_client() as c:
        assert c.target.path == str(runtime / "nexusd" / "nexusd.sock")
        await c.ping()


async def test_no_target_is_the_daemon_nexus_finds(monkeypatch: pytest.MonkeyPatch,
                                                   sock_path: str) -> None:
    """With no target, a client goes where the ``nexus`` command would:
    $NEXUS_SOCKET, else $NEXUS_URL, else the default socket."""
    async with trio.open_nursery() as nursery:
        # Nothing at the default socket: a client that ignored the variables
        # could not connect.
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(Path(sock_path).parent / "elsewhere"))
        unix, web = FakeServer(), FakeServer()
        await nursery.start(unix.serve, sock_path)
        await nursery.start(partial(web.serve, websocket=True))
        ws_url = f"ws://127.0.0.1:{web.ws_port}/"

        monkeypatch.setenv("NEXUS_URL", ws_url)
        async with nc.open_client() as c:
            assert c.target == nc.Target(url=ws_url)
            await c.ping()
        assert len(web.hellos) == 1

        monkeypatch.setenv("NEXUS_SOCKET", sock_path)  # the socket comes first
        async with nc.open_client() as c:
            assert c.target == nc.Target(path=sock_path)
            await c.ping()
        assert len(unix.hellos) == 1

        monkeypatch.delenv("NEXUS_SOCKET")
        monkeypatch.setenv("NEXUS_URL", sock_path)
        with pytest.raises(ValueError, match="is not a ws:// or wss:// URL"):
            nc.open_client()
        nursery.cancel_scope.cancel()


def test_targets() -> None:
    assert nc.Target.parse("/run/x.sock") == nc.Target(path="/run/x.sock")
    assert nc.Target.parse("unix:///run/x.sock") == nc.Target(path="/run/x.sock")
    assert nc.Target.parse("ws://h:1/") == nc.Target(url="ws://h:1/")
    assert nc.Target.parse("WSS://h/") == nc.Target(url="WSS://h/")
    with pytest.raises(ValueError, match="unsupported"):
        nc.Target.parse("http://h/")
    assert nc.default_target({"XDG_RUNTIME_DIR": "/r", "HOME": "/h"}).path == \
        "/r/nexusd/nexusd.sock"
    assert nc.default_target({"HOME": "/h"}).path == "/h/.local/state/nexusd/nexusd.sock"


async def test_body_exception_is_not_wrapped(server: FakeServer, sock_path: str) -> None:
    with pytest.raises(nc.SessionNotFound):
        async with nc.open_client(sock_path) as c:
            await c.get("nope", "k", token="t")
    with pytest.raises(KeyError):
        async with nc.open_client(sock_path):
            raise KeyError("mine")


async def test_closed_client_refuses_calls(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await c.ping()


async def test_request_timeout(server: FakeServer, sock_path: str,
                               autojump_clock: trio.testing.MockClock) -> None:
    server.hold.add("ping")
    async with nc.open_client(sock_path, request_timeout=3) as c:
        start = trio.current_time()
        with pytest.raises(nc.Timeout):
            await c.ping()
        assert trio.current_time() - start == pytest.approx(3)


async def test_concurrent_requests_share_one_connection(server: FakeServer,
                                                        sock_path: str) -> None:
    async with nc.open_client(sock_path) as c:
        sid = (await c.create_session()).session_id
        results: dict[int, int] = {}

        async def write(i: int) -> None:
            results[i] = (await c.set(sid, f"k{i}", i)).version  # type: ignore[assignment]

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(write, i)
        assert results == {i: 1 for i in range(20)}
        assert len(server.hellos) == 1


# ------------------------------------------------------------------ disconnects


async def test_in_flight_request_fails_with_connection_lost_and_is_not_resent(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        sid = (await c.create_session()).session_id
        server.hold.add("set")
        failure: list[BaseException] = []

        async def write() -> None:
            try:
                await c.set(sid, "k", 1)
            except nc.ConnectionLost as exc:
                failure.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(write)
            await server.wait_for(lambda: bool(server.held))
            server.hold.clear()
            server.drop_connections()
        assert failure and "may or may not have been applied" in str(failure[0])
        await c.wait_connected()
        assert c.statistics().connects == 2
        assert (await c.get(sid, "k")).version == 0
        assert len(server.requests_of("set")) == 1  # never re-sent


async def test_reconnect_backoff_with_full_jitter(server: FakeServer, sock_path: str,
                                                  autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        server.refuse("unavailable", "starting up", times=3)
        dropped = trio.current_time()
        server.drop_connections()
        await server.wait_for(lambda: len(server.hellos) == 5)
        await c.wait_connected()
        delays = [t - dropped for t, _ in server.hellos[1:]]
        assert delays == pytest.approx([0.5, 1.5, 3.5, 7.5])
        stats = c.statistics()
        assert (stats.connects, stats.reconnect_attempts) == (2, 4)
        await c.ping()


def test_backoff_policy() -> None:
    b = nc.Backoff(base=0.5, max_delay=4.0, max_attempts=3, jitter=lambda: 1.0)
    assert [b.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(1000) == 4.0
    assert b.delay(0, retry_after=3.0) == 3.0
    assert not b.gives_up_after(2) and b.gives_up_after(3)
    assert not nc.Backoff(max_attempts=None).gives_up_after(10**6)
    zero = nc.Backoff(jitter=lambda: 0.0)
    assert zero.delay(5) == 0.0
    with pytest.raises(ValueError):
        nc.Backoff(base=0)
    with pytest.raises(ValueError):
        nc.Backoff(max_attempts=0)


async def test_requests_wait_for_the_reconnection(server: FakeServer, sock_path: str,
                                                  autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        server.stop_listening()
        server.drop_connections()
        done: list[float] = []

        async def ping() -> None:
            await c.ping()
            done.append(trio.current_time())

        async with trio.open_nursery() as n:
            n.start_soon(ping)
            await trio.sleep(5)
            assert not done and not c.connected
            await server.listen(sock_path)
        assert done and done[0] >= 5


async def test_gives_up_after_max_attempts(server: FakeServer, sock_path: str,
                                           autojump_clock: trio.testing.MockClock) -> None:
    policy = nc.Backoff(base=1.0, max_delay=8.0, max_attempts=3, jitter=lambda: 1.0)
    async with nc.open_client(sock_path, reconnect=policy) as c:
        server.stop_listening()
        start = trio.current_time()
        server.drop_connections()
        await trio.testing.wait_all_tasks_blocked()
        assert not c.connected
        with pytest.raises(nc.ConnectionLost, match=r"gave up reconnecting .* 3 attempts"):
            await c.wait_connected()
        # Attempts after 1, 1+2, 1+2+4 seconds; the third failure ends it.
        assert trio.current_time() - start == pytest.approx(7)
        with pytest.raises(nc.ConnectionLost):
            await c.ping()


async def test_no_reconnect(server: FakeServer, sock_path: str) -> None:
    async with nc.open_client(sock_path, reconnect=False) as c:
        server.drop_connections()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(nc.ConnectionLost):
            await c.wait_connected()
        assert len(server.hellos) == 1


async def test_unauthorized_handshake_is_not_retried(server: FakeServer, sock_path: str,
                                                     autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        server.refuse("unauthorized", "key revoked")
        server.drop_connections()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(nc.Unauthorized, match="key revoked"):
            await c.wait_connected()
        assert len(server.hellos) == 2


async def test_shutdown_moves_requests_to_the_next_connection(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        sid = (await c.create_session()).session_id
        server.hold.add("set")
        async with trio.open_nursery() as n:
            n.start_soon(c.set, sid, "crossed", 1)
            await server.wait_for(lambda: bool(server.held))
            server.hold.clear()
            # The held `set` crossed the shutdown: answered `unavailable`, so
            # the client sends it again on the next connection.
            await server.shutdown_connections(retry_after=2.0, close=True)
        assert (await c.get(sid, "crossed")).value == 1
        sets = server.requests_of("set")
        assert len(sets) == 2
        assert server.hellos[1][0] - server.hellos[0][0] >= 2.0  # honoured retry_after


async def test_new_requests_wait_while_the_daemon_drains(
        server: FakeServer, sock_path: str, autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        first = c.connection_id
        await server.shutdown_connections(retry_after=None)
        await trio.sleep(0.1)
        async with trio.open_nursery() as n:
            n.start_soon(c.ping)
            await trio.sleep(1)
            assert len(server.requests_of("ping")) == 0
            server.drop_connections()
        assert c.connection_id != first
        assert len(server.requests_of("ping")) == 1


async def test_protocol_violations(server: FakeServer, sock_path: str,
                                   autojump_clock: trio.testing.MockClock) -> None:
    async with nc.open_client(sock_path, reconnect=FIXED) as c:
        server.hold.add("ping")
        async with trio.open_nursery() as n:

            async def wrong_reply() -> None:
                await server.wait_for(lambda: bool(server.held))
                sc, req = server.held.pop()
                await sc.send(Ok(id=req.id))  # type: ignore[attr-defined]

            n.start_soon(wrong_reply)
            with pytest.raises(nc.ProtocolError, match="answered 'ping' with 'ok'"):
                await c.ping()

        async with trio.open_nursery() as n:

            async def garbage() -> None:
                await server.wait_for(lambda: bool(server.held))
                sc, _ = server.held.pop()
                await sc.send_frame(b"\x00\x00\x00\x03abc")

            n.start_soon(garbage)
            with pytest.raises(nc.ProtocolError, match="broke the protocol"):
                await c.ping()
        server.hold.clear()
        await c.wait_connected()
        await c.ping()
        assert c.statistics().connects == 2


async def test_websocket_transport(nursery: trio.Nursery) -> None:
    server = FakeServer()
    await nursery.start(lambda task_status: server.serve(websocket=True,
                                                         task_status=task_status))
    url = f"ws://127.0.0.1:{server.ws_port}/"
    async with nc.open_client(url, admin_key="sekrit") as c:
        assert c.is_admin
        sid = (await c.create_session()).session_id
        await c.set(sid, "k", {"nested": [1, 2]})
        async with c.watch(sid) as events:
            snap = await events.__anext__()
            assert isinstance(snap, nc.Snapshot) and snap.entries["k"]["value"] == {
                "nested": [1, 2]}
        assert (await c.get(sid, "k")).value == {"nested": [1, 2]}


async def test_websocket_cannot_connect() -> None:
    with pytest.raises(nc.CannotConnect):
        async with nc.open_client("ws://127.0.0.1:9/", connect_timeout=5):
            pass  # pragma: no cover


def test_unix_socket_path_fixture_is_short(sock_path: str) -> None:
    assert len(os.fsencode(sock_path)) < 100
