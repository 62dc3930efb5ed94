"""Expiry (absolute and idle) at the exact deadline, and hibernation: unwatched
sessions leave memory and come back identical. All in virtual time."""

from __future__ import annotations

import gc
import weakref

import nexus_protocol as p
import pytest
import trio
from raw_client import RawClient, connect_unix, connect_ws

from nexusd import Daemon
from nexusd.session._actor import SessionActor
from nexusd.session._mailbox import Disconnect, MailItem


async def _session(c: RawClient, **fields: object) -> tuple[str, str]:
    created = await c.call(p.Create, **fields)
    assert isinstance(created, p.Created)
    return created.session_id, created.token


async def _assert_gone(daemon: Daemon, c: RawClient, sid: str, token: str) -> None:
    """Every way of reaching the session says it expired; no data comes back."""
    for request in (p.Get, p.Attach, p.Summary):
        error = await c.call(request, session_id=sid, token=token)
        assert isinstance(error, p.Error), error
        assert error.code == "expired"
    error = await c.call(p.Set, session_id=sid, key="k", value="new", token=token)
    assert isinstance(error, p.Error) and error.code == "expired"
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as fresh:
        error = await fresh.call(p.Get, session_id=sid, key="k", token=token)
        assert isinstance(error, p.Error) and error.code == "expired"
    assert daemon.registry.active(sid) is None
    assert await daemon.store.load(sid) is None


async def test_ttl_expires_at_the_exact_deadline(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with (connect_unix(daemon.socket_path) as c,
                connect_ws(daemon.ws_port) as sub):
        sid, token = await _session(c, ttl=30)
        t0 = trio.current_time()
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)
        await c.call(p.Set, session_id=sid, key="k", value="v")
        await sub.next_of(p.Change)

        await sub.no_event_within(29.9)
        expired = await sub.next_of(p.Expired)
        assert trio.current_time() == pytest.approx(t0 + 30, abs=1e-3)
        assert (expired.session_id, expired.reason) == (sid, "ttl")
        await _assert_gone(daemon, c, sid, token)
        assert await daemon.store.count() == 0


async def test_idle_timeout_counts_from_the_last_activity(daemon: Daemon,
                                                         autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with (connect_unix(daemon.socket_path) as c,
                connect_unix(daemon.socket_path) as sub):
        sid, token = await _session(c, ttl=3600, idle_timeout=10)
        t0 = trio.current_time()
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)

        await trio.sleep(5)
        assert isinstance(await c.call(p.Get, session_id=sid, key="k"), p.Value)  # activity
        # Being watched is not activity: it expires 10 s after the read.
        await sub.no_event_within(9.9)
        expired = await sub.next_of(p.Expired)
        assert trio.current_time() == pytest.approx(t0 + 15, abs=1e-3)
        assert expired.reason == "idle"
        await _assert_gone(daemon, c, sid, token)


@pytest.mark.daemon_config(hibernate_after=2.0)
async def test_dormant_session_expires_at_its_deadline(daemon: Daemon,
                                                       autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, token = await _session(c, ttl=30)
        t0 = trio.current_time()
        await c.call(p.Set, session_id=sid, key="k", value="secret")
        await trio.sleep_until(t0 + 2.1)
        # Hibernated: out of memory, in the store.
        assert daemon.registry.active(sid) is None
        assert await daemon.store.count() == 1

        await trio.sleep_until(t0 + 29.99)
        assert await daemon.store.count() == 1
        await trio.sleep_until(t0 + 30.01)
        # The reaper found it through the store's deadline index and ended it
        # without bringing it back to life.
        assert await daemon.store.count() == 0
        assert daemon.registry.statistics().activations == 0
        await _assert_gone(daemon, c, sid, token)


@pytest.mark.daemon_config(hibernate_after=5.0)
async def test_hibernation_keeps_state_and_seq(daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with (connect_unix(daemon.socket_path, channel="cli") as c,
                connect_unix(daemon.socket_path) as sub):
        sid, token = await _session(c, ttl=3600)
        await sub.call(p.Attach, session_id=sid, token=token)
        await sub.next_of(p.Snapshot)
        await c.call(p.Set, session_id=sid, key="a", value={"n": 1})
        await c.call(p.Set, session_id=sid, key="b", value=[1, 2, 3])
        await c.call(p.Delete, session_id=sid, key="a")
        await c.call(p.UpdateContext, session_id=sid, preferences={"lang": "fr"})
        before = await c.call(p.Get, session_id=sid)
        assert isinstance(before, p.StateReply) and before.seq == 4

        # Watched sessions stay in memory however quiet they are.
        await trio.sleep(10)
        assert daemon.registry.active(sid) is not None
        assert isinstance(await sub.call(p.Detach, session_id=sid), p.Ok)
        t_detach = trio.current_time()
        await trio.sleep_until(t_detach + 4.9)
        assert daemon.registry.active(sid) is not None
        await trio.sleep_until(t_detach + 5.1)
        assert daemon.registry.active(sid) is None
        assert daemon.registry.statistics().hibernations == 1

    # A new connection, which has proven nothing yet: the token still works.
    async with connect_ws(daemon.ws_port) as c, connect_unix(daemon.socket_path) as sub:
        after = await c.call(p.Get, session_id=sid, token=token)
        assert isinstance(after, p.StateReply)
        assert daemon.registry.active(sid) is not None
        assert daemon.registry.statistics().activations == 1
        assert (after.seq, after.entries, after.context, after.created_at, after.expires_at) == (
            before.seq, before.entries, before.context, before.created_at, before.expires_at)
        value = await c.call(p.Get, session_id=sid, key="a")
        assert isinstance(value, p.Value) and (value.value, value.version) == (None, 2)

        written = await c.call(p.Set, session_id=sid, key="c", value=3)
        assert isinstance(written, p.Written) and written.seq == 5

        # The history survived too: a resume from before the hibernation.
        attached = await sub.call(p.Attach, session_id=sid, token=token, since=4)
        assert isinstance(attached, p.Attached) and attached.recovered
        change = await sub.next_of(p.Change)
        assert (change.seq, change.key, change.value) == (5, "c", 3)
        attached = await sub.call(p.Attach, session_id=sid, token=token, since=1)
        assert isinstance(attached, p.Attached) and attached.recovered
        replayed = [await sub.next_of(p.Change) for _ in range(4)]
        assert [(ch.seq, ch.op, ch.key) for ch in replayed] == [
            (2, "set", "b"), (3, "delete", "a"), (4, "context", None), (5, "set", "c")]
        await sub.no_event_within(1.0)


@pytest.mark.daemon_config(hibernate_after=5.0)
async def test_a_watcher_whose_goodbye_was_lost_does_not_keep_a_session_in_memory(
        daemon: Daemon, autojump_clock: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # A connection's goodbye (Disconnect) is dropped when the session's
    # mailbox is full; the session must still hibernate once quiet.
    send_nowait = SessionActor.send_nowait

    def losing_goodbyes(self: SessionActor, item: MailItem) -> bool:
        if isinstance(item, Disconnect):
            return False
        return send_nowait(self, item)

    monkeypatch.setattr(SessionActor, "send_nowait", losing_goodbyes)
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, token = await _session(c, ttl=3600)
        async with connect_unix(daemon.socket_path) as sub:
            await sub.call(p.Attach, session_id=sid, token=token)
            await sub.next_of(p.Snapshot)
        t_closed = trio.current_time()
        actor = daemon.registry.active(sid)
        assert actor is not None and actor.subscriber_count == 1  # the goodbye was lost
        await trio.sleep_until(t_closed + 4.9)
        assert daemon.registry.active(sid) is not None
        await trio.sleep_until(t_closed + 5.1)
        assert daemon.registry.active(sid) is None
        assert daemon.registry.statistics().hibernations == 1


@pytest.mark.daemon_config(hibernate_after=2.0)
async def test_a_hibernated_session_leaves_nothing_in_memory(daemon: Daemon,
                                                            autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sid, _token = await _session(c, ttl=3600)
        actor = daemon.registry.active(sid)
        assert actor is not None
        gone = weakref.ref(actor)
        del actor
        await trio.sleep(2.5)
        assert daemon.registry.active(sid) is None
        gc.collect()
        assert gone() is None
