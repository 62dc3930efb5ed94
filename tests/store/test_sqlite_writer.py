"""The store's writers under cancellation: whatever moment a caller is
cancelled at, every write whose call returned is committed, the writer keeps
committing new writes, and `stop()` returns.

A caller cancelled by a timeout (snapshot, delete, expiry) or by a client
that disconnects must never leave the writer without a task to commit for it.
These tests cancel callers at every step of a run (`TaskWriter`, which
commits in its callers' tasks) and in seeded storms (both writers).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.lowlevel
import trio.testing

from nexusd.store import _writer
from nexusd.store._writer import TaskWriter, ThreadWriter, Writer

CLIENTS = 4
AFTER = 100  # the write made once every client has finished
T = TypeVar("T")


def _run(main: Callable[[], Awaitable[T]], *, autojump: bool = True) -> T:
    """`trio.run(main)` in a thread of its own, so that a run that hangs
    (a `stop()` that never returns cannot be cancelled) fails the test.

    With `autojump`, time is virtual and jumps whenever every task waits: a
    wedged writer then meets its callers' deadline at once.
    """
    outcome: list[Any] = []

    def run() -> None:
        clock = trio.testing.MockClock(autojump_threshold=0) if autojump else None
        try:
            outcome.append(trio.run(main, clock=clock))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        pytest.fail("the run hangs: the writer has nobody to commit (or to stop)")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]  # type: ignore[no-any-return]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
    return conn


def _insert(n: int) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
    return run


def _committed(path: Path) -> set[int]:
    with closing(sqlite3.connect(path)) as conn:
        return {n for (n,) in conn.execute("SELECT n FROM t")}


class CancelAtStep(trio.abc.Instrument):
    """Cancels `scope` just before the run's `step`-th task step, whichever
    task that step belongs to; counts the steps."""

    def __init__(self, step: int | None = None, scope: trio.CancelScope | None = None) -> None:
        self.steps = 0
        self._step, self._scope = step, scope

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.steps == self._step and self._scope is not None:
            self._scope.cancel()
        self.steps += 1


async def _clients(writer: Writer, scopes: list[trio.CancelScope], *,
                   stop_concurrently: bool = False) -> set[int]:
    """Runs one caller per scope, each writing its own row, and returns
    which calls returned; then checks that the writer still commits and
    stops."""
    returned: set[int] = set()

    async def client(i: int) -> None:
        with scopes[i]:
            await writer.submit("write", _insert(i))
            returned.add(i)

    # A wedged writer blocks every task: the autojump clock then reaches
    # this deadline at once.
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for i in range(len(scopes)):
                nursery.start_soon(client, i)
            if stop_concurrently:
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(writer.stop)
        if not stop_concurrently:
            await writer.submit("write", _insert(AFTER))
            await writer.stop()
    return returned


def _run_task_writer(path: Path, inject: tuple[int, int] | None, *,
                     stop_concurrently: bool = False) -> tuple[set[int], set[int], int]:
    """One run of `CLIENTS` callers of a `TaskWriter`, with client `j`
    cancelled before step `k` of the run if `inject` is `(k, j)`.
    Returns (calls that returned, rows committed, steps run)."""
    path.unlink(missing_ok=True)
    scopes = [trio.CancelScope() for _ in range(CLIENTS)]
    instrument = CancelAtStep() if inject is None else CancelAtStep(inject[0],
                                                                     scopes[inject[1]])

    async def main() -> set[int]:
        writer = TaskWriter(_connect(path), None)
        # A first commit: the clients' writes then come within the grouping
        # window, so that each leader yields once before it commits.
        await writer.submit("write", _insert(-1))
        trio.lowlevel.add_instrument(instrument)
        return await _clients(writer, scopes, stop_concurrently=stop_concurrently)

    returned = _run(main)
    return returned, _committed(path) - {-1}, instrument.steps


def _check(returned: set[int], committed: set[int], *, after: bool = True) -> None:
    assert returned <= committed  # every call that returned committed
    assert committed <= set(range(CLIENTS)) | {AFTER}  # and nothing else did
    if after:
        assert AFTER in committed  # the writer carries on


@pytest.mark.parametrize("max_batch", [1, 2, 1024])
def test_task_writer_survives_a_cancel_at_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_batch: int) -> None:
    # With batches of one, each leader hands the lead over once per client:
    # a cancel that comes between a waiter being woken to lead and its
    # running must not leave the lead with nobody.
    monkeypatch.setattr(_writer, "_MAX_BATCH", max_batch)
    path = tmp_path / "w.db"
    returned, committed, steps = _run_task_writer(path, None)
    assert returned == set(range(CLIENTS)) and committed == returned | {AFTER}
    for step in range(steps):
        for j in range(CLIENTS):
            returned, committed, _ = _run_task_writer(path, (step, j))
            _check(returned, committed)
            assert returned >= set(range(CLIENTS)) - {j}, (step, j)


def test_task_writer_stops_after_a_cancel_at_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGTERM: `stop()` while callers queue and one of them is cancelled.
    monkeypatch.setattr(_writer, "_MAX_BATCH", 1)
    path = tmp_path / "w.db"
    *_, steps = _run_task_writer(path, None, stop_concurrently=True)
    for step in range(steps):
        for j in range(CLIENTS):
            returned, committed, _ = _run_task_writer(path, (step, j), stop_concurrently=True)
            _check(returned, committed, after=False)
            assert returned >= set(range(CLIENTS)) - {j}, (step, j)


def test_a_waiter_handed_the_lead_as_it_is_cancelled_passes_it_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The wedge, step by step: the leader commits its batch of one and hands
    # the lead to the next caller, whose cancel (a timeout) came just before.
    monkeypatch.setattr(_writer, "_MAX_BATCH", 1)
    path = tmp_path / "w.db"
    scopes = [trio.CancelScope() for _ in range(3)]

    async def main() -> set[int]:
        writer = TaskWriter(_connect(path), None)
        await writer.submit("write", _insert(-1))

        def first(conn: sqlite3.Connection) -> None:
            scopes[1].cancel()  # while the leader commits: no task runs meanwhile
            _insert(0)(conn)

        returned: set[int] = set()

        async def client(i: int, fn: Callable[[sqlite3.Connection], None]) -> None:
            with scopes[i]:
                await writer.submit("write", fn)
                returned.add(i)

        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                # The lead held (as by a leader busy elsewhere) while the
                # callers queue one at a time, in this order.
                writer._leading, writer._idle = True, trio.Event()
                for i, fn in ((0, first), (1, _insert(1)), (2, _insert(2))):
                    nursery.start_soon(client, i, fn)
                    await trio.testing.wait_all_tasks_blocked()
                writer._hand_over()
            await writer.submit("write", _insert(AFTER))
            await writer.stop()
        return returned

    returned = _run(main)
    assert returned == {0, 2}
    assert _committed(path) == {-1, 0, 2, AFTER}


async def _storm(writer: Writer, rng: random.Random, clients: int) -> set[int]:
    """`clients` callers, each cancelled after a random number of
    checkpoints (or never), with random other tasks in between."""
    scopes = [trio.CancelScope() for _ in range(clients)]

    async def canceller(i: int) -> None:
        for _ in range(rng.randrange(12)):
            await trio.lowlevel.checkpoint()
        scopes[i].cancel()

    async with trio.open_nursery() as nursery:
        for i in rng.sample(range(clients), clients // 2):
            nursery.start_soon(canceller, i)
        return await _clients(writer, scopes)


@pytest.mark.parametrize("seed", range(40))
def test_task_writer_cancellation_storm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        seed: int) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(_writer, "_MAX_BATCH", rng.choice([1, 2, 3, 8]))
    path = tmp_path / "w.db"
    clients = 24

    async def main() -> set[int]:
        writer = TaskWriter(_connect(path), None)
        await writer.submit("write", _insert(-1))
        return await _storm(writer, rng, clients)

    returned = _run(main)
    committed = _committed(path) - {-1}
    assert returned <= committed <= set(range(clients)) | {AFTER}
    assert AFTER in committed


@pytest.mark.parametrize("seed", range(10))
def test_thread_writer_cancellation_storm(tmp_path: Path, seed: int) -> None:
    # It commits in a thread of its own that no caller leads; a cancelled
    # caller only withdraws its request (or leaves it to commit).
    rng = random.Random(seed)
    path = tmp_path / "w.db"
    clients = 24

    async def main() -> set[int]:
        writer = ThreadWriter(_connect(path))
        with trio.fail_after(60):  # real time: the writer is a thread
            return await _storm(writer, rng, clients)

    returned = _run(main, autojump=False)
    committed = _committed(path)
    assert returned <= committed <= set(range(clients)) | {AFTER}
    assert AFTER in committed
