"""Thousands of sessions changing state together never stall the event loop:
the work each turn of the loop does for them is bounded. All in virtual time."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import nexus_protocol as p
import pytest
import trio
from raw_client import connect_unix

from nexusd import Daemon, _registry
from nexusd._registry import QUIET_PER_TURN
from nexusd._service import DETACH_PER_TURN
from nexusd.session._actor import SessionActor

SESSIONS = 300


class _Turns(trio.abc.Instrument):
    """Numbers the turns of trio's run loop (each begins with a wait for I/O)."""

    def __init__(self) -> None:
        self.turn = 0

    def before_io_wait(self, timeout: float) -> None:
        self.turn += 1


@pytest.fixture
async def told(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Counter[tuple[str, int]]]:
    """(request type, turn) -> how many actors were sent one in that turn."""
    turns = _Turns()
    counts: Counter[tuple[str, int]] = Counter()
    send_nowait = SessionActor.send_nowait

    def counted(actor: SessionActor, item: object) -> bool:
        sent = send_nowait(actor, item)  # type: ignore[arg-type]
        if sent:
            counts[type(item).__name__, turns.turn] += 1
        return sent

    monkeypatch.setattr(SessionActor, "send_nowait", counted)
    trio.lowlevel.add_instrument(turns)
    try:
        yield counts
    finally:
        trio.lowlevel.remove_instrument(turns)


def _per_turn(counts: Counter[tuple[str, int]], kind: str) -> list[int]:
    return [n for (k, _), n in counts.items() if k == kind]


async def _watched_sessions_left_together(daemon: Daemon) -> float:
    """Makes `SESSIONS` sessions watched by one connection, then closes it;
    returns when it closed."""
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c, connect_unix(daemon.socket_path) as w:
        for _ in range(SESSIONS):
            created = await c.call(p.Create)
            assert isinstance(created, p.Created)
            attached = await w.call(p.Attach, session_id=created.session_id,
                                    token=created.token)
            assert isinstance(attached, p.Attached)
        assert daemon.bus.statistics().subscribers == SESSIONS
    return trio.current_time()


@pytest.mark.daemon_config(hibernate_after=5.0)
async def test_sessions_quiet_together_hibernate_over_many_turns(
        daemon: Daemon, autojump_clock: object, told: Counter[tuple[str, int]]) -> None:
    closed = await _watched_sessions_left_together(daemon)
    await trio.sleep_until(closed + 4.9)
    assert daemon.registry.statistics().active == SESSIONS
    await trio.sleep_until(closed + 5.1)
    # Every one hibernated, at the same virtual moment...
    assert daemon.registry.statistics().active == 0
    assert daemon.registry.statistics().hibernations == SESSIONS
    # ...but no turn of the loop told more than QUIET_PER_TURN of them.
    per_turn = _per_turn(told, "Quiet")
    assert sum(per_turn) == SESSIONS
    assert max(per_turn) == QUIET_PER_TURN


@pytest.mark.daemon_config(hibernate_after=5.0)
async def test_the_hibernator_waits_while_many_snapshots_wait_for_the_store(
        daemon: Daemon, autojump_clock: object, told: Counter[tuple[str, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Were every quiet session told at once, a write queued meanwhile would
    # wait behind all their snapshots (seconds, with 20,000 of them).
    monkeypatch.setattr(_registry, "SAVING_MAX", 100)
    store_free = trio.Event()
    save = daemon.store.save_snapshot

    async def slow_save(*args: object) -> None:
        await store_free.wait()
        await save(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(daemon.store, "save_snapshot", slow_save)
    closed = await _watched_sessions_left_together(daemon)
    await trio.sleep_until(closed + 5.5)
    # At most one turn's worth past the bound (its actors may not have
    # started saving when the hibernator looks).
    assert sum(_per_turn(told, "Quiet")) <= _registry.SAVING_MAX + 2 * QUIET_PER_TURN
    store_free.set()
    await trio.sleep(1)
    assert sum(_per_turn(told, "Quiet")) == SESSIONS
    assert daemon.registry.statistics().hibernations == SESSIONS


async def test_a_connection_watching_many_sessions_detaches_over_many_turns(
        daemon: Daemon, autojump_clock: object, told: Counter[tuple[str, int]]) -> None:
    await _watched_sessions_left_together(daemon)
    await trio.sleep(0.1)
    per_turn = _per_turn(told, "Disconnect")
    assert sum(per_turn) == SESSIONS
    assert max(per_turn) == DETACH_PER_TURN
    assert daemon.bus.statistics().subscribers == 0


@pytest.mark.daemon_config(default_idle=60.0)
async def test_stats_counts_subscribers_as_they_come_and_go(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as c:
        sessions = []
        for _ in range(2):
            created = await c.call(p.Create)
            assert isinstance(created, p.Created)
            sessions.append((created.session_id, created.token))
        (s1, t1), (s2, t2) = sessions
        async with connect_unix(daemon.socket_path) as w1, \
                connect_unix(daemon.socket_path) as w2:
            await w1.call(p.Attach, session_id=s1, token=t1)
            await w1.call(p.Attach, session_id=s1, token=t1)  # again: still one
            await w2.call(p.Attach, session_id=s1, token=t1)
            await w2.call(p.Attach, session_id=s2, token=t2)
            assert (await daemon.stats())["subscribers"] == 3
            await w2.call(p.Detach, session_id=s1)
            assert (await daemon.stats())["subscribers"] == 2
        await trio.sleep(0.1)  # both watchers' connections closed
        assert (await daemon.stats())["subscribers"] == 0
        async with connect_unix(daemon.socket_path) as w:
            await w.call(p.Attach, session_id=s2, token=t2)
            assert (await daemon.stats())["subscribers"] == 1
            await trio.sleep(61)  # s2 expires (idle) with its watcher attached
            assert daemon.registry.active(s2) is None
            assert (await daemon.stats())["subscribers"] == 0
        await trio.sleep(0.1)  # its connection closed
        assert (await daemon.stats())["connections_by_transport"] == {"unix": 1}
