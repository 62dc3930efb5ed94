"""Several daemons on one Redis: any daemon serves any session, a session
carries on when its daemon dies, and a former owner can never write."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import coredis
import httpx
import nexus_protocol as p
import pytest
import trio
from cluster_procs import Cluster
from daemon_process import wait_until
from http_client import open_events
from nexus_client import (
    AsyncClient,
    Conflict,
    ConnectionLost,
    RunContext,
    SessionExpired,
    Unavailable,
    Worker,
    WriteResult,
    open_client,
    steps,
)
from redis_server import free_port


async def collect(client: AsyncClient, session_id: str, into: list[int],
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watches the session, appending the seq of each change to `into`; a
    snapshot that is not the first event (changes skipped) fails the test."""
    async with client.watch(session_id) as watch:
        first = True
        async for event in watch:
            if isinstance(event, p.Snapshot):
                assert first or event.recovered, f"changes skipped: {event}"
                into.append(event.seq)
                task_status.started()
            elif isinstance(event, p.Change):
                into.append(event.seq)
            first = False


def gap_free(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_a_session_written_on_one_daemon_is_watched_and_written_on_another(
        cluster: Cluster) -> None:
    await cluster.start(2)
    async with open_client(cluster.socket(0)) as a, open_client(cluster.socket(1)) as b, \
            trio.open_nursery() as nursery:
        info = await a.create_session()
        await a.set(info.session_id, "before", 1)
        b.set_token(info.session_id, info.token)
        seen: list[int] = []
        await nursery.start(collect, b, info.session_id, seen)
        for i in range(1, 11):
            await a.set(info.session_id, f"k{i}", i)
        written = await b.set(info.session_id, "from-b", True)  # forwarded to its owner
        assert (await a.get(info.session_id, "from-b")).value is True
        assert (await b.get(info.session_id, "k10")).value == 10
        await wait_until(lambda: seen and seen[-1] >= written.seq, "b saw every change")
        assert seen == list(range(1, written.seq + 1))  # the snapshot at 1, then each change
        nursery.cancel_scope.cancel()


async def write_until(client: AsyncClient, session_id: str, acked: dict[int, int],
                      stop: trio.Event, counter: itertools.count[int],
                      done: trio.Event | None = None) -> None:
    """Sets key w<i> = i, one at a time, until `stop` (then sets `done`);
    records what was acknowledged (key index -> seq). A write whose outcome is
    unknown (the connection dropped, its daemon died) is not recorded, and
    retried under a new key."""
    try:
        await _write_until(client, session_id, acked, stop, counter)
    finally:
        if done is not None:
            done.set()


async def _write_until(client: AsyncClient, session_id: str, acked: dict[int, int],
                       stop: trio.Event, counter: itertools.count[int]) -> None:
    while not stop.is_set():
        i = next(counter)
        try:
            written = await client.set(session_id, f"w{i}", i)
        except (ConnectionLost, Unavailable):
            await trio.sleep(0.05)
            continue
        acked[i] = written.seq
        await trio.sleep(0.005)


async def test_kill_9_of_the_owner_under_writes_loses_nothing_acknowledged(
        cluster: Cluster) -> None:
    owner, *_ = await cluster.start(3)
    endpoints = [cluster.socket(i) for i in range(3)]
    async with open_client(endpoints) as writer, open_client(endpoints) as w0, \
            open_client(cluster.socket(1)) as w1, open_client(cluster.socket(2)) as w2, \
            trio.open_nursery() as nursery:
        assert writer.target.path == cluster.socket(0)
        info = await writer.create_session()  # owned by daemon 0
        for watcher in (w0, w1, w2):
            watcher.set_token(info.session_id, info.token)
        seen0: list[int] = []  # a client of the daemon that dies
        seen1: list[int] = []
        seen2: list[int] = []
        await nursery.start(collect, w0, info.session_id, seen0)
        await nursery.start(collect, w1, info.session_id, seen1)
        await nursery.start(collect, w2, info.session_id, seen2)
        acked: dict[int, int] = {}
        stop, stopped = trio.Event(), trio.Event()
        counter = itertools.count(1)
        nursery.start_soon(write_until, writer, info.session_id, acked, stop, counter,
                           stopped)
        await wait_until(lambda: len(acked) >= 20, "20 writes acknowledged")
        await owner.kill()
        killed_at = len(acked)
        # The lease (1.5 s) and a reconnection, with room to spare.
        await wait_until(lambda: len(acked) >= killed_at + 20, "20 writes after the kill",
                         bound=15)
        stop.set()
        await stopped.wait()
        assert writer.target.path != cluster.socket(0)  # it went on through another endpoint
        state = await writer.get(info.session_id)
        # Writes answered `unavailable` may be there too: the watchers see
        # every change the session has.
        await wait_until(lambda: min(seen0[-1], seen1[-1], seen2[-1]) >= state.seq,
                         "every watcher saw the last change")
        assert w0.target.path != cluster.socket(0)  # it moved to another endpoint
        nursery.cancel_scope.cancel()
    for i in acked:
        assert state.entries[f"w{i}"].value == i, f"acknowledged write w{i} lost"
    # The watchers missed nothing, in order: those on the surviving daemons,
    # and the one that resumed from its seq on another daemon.
    assert gap_free(seen0) and gap_free(seen1) and gap_free(seen2), (seen0, seen1, seen2)
    assert seen0[-1] == seen1[-1] == seen2[-1] == state.seq


async def test_a_paused_former_owner_cannot_write_once_its_session_was_taken_over(
        cluster: Cluster) -> None:
    await cluster.start(2)
    async with open_client(cluster.socket(0), reconnect=False) as old, \
            open_client(cluster.socket(1)) as new, trio.open_nursery() as nursery:
        info = await old.create_session()
        await old.set(info.session_id, "k", "first")
        new.set_token(info.session_id, info.token)
        cluster.pause(0)  # daemon 0 hangs, its session still active in it
        # Daemon 1 forwards to daemon 0 until its lease lapses: that request
        # may reach daemon 0 (when it wakes), so it is not served twice but
        # answered `unavailable`. Asked again, daemon 1 takes the session over.
        with trio.fail_after(10):
            while True:
                try:
                    taken = await new.set(info.session_id, "k", "taken over")
                    break
                except Unavailable:
                    await trio.sleep(0.1)
        outcome: list[object] = []

        async def stale_write() -> None:
            try:
                outcome.append(await old.set(info.session_id, "k", "stale"))
            except Unavailable as exc:
                outcome.append(exc)

        nursery.start_soon(stale_write)  # waits in daemon 0's socket buffer
        await trio.sleep(0.2)
        cluster.resume(0)
        await wait_until(lambda: outcome, "daemon 0 answered the stale write")
        assert isinstance(outcome[0], Unavailable), outcome  # refused, not acknowledged
        entry = await new.get(info.session_id, "k")
        assert (entry.value, entry.version) == ("taken over", taken.version)
        # Asked again, daemon 0 forwards it to the session's new owner.
        again = await old.set(info.session_id, "k", "through the owner")
        assert again.seq == taken.seq + 1
        assert (await new.get(info.session_id, "k")).value == "through the owner"
    assert "taken over" in cluster.daemons[0].log_text() or "fenced" in \
        cluster.daemons[0].log_text().lower()


async def test_only_one_daemon_reaps_and_every_daemon_knows_why_a_session_ended(
        cluster: Cluster) -> None:
    await cluster.start(3)
    async with open_client(cluster.socket(0)) as a:
        info = await a.create_session(ttl=1.0)
        await a.set(info.session_id, "k", 1)
    # Its daemon stops: the session hibernates there and is released.
    assert await cluster.daemons[0].terminate() == 0
    await trio.sleep(2.5)  # past its ttl; a reaper on another daemon expires it
    for i in (1, 2):
        async with open_client(cluster.socket(i)) as c:
            c.set_token(info.session_id, info.token)
            with pytest.raises(SessionExpired, match="ttl"):
                await c.get(info.session_id, "k")


async def test_conflicts_and_order_hold_across_daemons(cluster: Cluster) -> None:
    await cluster.start(2)
    async with open_client(cluster.socket(0)) as a, open_client(cluster.socket(1)) as b:
        info = await a.create_session()
        b.set_token(info.session_id, info.token)
        first = await a.set(info.session_id, "k", "a")
        # Both saw version 1; the owner serialises them: one wins, one conflicts.
        results: list[object] = []

        async def write(client: AsyncClient, value: str) -> None:
            try:
                results.append(await client.set(info.session_id, "k", value,
                                                expect=first.version))
            except Conflict as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, a, "from a")
            nursery.start_soon(write, b, "from b")
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "WriteResult"]
        # One seq per change, whichever daemon the writer used.
        seqs = [(await c.set(info.session_id, f"n{i}", i)).seq
                for i, c in enumerate([a, b, a, b, b, a])]
        assert seqs == list(range(first.seq + 2, first.seq + 8))


async def test_a_daemon_forwards_by_memory_even_after_the_owner_let_the_session_go(
        cluster: Cluster) -> None:
    await cluster.start(2, "--hibernate-after", "300ms")
    async with open_client(cluster.socket(0)) as a, open_client(cluster.socket(1)) as b:
        info = await a.create_session()
        b.set_token(info.session_id, info.token)
        first = await b.set(info.session_id, "k", 1)  # found owned by daemon 0
        await wait_until(lambda: hibernated(a), "daemon 0 let the session go", bound=10)
        # Daemon 1 still sends it to daemon 0, which takes the session again.
        again = await b.set(info.session_id, "k", 2)
        assert again.seq == first.seq + 1
        assert (await a.get(info.session_id, "k")).value == 2


async def hibernated(client: AsyncClient) -> bool:
    stats = await client.stats()
    return bool(stats["hibernations"] >= 1 and stats["sessions_active"] == 0)


async def set_retrying(client: AsyncClient, session_id: str, key: str, value: object
                       ) -> WriteResult:
    """`set`, again while the daemon says to retry (a takeover under way)."""
    with trio.fail_after(15):
        while True:
            try:
                return await client.set(session_id, key, value)
            except Unavailable:
                await trio.sleep(0.1)


async def test_a_watcher_of_a_paused_former_owner_follows_the_session_to_its_new_owner(
        cluster: Cluster) -> None:
    await cluster.start(2)
    async with open_client(cluster.socket(0)) as old, open_client(cluster.socket(0)) as watcher, \
            open_client(cluster.socket(1)) as new, trio.open_nursery() as nursery:
        info = await old.create_session()
        await old.set(info.session_id, "k", "first")
        for c in (watcher, new):
            c.set_token(info.session_id, info.token)
        seen: list[int] = []
        await nursery.start(collect, watcher, info.session_id, seen)
        cluster.pause(0)
        await trio.sleep(2.5)  # past the lease: daemon 1 takes over, never asking daemon 0
        taken = await set_retrying(new, info.session_id, "k", "taken over")
        cluster.resume(0)
        # Daemon 0 lets the session go: its watcher resumes through the new
        # owner, and its readers read what the new owner has.
        await wait_until(lambda: seen and seen[-1] >= taken.seq,
                         "the watcher on daemon 0 got the new owner's change")
        assert gap_free(seen), seen
        with trio.fail_after(10):
            while True:
                try:
                    entry = await old.get(info.session_id, "k")
                    break
                except Unavailable:
                    await trio.sleep(0.1)
        assert entry.value == "taken over"
        nursery.cancel_scope.cancel()


async def test_a_watcher_through_a_paused_forwarding_daemon_keeps_getting_changes(
        cluster: Cluster) -> None:
    await cluster.start(2)
    async with open_client(cluster.socket(0)) as owner, \
            open_client(cluster.socket(1)) as watcher, trio.open_nursery() as nursery:
        info = await owner.create_session()
        await owner.set(info.session_id, "k", 0)
        watcher.set_token(info.session_id, info.token)
        seen: list[int] = []
        await nursery.start(collect, watcher, info.session_id, seen)
        cluster.pause(1)
        await trio.sleep(2.5)  # past the lease: the owner finds daemon 1 gone
        await owner.set(info.session_id, "k", 1)
        cluster.resume(1)
        written = await set_retrying(owner, info.session_id, "k", 2)
        await wait_until(lambda: seen and seen[-1] >= written.seq,
                         "the watcher on daemon 1 got every change")
        assert gap_free(seen), seen
        nursery.cancel_scope.cancel()


async def test_a_daemon_never_shares_an_epoch_with_a_live_one(cluster: Cluster) -> None:
    await cluster.start(1)
    # Redis lost the counter's last increments (no fsync before a crash, a
    # replica promoted): the next daemon must not take daemon 0's epoch.
    redis = coredis.Redis.from_url(cluster.url, decode_responses=True)
    async with redis:
        await redis.set(f"{cluster.prefix}:epoch", "0")
    await cluster.start(1)
    assert "is held by a live daemon; taking another" in cluster.daemons[1].log_text()
    async with open_client(cluster.socket(0)) as a, open_client(cluster.socket(1)) as b:
        info = await a.create_session()
        b.set_token(info.session_id, info.token)
        await b.set(info.session_id, "k", "through daemon 1")  # forwarded, not its own
        assert (await a.get(info.session_id, "k")).value == "through daemon 1"


async def test_http_on_any_daemon_reads_writes_and_streams_a_session_owned_by_another(
        cluster: Cluster) -> None:
    port = free_port()
    await cluster.start(1)
    await cluster.start(1, "--http", f"127.0.0.1:{port}")
    async with open_client(cluster.socket(0)) as owner, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        info = await owner.create_session()
        auth = {"Authorization": f"Bearer {info.token}"}
        put = await http.put(f"/sessions/{info.session_id}/data/k", json=1,
                             headers=auth)
        assert put.status_code == 200, put.text
        assert (await owner.get(info.session_id, "k")).value == 1
        # An event stream of daemon 1 sees a change written on daemon 0.
        async with open_events(SimpleNamespace(http_port=port), info.session_id,  # type: ignore[arg-type]
                               info.token) as events:
            assert (await events.next()).event == "snapshot"  # type: ignore[union-attr]
            await owner.set(info.session_id, "k", 2)
            change = await events.next()
            assert change is not None and change.event == "change"
            assert (change.data["seq"], change.data["value"]) == (2, 2)
        got = await http.get(f"/sessions/{info.session_id}/data/k", headers=auth)
        assert got.status_code == 200 and got.json()["value"] == 2
        metrics = await http.get("/metrics")
        forwarded = [line for line in metrics.text.splitlines()
                     if line.startswith("nexusd_cluster_forwarded_total ")]
        assert forwarded and float(forwarded[0].split()[1]) >= 3  # put, attach, get


async def test_a_workflow_runs_from_a_daemon_that_does_not_own_its_session(
        cluster: Cluster) -> None:
    async def step(ctx: RunContext, inputs: dict[str, object], data: dict[str, object]
                   ) -> dict[str, object]:
        return {f"step_{len(data) + 1}": inputs["data"]}

    await cluster.start(2)
    worker = Worker({"two-steps": steps(step, step)})
    async with open_client(cluster.socket(0)) as owner, \
            open_client(cluster.socket(1)) as runner, \
            open_client(cluster.socket(1), channel="worker") as wclient, \
            trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: worker.serve(wclient, task_status=task_status))
        info = await owner.create_session()  # owned by daemon 0
        runner.set_token(info.session_id, info.token)
        with trio.fail_after(20):
            result = await runner.run_and_wait(info.session_id, "two-steps", {"data": "x"})
        assert (result.status, result.result) == ("completed", {"step_1": "x", "step_2": "x"})
        # Every step is journaled in the session, on its owner.
        assert (await owner.get(info.session_id, "progress")).value == 100.0
        nursery.cancel_scope.cancel()
