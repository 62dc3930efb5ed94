"""What `RedisStore` does beyond the store contract: fencing, ownership,
tombstones, sealing, retention by age, and `open_redis_store`'s checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import coredis
import pytest
import trio
from redis_server import RedisServer, free_port
from store_helpers import NOW, FakeWallClock, events, make_meta

from nexusd.store import (
    Fenced,
    KeyRing,
    LoadedSession,
    RedisStore,
    StoreError,
    open_redis_store,
)

Stores = Callable[..., RedisStore]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with coredis.Redis.from_url(redis_server.url, decode_responses=False) as c:
        yield c


@pytest.fixture
def daemon(client: coredis.Redis[bytes], keyring: KeyRing, redis_prefix: str,
           wall: FakeWallClock) -> Stores:
    """The store of the daemon of epoch n (all on one Redis, one prefix)."""
    def make(epoch: int, retention_seconds: float = 3600.0) -> RedisStore:
        return RedisStore(client, keyring=keyring, epoch=epoch, prefix=redis_prefix,
                          retention_events=5, retention_seconds=retention_seconds,
                          clock=wall)
    return make


def journal(loaded: LoadedSession | None) -> tuple[bytes | None, int, list[int], list[int]]:
    assert loaded is not None
    return (loaded.snapshot, loaded.snapshot_seq, [e.seq for e in loaded.history],
            [e.seq for e in loaded.events])


async def test_a_session_taken_over_fences_its_former_owner(
        daemon: Stores, client: coredis.Redis[bytes], redis_prefix: str) -> None:
    one, two = daemon(1), daemon(2)
    await one.create(make_meta("s1"), b"s0")
    await one.append(make_meta("s1"), events(1, 3))
    await one.save_snapshot(make_meta("s1"), 2, b"state at 2")

    # While daemon 1 is alive, daemon 2 cannot take its session.
    await client.set(f"{redis_prefix}:live:1", b"{}")
    assert await two.acquire("s1") == 1
    await one.append(make_meta("s1"), events(4, 4))  # still the owner
    # Daemon 1's live key expires (it paused, or died): daemon 2 takes over.
    await client.delete([f"{redis_prefix}:live:1"])
    assert await two.acquire("s1") == 2
    assert await two.acquire("s1") == 2  # owning it already

    before = journal(await two.load("s1"))
    with pytest.raises(Fenced, match=r"session s1 is owned by daemon epoch 2, not by this "
                                     r"daemon \(epoch 1\)"):
        await one.append(make_meta("s1", expires_at=1.0), events(5, 5))
    with pytest.raises(Fenced, match="epoch 2"):
        await one.save_snapshot(make_meta("s1", expires_at=1.0), 4, b"stale state")
    with pytest.raises(Fenced, match="epoch 2"):
        await one.delete("s1", reason="deleted")

    loaded = await two.load("s1")
    assert journal(loaded) == before == (b"state at 2", 2, [1, 2], [3, 4])
    assert loaded is not None and loaded.meta.expires_at == 1000.0
    assert await two.ended("s1") is None
    await client.set(f"{redis_prefix}:live:2", b"{}")
    assert await one.acquire("s1") == 2  # daemon 2 is alive: it keeps the session
    await two.append(make_meta("s1"), events(5, 5))  # the new owner writes
    assert journal(await one.load("s1"))[3] == [3, 4, 5]


async def test_acquire_of_an_unknown_session_is_none(daemon: Stores) -> None:
    assert await daemon(1).acquire("nobody") is None


async def test_release_hands_the_session_to_the_next_acquirer(
        daemon: Stores, client: coredis.Redis[bytes], redis_prefix: str) -> None:
    one, two = daemon(1), daemon(2)
    await one.create(make_meta("s1"), b"s0")
    await client.set(f"{redis_prefix}:live:1", b"{}")

    await two.release("s1")  # not its own: nothing happens
    assert await two.acquire("s1") == 1
    await one.release("s1")
    with pytest.raises(Fenced, match="owned by no daemon"):
        await one.append(make_meta("s1"), events(1, 1))
    assert await two.acquire("s1") == 2  # though daemon 1 is alive
    await two.append(make_meta("s1"), events(1, 1))


async def test_a_deletion_leaves_a_tombstone_saying_why(
        daemon: Stores, client: coredis.Redis[bytes], redis_prefix: str) -> None:
    store = daemon(1)
    await store.create(make_meta("s1"), b"s0")
    await store.create(make_meta("s2"), b"s0")
    await store.append(make_meta("s1"), events(1, 2))

    await store.delete("s1", reason="idle")
    await store.delete("s2")

    assert await store.ended("s1") == "idle"
    assert await store.ended("s2") is None
    assert await store.ended("never-was") is None
    ttl = await client.ttl(f"{redis_prefix}:ended:{{s1}}")
    assert 86000 < ttl <= 86400
    # Nothing else of the session is left in Redis.
    left = [k async for k in client.scan_iter(match=f"{redis_prefix}:*")]
    assert sorted(left) == [f"{redis_prefix}:ended:{{s1}}".encode()]
    await store.delete("s1", reason="ttl")  # gone already: the tombstone stays
    assert await store.ended("s1") == "idle"


async def _values(client: coredis.Redis[bytes], prefix: str) -> list[bytes]:
    """Every byte string Redis holds under `prefix`, whatever the key's type."""
    out: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*"):
        out.append(key)
        kind = await client.type(key)
        if kind == b"hash":
            for f, v in (await client.hgetall(key)).items():
                out += [f, v]
        elif kind == b"stream":
            for entry in await client.xrange(key):
                for f, v in entry.field_values.items():
                    out += [f, v]
        elif kind == b"zset":
            out += list(await client.zrange(key, 0, -1))
        elif kind == b"string":
            out.append(await client.get(key) or b"")
        else:
            raise AssertionError(f"unexpected key type {kind!r}")
    return out


async def test_redis_never_holds_plaintext_state(
        daemon: Stores, client: coredis.Redis[bytes], redis_prefix: str) -> None:
    store = daemon(1)
    marker = b"MARKER-7f3a"
    await store.create(make_meta("s1"), b"initial " + marker)
    await store.append(make_meta("s1"), events(1, 4, body=lambda seq: b"%s %d" % (marker, seq)))
    await store.save_snapshot(make_meta("s1"), 2, b"snapshot " + marker)

    values = await _values(client, redis_prefix)

    assert len(values) > 10
    assert not [v for v in values if marker in v]
    loaded = await store.load("s1")
    assert loaded is not None and loaded.snapshot == b"snapshot " + marker
    assert [e.payload for e in loaded.events] == [marker + b" 3", marker + b" 4"]


async def test_history_older_than_the_retention_window_goes(daemon: Stores,
                                                            wall: FakeWallClock) -> None:
    store = daemon(1, retention_seconds=100.0)  # and 5 events
    await store.create(make_meta("s1"), b"s0")
    await store.append(make_meta("s1"), events(1, 4, ts=NOW - 150.0))  # ts NOW-149 .. -146
    await store.append(make_meta("s1"), events(5, 6, ts=NOW - 100.0))  # ts NOW-95, -94

    await store.save_snapshot(make_meta("s1"), 5, b"s5")
    assert journal(await store.load("s1")) == (b"s5", 5, [5], [6])

    # Time passes: the next write trims the history by age, never what
    # follows the snapshot, however old.
    wall.now += 10.0
    await store.append(make_meta("s1"), events(7, 7, ts=NOW - 100.0))
    assert journal(await store.load("s1")) == (b"s5", 5, [], [6, 7])


async def test_an_event_not_after_the_last_seq_is_refused_and_nothing_changes(
        daemon: Stores) -> None:
    store = daemon(1)
    await store.create(make_meta("s1"), b"s0")
    await store.append(make_meta("s1"), events(1, 3))

    with pytest.raises(StoreError, match="must follow seq 3"):
        await store.append(make_meta("s1", expires_at=1.0), events(4, 4) + events(3, 3))

    loaded = await store.load("s1")
    assert journal(loaded)[3] == [1, 2, 3]
    assert loaded is not None and loaded.meta.expires_at == 1000.0


# -- open_redis_store -------------------------------------------------------

@pytest.mark.parametrize(("url", "what"), [
    ("http://127.0.0.1:6379/0", "must start with redis://"),
    ("redis://127.0.0.1:port/0", "port is not a number"),
    ("redis://:s3cret@127.0.0.1:99999/0", "port is not a number"),
    ("redis:///0", "names no host"),
    ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
])
async def test_a_bad_url_is_one_clear_line_without_the_password(
        keyring: KeyRing, url: str, what: str) -> None:
    with pytest.raises(StoreError) as caught:
        await open_redis_store(url, durability="memory", keyring=keyring)
    message = str(caught.value)
    assert message.startswith("bad Redis URL ") and what in message
    assert "\n" not in message and "s3cret" not in message


async def test_an_unreachable_redis_is_one_clear_line(keyring: KeyRing) -> None:
    port = free_port()  # nothing listens there
    start = trio.current_time()
    with pytest.raises(StoreError, match=f"^cannot reach Redis at 127.0.0.1:{port}: ") as caught:
        await open_redis_store(f"redis://:s3cret@127.0.0.1:{port}/0", durability="memory",
                               keyring=keyring)
    assert trio.current_time() - start < 10
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)


@pytest.fixture(scope="module")
def redis_without_aof(redis_binary: str) -> Iterator[RedisServer]:
    with RedisServer(("--appendonly", "no", "--save", "")) as server:
        yield server


async def test_a_redis_without_aof_is_refused_unless_durability_memory(
        redis_without_aof: RedisServer, keyring: KeyRing, redis_prefix: str) -> None:
    with pytest.raises(StoreError, match="append-only file off") as caught:
        await open_redis_store(redis_without_aof.url, durability="process", keyring=keyring,
                               prefix=redis_prefix)
    assert "appendonly yes" in str(caught.value) and "--durability memory" in str(caught.value)
    async with await open_redis_store(redis_without_aof.url, durability="memory",
                                      keyring=keyring, prefix=redis_prefix) as store:
        await store.create(make_meta("s1"), b"s0")
        assert await store.count() == 1


async def test_power_needs_appendfsync_always(redis_server: RedisServer, keyring: KeyRing,
                                              redis_prefix: str) -> None:
    with pytest.raises(StoreError, match=r"'appendfsync everysec'.*appendfsync always"):
        await open_redis_store(redis_server.url, durability="power", keyring=keyring,
                               prefix=redis_prefix)


async def test_each_open_takes_a_new_epoch(redis_server: RedisServer, keyring: KeyRing,
                                           redis_prefix: str) -> None:
    async with await open_redis_store(redis_server.url, durability="process", keyring=keyring,
                                      prefix=redis_prefix) as first:
        assert first.epoch == 1 and first.prefix == redis_prefix
        await first.create(make_meta("s1"), b"s0")
        async with await open_redis_store(redis_server.url, durability="process",
                                          keyring=keyring, prefix=redis_prefix) as second:
            assert second.epoch == 2
            loaded = await second.load("s1")
            assert loaded is not None and loaded.snapshot == b"s0"
            with pytest.raises(Fenced):
                await second.append(make_meta("s1"), events(1, 1))


async def test_acknowledged_appends_survive_kill_9_of_redis(keyring: KeyRing,
                                                           redis_binary: str) -> None:
    with RedisServer(("--appendonly", "yes", "--appendfsync", "always", "--save", "")) as srv:
        store = await open_redis_store(srv.url, durability="power", keyring=keyring,
                                       retention_events=5, clock=FakeWallClock())
        try:
            await store.create(make_meta("s1"), b"s0")
            for seq in range(1, 51):
                await store.append(make_meta("s1"), events(seq, seq))
            await store.save_snapshot(make_meta("s1"), 40, b"state at 40")
            srv.kill()
        finally:
            await store.aclose()
        srv.restart()
        async with await open_redis_store(srv.url, durability="power",
                                          keyring=keyring) as again:
            assert again.epoch == 2
            loaded = await again.load("s1")
            assert journal(loaded) == (b"state at 40", 40, list(range(36, 41)),
                                       list(range(41, 51)))
            assert loaded is not None and list(loaded.events) == events(41, 50)
