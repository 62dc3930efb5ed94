"""Acknowledged means durable: `kill -9` the daemon at random moments while
many writers pipeline requests into many sessions; after every restart, each
acknowledged write is there, each session's changes are contiguous from 1,
and the database passes `PRAGMA integrity_check`.

The choices (where to kill, what to write) come from a seeded RNG; the exact
moment a kill lands relative to the writes is up to the scheduler, which is
the point. Each cycle:

1. start `nexusd serve` on the data directory the last cycle left;
2. verify every session against the model built from what was acknowledged
   (cycle 0 creates the sessions instead);
3. run the writers, then stop the daemon: SIGKILL mostly; sometimes during
   start-up (store recovery), during a graceful shutdown (snapshot writes),
   or a graceful stop that must exit 0. Halfway, the writers move to another
   half of the sessions, so that the ones left alone hibernate (snapshot
   writes while other sessions append) and the kill may catch that too;
4. check the database file before anything reopens it.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import nexus_protocol as p
import trio
from daemon_process import DaemonProcess, daemon_process, db_check
from raw_client import ClientClosed, RawClient, connect_unix

SESSIONS = 20
CONNECTIONS = 4
WRITERS_PER_CONNECTION = 2
KEYS_PER_WRITER = 6
MAX_PIPELINE = 12
#: The resume window must cover a whole cycle's changes to a session (a few
#: hundred), so that attach(since=last verified seq) can replay every change
#: after it; not much more, since each activation reads the whole window.
RETENTION = 5_000
#: Sessions left alone this long hibernate: their snapshot is written.
HIBERNATE_AFTER = 0.1

#: How a cycle ends, and how often: SIGKILL while writing; SIGKILL during
#: start-up; SIGTERM then SIGKILL during the drain; SIGTERM, exit 0.
ENDINGS = {"kill": 70, "kill-at-start": 10, "kill-in-shutdown": 12, "term": 8}
#: The first cycles' endings, so that even a short run has each of them; the
#: seeded RNG picks the rest.
FIRST_ENDINGS = ("kill", "kill-in-shutdown", "kill", "term", "kill-at-start", "kill")


@attrs.define
class Session:
    """A session as the test knows it: the state it verified, and what was
    acknowledged or refused since."""

    sid: str
    token: str
    seq: int = 0  # verified: changes 1..seq were seen, contiguous
    entries: dict[str, tuple[Any, int]] = attrs.Factory(dict)  # key -> (value, version)
    # (seq, {key: (value, version)}) of each write acknowledged since `seq`.
    acked: list[tuple[int, dict[str, tuple[Any, int]]]] = attrs.Factory(list)
    # (key, value) of writes answered with an error: they must never appear.
    refused: set[tuple[str, Any]] = attrs.Factory(set)


@attrs.define
class Ledger:
    sessions: list[Session] = attrs.Factory(list)
    hot: list[Session] = attrs.Factory(list)  # the sessions being written now
    values: Iterator[int] = attrs.Factory(lambda: itertools.count(1))
    acked: int = 0  # write replies received
    verified: int = 0  # acknowledged writes checked after a restart
    refused: int = 0
    unanswered: int = 0  # in flight at the kill: may or may not have landed
    kills: int = 0
    graceful: int = 0
    endings: Counter[str] = attrs.Factory(Counter)
    hibernations: int = 0  # snapshots written while others wrote


# ---------------------------------------------------------------- writing


async def _create_sessions(socket: Path, ledger: Ledger) -> None:
    async with connect_unix(socket, channel="setup") as c:
        for _ in range(SESSIONS):
            created = await c.call(p.Create, ttl=86400, idle_timeout=86400)
            assert isinstance(created, p.Created), created
            ledger.sessions.append(Session(created.session_id, created.token))


def _next_request(c: RawClient, rng: random.Random, writer: int,
                  ledger: Ledger) -> tuple[Session, p.Set | p.Patch, dict[str, Any]]:
    """A set (or now and then a patch of a few keys) of this writer's own
    keys, with values that only grow: per key, later writes carry larger values."""
    session = rng.choice(ledger.hot)
    keys = [f"w{writer}.{i}" for i in range(KEYS_PER_WRITER)]
    if rng.random() < 0.15:
        values = {k: next(ledger.values) for k in rng.sample(keys, 3)}
        return session, p.Patch(id=c.new_id(), session_id=session.sid, set=values,
                                token=session.token), values
    key, value = rng.choice(keys), next(ledger.values)
    return session, p.Set(id=c.new_id(), session_id=session.sid, key=key, value=value,
                          token=session.token), {key: value}


async def _write_until_gone(c: RawClient, rng: random.Random, writer: int,
                            ledger: Ledger) -> None:
    """Pipelines batches of writes until the daemon goes away; records what
    each reply acknowledged or refused."""
    while True:
        batch = [_next_request(c, rng, writer, ledger)
                 for _ in range(rng.randint(1, MAX_PIPELINE))]
        try:
            await c.send_many([m for _, m, _ in batch])
        except p.LocalProtocolError:
            return  # the daemon said `shutdown`: nothing was sent
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ledger.unanswered += len(batch)
            return
        for i, (session, message, values) in enumerate(batch):
            try:
                reply = await c.reply(message.id)
            except ClientClosed:
                ledger.unanswered += len(batch) - i
                return
            if isinstance(reply, p.Written):
                ledger.acked += 1
                if isinstance(message, p.Patch):
                    assert reply.versions is not None, reply
                    versions = reply.versions
                else:
                    assert reply.version is not None, reply
                    versions = dict.fromkeys(values, reply.version)
                assert set(versions) == set(values), reply
                session.acked.append(
                    (reply.seq, {k: (v, versions[k]) for k, v in values.items()}))
            else:
                # Only a daemon going away may refuse a well-formed write.
                assert isinstance(reply, p.Error), reply
                assert reply.code in ("unavailable", "busy"), reply
                ledger.refused += 1
                session.refused.update(values.items())


async def _run_writers(socket: Path, ledger: Ledger, seed: str, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Writes until the daemon goes away; started once every connection is
    greeted, so that a stop never catches a connection half open."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect_unix(socket, channel=f"writer{n}"))
                   for n in range(CONNECTIONS)]
        async with trio.open_nursery() as nursery:
            for w in range(CONNECTIONS * WRITERS_PER_CONNECTION):
                nursery.start_soon(_write_until_gone, clients[w // WRITERS_PER_CONNECTION],
                                   random.Random(f"{seed}/{w}"), w, ledger)
            task_status.started()


# -------------------------------------------------------------- verifying


def _apply(entries: dict[str, tuple[Any, int]], change: p.Change) -> dict[str, tuple[Any, int]]:
    """Applies a change to the model; returns what it wrote, {key: (value, version)}."""
    if change.op == "set":
        assert change.key is not None and change.version is not None
        wrote = {change.key: (change.value, change.version)}
    else:
        assert change.op == "patch", change
        assert not change.value["delete"], change
        versions = change.value["versions"]
        wrote = {k: (v, versions[k]) for k, v in change.value["set"].items()}
    entries.update(wrote)
    return wrote


async def _verify(socket: Path, ledger: Ledger) -> None:
    """Every session: the changes since the last verified seq are contiguous
    and hold every acknowledged write at its seq; the state equals the model;
    nothing refused ever landed."""
    async with connect_unix(socket, channel="verify") as c:
        for s in ledger.sessions:
            attached = await c.call(p.Attach, session_id=s.sid, token=s.token, since=s.seq)
            assert isinstance(attached, p.Attached), attached
            assert attached.recovered, (
                f"session {s.sid}: no replay from seq {s.seq} (now at {attached.seq})")
            assert attached.seq >= s.seq, f"session {s.sid} went back from {s.seq}"
            replayed = [await c.next_of(p.Change) for _ in range(attached.seq - s.seq)]
            assert {e.session_id for e in replayed} <= {s.sid}
            seqs = [e.seq for e in replayed]
            assert seqs == list(range(s.seq + 1, attached.seq + 1)), (
                f"session {s.sid}: replay from {s.seq} gave seqs {seqs}")

            wrote_at = {e.seq: _apply(s.entries, e) for e in replayed}
            for seq, values in s.acked:
                assert seq in wrote_at, (
                    f"session {s.sid}: acknowledged write at seq {seq} {values} is lost; "
                    f"the session is at seq {attached.seq}")
                assert wrote_at[seq] == values, (
                    f"session {s.sid}: seq {seq} holds {wrote_at[seq]}, "
                    f"acknowledged as {values}")
            landed = {(k, v) for wrote in wrote_at.values() for k, (v, _) in wrote.items()}
            assert not landed & s.refused, (
                f"session {s.sid}: writes answered with an error landed: "
                f"{sorted(landed & s.refused)}")

            state = await c.call(p.Get, session_id=s.sid)
            assert isinstance(state, p.StateReply), state
            assert state.seq == attached.seq
            current = {k: (e["value"], e["version"]) for k, e in state.entries.items()}
            assert current == s.entries, f"session {s.sid}: state differs from its changes"
            for _, values in s.acked:
                for key, (value, version) in values.items():
                    now_value, now_version = current[key]
                    assert now_version > version or (now_version, now_value) == (
                        version, value), f"session {s.sid}: {key} = {current[key]}"
                    assert now_value >= value  # values only grow, per key
                ledger.verified += 1

            assert isinstance(await c.call(p.Detach, session_id=s.sid), p.Ok)
            s.seq, s.acked = attached.seq, []
        assert not c.pending_events()


async def _verify_from_start(socket: Path, ledger: Ledger) -> None:
    """attach(since=0): every change from seq 1, contiguous, adding up to the
    state; or, once a session has more changes than the resume window, a
    snapshot that says it is one, holding that state."""
    async with connect_unix(socket, channel="verify") as c:
        for s in ledger.sessions:
            attached = await c.call(p.Attach, session_id=s.sid, token=s.token, since=0)
            assert isinstance(attached, p.Attached), attached
            assert attached.seq == s.seq
            if attached.recovered:
                replayed = [await c.next_of(p.Change) for _ in range(s.seq)]
                assert [e.seq for e in replayed] == list(range(1, s.seq + 1))
                entries: dict[str, tuple[Any, int]] = {}
                for e in replayed:
                    _apply(entries, e)
            else:
                assert s.seq > RETENTION
                snapshot = await c.next_of(p.Snapshot)
                assert (snapshot.seq, snapshot.recovered) == (s.seq, False)
                entries = {k: (e["value"], e["version"]) for k, e in snapshot.entries.items()}
            assert entries == s.entries, f"session {s.sid}"
            assert isinstance(await c.call(p.Detach, session_id=s.sid), p.Ok)
        assert not c.pending_events()


def _assert_clean_log(daemon: DaemonProcess) -> None:
    log = daemon.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-6000:]


# ----------------------------------------------------------------- cycles


async def _crash_cycles(tmp_path: Path, socket_dir: Path, cycles: int, seed: int,
                        *flags: str) -> Ledger:
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    # Debug logging: the daemon logs each hibernation, which the run counts.
    flags = ("--retention", str(RETENTION), "--hibernate-after", str(HIBERNATE_AFTER),
             "--log-level", "debug", *flags)
    rng = random.Random(seed)
    ledger = Ledger()
    for cycle in range(cycles):
        ending = (FIRST_ENDINGS[cycle] if cycle < len(FIRST_ENDINGS)
                  else rng.choices(list(ENDINGS), list(ENDINGS.values()))[0])
        delay = rng.uniform(0.0, 0.5) if ending == "kill-at-start" else rng.uniform(0.05, 0.8)
        halves = [rng.sample(range(SESSIONS), SESSIONS // 2) for _ in range(2)]
        ledger.endings[ending] += 1
        log = tmp_path / f"daemon-{cycle:03d}.log"
        async with daemon_process(data, socket, log, *flags) as daemon:
            if ending == "kill-at-start":
                # Anywhere in start-up: imports, WAL recovery, migrations, listening.
                await trio.sleep(delay)
                await daemon.kill()
                ledger.kills += 1
            else:
                await daemon.wait_ready()
                if cycle == 0:
                    await _create_sessions(socket, ledger)
                else:
                    await _verify(socket, ledger)
                async with trio.open_nursery() as nursery:
                    ledger.hot = [ledger.sessions[i] for i in halves[0]]
                    await nursery.start(_run_writers, socket, ledger, f"{seed}/{cycle}")
                    await trio.sleep(delay / 2)
                    ledger.hot = [ledger.sessions[i] for i in halves[1]]
                    await trio.sleep(delay / 2)
                    if ending == "term":
                        assert await daemon.terminate() == 0, daemon.log_text()[-4000:]
                        ledger.graceful += 1
                    else:
                        if ending == "kill-in-shutdown":
                            daemon.terminate_nowait()
                            await trio.sleep(rng.uniform(0.0, 0.05))
                        await daemon.kill()
                        ledger.kills += 1
        _assert_clean_log(daemon)
        ledger.hibernations += daemon.log_text().count(" hibernated at seq ")
        db_check(data)

    # One last start: everything acknowledged in the last cycle is there too,
    # and the daemon still stops cleanly.
    async with daemon_process(data, socket, tmp_path / "daemon-final.log", *flags) as daemon:
        await daemon.wait_ready()
        await _verify(socket, ledger)
        await _verify_from_start(socket, ledger)
        assert await daemon.terminate() == 0, daemon.log_text()[-4000:]
    _assert_clean_log(daemon)
    db_check(data)
    assert ledger.verified == ledger.acked
    return ledger


def _report(name: str, ledger: Ledger, cycles: int) -> None:
    # Shown with `pytest -s` (or -rP): what the run actually exercised.
    print(f"\n{name}: {cycles} cycles, {ledger.kills} kill -9, {ledger.graceful} graceful "
          f"stops {dict(ledger.endings)}; {ledger.acked} writes acknowledged, "
          f"{ledger.verified} verified after restarts; {ledger.unanswered} in flight at "
          f"a kill; {ledger.refused} refused; {ledger.hibernations} hibernations")


async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, socket_dir: Path,
                                                  crash_cycles: int) -> None:
    ledger = await _crash_cycles(tmp_path, socket_dir, crash_cycles, 1)
    _report("durability process", ledger, crash_cycles)
    if crash_cycles >= len(FIRST_ENDINGS):
        assert set(ledger.endings) == set(ENDINGS)
    assert ledger.hibernations > 0
    # The run did what it claims: writes were acknowledged across many kills.
    assert ledger.kills >= crash_cycles * 0.6
    assert ledger.acked > crash_cycles * 50


async def test_kill_9_at_durability_power(tmp_path: Path, socket_dir: Path,
                                          crash_cycles: int) -> None:
    cycles = max(4, crash_cycles // 4)
    ledger = await _crash_cycles(tmp_path, socket_dir, cycles, 2, "--durability", "power")
    _report("durability power", ledger, cycles)
    assert ledger.kills >= cycles * 0.6
    assert ledger.acked > cycles * 20



async def test_acknowledged_create_renew_and_grant_survive_kill_9(
        tmp_path: Path, socket_dir: Path) -> None:
    """Not only writes: a session, a new deadline and a new token are durable
    once acknowledged, even when nothing is written after them."""
    data, socket = tmp_path / "data", socket_dir / "n.sock"
    async with daemon_process(data, socket, tmp_path / "first.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket) as c:
            created = await c.call(p.Create, ttl=600)
            assert isinstance(created, p.Created)
            sid = created.session_id
            renewed = await c.call(p.Renew, session_id=sid, ttl=5000)
            assert isinstance(renewed, p.Renewed) and renewed.seq == 1
            granted = await c.call(p.Grant, session_id=sid, scope="write")
            assert isinstance(granted, p.Granted)
            await daemon.kill()
    db_check(data)

    async with daemon_process(data, socket, tmp_path / "second.log") as daemon:
        await daemon.wait_ready()
        async with connect_unix(socket) as c:
            state = await c.call(p.Get, session_id=sid, token=granted.token)
            assert isinstance(state, p.StateReply), state
            assert (state.seq, state.expires_at) == (1, renewed.expires_at)
            written = await c.call(p.Set, session_id=sid, key="k", value=1)
            assert isinstance(written, p.Written) and written.seq == 2
        assert await daemon.terminate() == 0
    _assert_clean_log(daemon)
