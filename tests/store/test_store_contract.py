"""The Store contract, held by every store (see the `store` fixture)."""

from __future__ import annotations

import attrs
import pytest
from store_helpers import RETENTION, events, make_meta

from nexusd.store import MemoryStore, RedisStore, SessionMeta, SqliteStore, Store, StoreError


def _conforms(a: MemoryStore, b: SqliteStore, c: RedisStore) -> list[Store]:
    return [a, b, c]  # mypy checks that each satisfies the protocol


def same_meta(a: SessionMeta, b: SessionMeta) -> bool:
    return a == b and a.tokens == b.tokens  # tokens are eq=False on SessionMeta


async def test_create_then_load(store: Store) -> None:
    meta = make_meta("s1", expires_at=500.0, idle_expires_at=120.0,
                     tokens={"11" * 32: "read", "22" * 32: "admin"})
    await store.create(meta, b"initial state")

    loaded = await store.load("s1")

    assert loaded is not None
    assert same_meta(loaded.meta, meta)
    assert loaded.snapshot == b"initial state"
    assert loaded.snapshot_seq == 0
    assert list(loaded.events) == []
    assert list(loaded.history) == []


async def test_load_of_unknown_session_is_none(store: Store) -> None:
    assert await store.load("nobody") is None


async def test_create_twice_is_refused(store: Store) -> None:
    await store.create(make_meta("s1"), b"a")
    with pytest.raises(KeyError):
        await store.create(make_meta("s1"), b"b")
    loaded = await store.load("s1")
    assert loaded is not None and loaded.snapshot == b"a"


async def test_append_journals_events_in_order_and_updates_meta(store: Store) -> None:
    await store.create(make_meta("s1", idle_expires_at=100.0), b"s0")
    await store.append(make_meta("s1", idle_expires_at=150.0), events(1, 3))
    later = make_meta("s1", idle_expires_at=200.0, tokens={"33" * 32: "write"})
    await store.append(later, events(4, 4))

    loaded = await store.load("s1")

    assert loaded is not None
    assert list(loaded.events) == events(1, 4)
    assert same_meta(loaded.meta, later)
    assert await store.next_deadline() == 200.0


async def test_append_to_unknown_session_raises_keyerror(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.append(make_meta("ghost"), events(1, 1))


async def test_snapshot_turns_older_events_into_history(store: Store) -> None:
    await store.create(make_meta("s1"), b"s0")
    await store.append(make_meta("s1"), events(1, 4))

    await store.save_snapshot(make_meta("s1", expires_at=900.0), 3, b"state at 3")

    loaded = await store.load("s1")
    assert loaded is not None
    assert (loaded.snapshot, loaded.snapshot_seq) == (b"state at 3", 3)
    assert list(loaded.history) == events(1, 3)
    assert list(loaded.events) == events(4, 4)
    assert loaded.meta.expires_at == 900.0


async def test_history_keeps_only_the_retention_count(store: Store) -> None:
    await store.create(make_meta("s1"), b"s0")
    await store.append(make_meta("s1"), events(1, 10))
    await store.save_snapshot(make_meta("s1"), 10, b"s10")

    loaded = await store.load("s1")
    assert loaded is not None
    assert list(loaded.history) == events(10 - RETENTION + 1, 10)

    await store.append(make_meta("s1"), events(11, 13))
    await store.save_snapshot(make_meta("s1"), 12, b"s12")

    loaded = await store.load("s1")
    assert loaded is not None
    assert list(loaded.history) == events(12 - RETENTION + 1, 12)
    assert list(loaded.events) == events(13, 13)


async def test_a_snapshot_older_than_the_stored_one_is_refused(store: Store) -> None:
    # A stale writer (a second daemon on the same data) must never put an old
    # state over a newer one: the events between them may be gone, and the
    # journal would no longer replay onto it.
    await store.create(make_meta("s1"), b"s0")
    await store.append(make_meta("s1"), events(1, 6))
    await store.save_snapshot(make_meta("s1"), 4, b"state at 4")

    for stale in (0, 3):
        with pytest.raises(StoreError, match=f"at seq {stale}, older than .* seq 4"):
            await store.save_snapshot(make_meta("s1", expires_at=1.0), stale, b"stale")

    loaded = await store.load("s1")
    assert loaded is not None
    assert (loaded.snapshot, loaded.snapshot_seq) == (b"state at 4", 4)
    assert list(loaded.history) == events(1, 4)
    assert list(loaded.events) == events(5, 6)
    assert loaded.meta.expires_at == 1000.0  # the metadata was not touched either
    # The same state again is fine, and so is a later one: the events after
    # it stay and replay onto it.
    await store.save_snapshot(make_meta("s1"), 4, b"state at 4 again")
    await store.save_snapshot(make_meta("s1"), 5, b"state at 5")
    loaded = await store.load("s1")
    assert loaded is not None
    assert (loaded.snapshot, loaded.snapshot_seq) == (b"state at 5", 5)
    assert list(loaded.events) == events(6, 6)


async def test_save_snapshot_of_unknown_session_raises_keyerror(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.save_snapshot(make_meta("ghost"), 1, b"x")


async def test_delete_removes_everything(store: Store) -> None:
    await store.create(make_meta("s1", expires_at=10.0), b"s0")
    await store.create(make_meta("s2", expires_at=20.0), b"s0")
    await store.append(make_meta("s1", expires_at=10.0), events(1, 3))

    await store.delete("s1")
    await store.delete("s1")  # deleting what is gone is fine
    await store.delete("never-was")

    assert await store.load("s1") is None
    assert await store.count() == 1
    assert [m.session_id for m in await store.due(100.0, 10)] == ["s2"]
    assert [m.session_id for m in await store.list_sessions(None, 10)] == ["s2"]
    assert await store.next_deadline() == 20.0
    with pytest.raises(KeyError):
        await store.append(make_meta("s1"), events(4, 4))


async def test_due_is_earliest_deadline_first(store: Store) -> None:
    # (id, absolute expiry, idle expiry): the deadline is the earlier of the two.
    for sid, expires_at, idle in [("a", 50.0, None), ("b", 90.0, 30.0), ("c", 40.0, None),
                                  ("d", 200.0, 40.0), ("e", 300.0, None), ("f", 60.0, 80.0)]:
        await store.create(make_meta(sid, expires_at=expires_at, idle_expires_at=idle), b"")

    assert await store.due(29.9, 10) == []
    due = await store.due(60.0, 10)  # at or before `now`
    assert [(m.session_id, m.deadline) for m in due] == [
        ("b", 30.0), ("c", 40.0), ("d", 40.0), ("a", 50.0), ("f", 60.0)]
    assert [m.session_id for m in await store.due(60.0, 2)] == ["b", "c"]
    assert [m.session_id for m in await store.due(1e9, 100)] == ["b", "c", "d", "a", "f", "e"]


async def test_due_follows_deadlines_that_move(store: Store) -> None:
    await store.create(make_meta("a", expires_at=100.0, idle_expires_at=10.0), b"")
    await store.create(make_meta("b", expires_at=100.0, idle_expires_at=20.0), b"")
    # Activity on "a" pushes its idle deadline past "b"'s.
    await store.append(make_meta("a", expires_at=100.0, idle_expires_at=30.0), events(1, 1))
    await store.save_snapshot(make_meta("b", expires_at=100.0, idle_expires_at=25.0), 0, b"")

    assert [m.session_id for m in await store.due(35.0, 10)] == ["b", "a"]
    assert await store.due(15.0, 10) == []
    assert await store.next_deadline() == 25.0


async def test_a_lagging_idle_deadline_is_kept_and_not_due_before_its_lag(
        store: Store) -> None:
    # Metadata stored while an actor has the session: its idle deadline may
    # lag the session's reads by `idle_lag`, so it is not due before that.
    lagging = attrs.evolve(make_meta("a", expires_at=100.0, idle_expires_at=20.0), idle_lag=10.0)
    await store.create(lagging, b"")
    loaded = await store.load("a")
    assert loaded is not None and same_meta(loaded.meta, lagging)
    assert loaded.meta.idle_lag == 10.0
    assert await store.due(29.9, 10) == []
    assert await store.next_deadline() == 30.0
    # Hibernated: the exact deadline, no lag.
    exact = make_meta("a", expires_at=100.0, idle_expires_at=25.0)
    await store.save_snapshot(exact, 0, b"")
    loaded = await store.load("a")
    assert loaded is not None and loaded.meta.idle_lag == 0.0
    assert [m.session_id for m in await store.due(25.0, 10)] == ["a"]


async def test_next_deadline(store: Store) -> None:
    assert await store.next_deadline() is None
    await store.create(make_meta("a", expires_at=70.0), b"")
    await store.create(make_meta("b", expires_at=90.0, idle_expires_at=65.0), b"")
    assert await store.next_deadline() == 65.0
    await store.delete("b")
    assert await store.next_deadline() == 70.0
    await store.delete("a")
    assert await store.next_deadline() is None


async def test_list_sessions_pages_in_id_order(store: Store) -> None:
    ids = [f"sess-{i:03d}" for i in range(23)]
    for sid in reversed(ids):
        await store.create(make_meta(sid), b"")

    seen: list[str] = []
    after: str | None = None
    while page := await store.list_sessions(after, 10):
        assert len(page) <= 10
        seen.extend(m.session_id for m in page)
        after = page[-1].session_id

    assert seen == ids
    assert [m.session_id for m in await store.list_sessions("sess-020", 10)] == ids[21:]
    assert [m.session_id for m in await store.list_sessions("z", 2)] == []
    assert [m.session_id for m in await store.list_sessions("", 2)] == ids[:2]


async def test_count(store: Store) -> None:
    assert await store.count() == 0
    for i in range(7):
        await store.create(make_meta(f"s{i}"), b"")
    await store.delete("s3")
    assert await store.count() == 6


async def test_keys_only_where_a_key_ring_is_kept(store: Store,
                                                  request: pytest.FixtureRequest) -> None:
    # A store encrypting in a data directory has a ring to rotate there; the
    # others answer None: nothing to reload, nothing to re-wrap.
    await store.create(make_meta("s1"), b"s0")
    keys = store.keys
    if request.node.callspec.params["store"] == "sqlite-process":
        assert keys is not None
        assert await keys.rewrap() == 0  # every data key is under the current one
    else:
        assert keys is None


async def test_the_analytics_document_is_kept_whole_and_replaced(store: Store) -> None:
    assert await store.load_analytics() is None
    await store.save_analytics(b"first")
    await store.save_analytics(b"second")
    assert await store.load_analytics() == b"second"
