"""The Redis store: sessions shared by several daemons on one Redis.

Layout (prefix P, "nexus" by default; see the scripts in `_redis_scripts`):

- ``P:s:{sid}``: a hash, the session's metadata (the fields of `SessionMeta`,
  tokens as msgpack), its wrapped data key (`key_id`, `wrapped`), its sealed
  `snapshot` and `snapshot_seq`, the last appended `seq`, and `owner`: the
  epoch of the daemon whose actor has the session ("" for none).
- ``P:s:{sid}:log``: a stream, one entry per event, id ``<seq>-0``, fields
  ``ts`` and ``p`` (the sealed payload): the events after the snapshot and
  the history retained before it.
- ``P:deadlines`` (sid by deadline) and ``P:ids`` (sid, by id): sorted sets,
  the reaper's index and the listing; ``P:ended:{sid}``: why a session
  ended, for a day; ``P:analytics:<node>``: each daemon's analytics document;
  ``P:epoch``: the counter that gives each daemon its epoch.

Redis never holds plaintext state: snapshots and event payloads are sealed
with the session's data key, wrapped by the daemons' master key ring, before
they are sent. The ring stays with the daemons; every daemon on one Redis
must read the same ring (the same key file or $NEXUSD_MASTER_KEYS).

Each mutation is one Lua script: one round trip, applied whole, and fenced:
`append`, `save_snapshot` and `delete` write only while the session's
`owner` is this store's epoch, checked in the same script, so a daemon whose
session was taken over (`acquire` by another daemon) can never write to it
again. What an acknowledged write survives is Redis's persistence
(`open_redis_store` checks it against the daemon's durability).
"""

from __future__ import annotations

import collections
import contextlib
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

import coredis
import coredis.exceptions
import msgpack
import trio

from . import _redis_scripts as scripts
from ._crypto import KeyRing, SessionCipher, new_data_key
from ._interface import (
    Fenced,
    KeyManagement,
    LoadedSession,
    SessionMeta,
    StoredEvent,
    StoreError,
    check_snapshot_seq,
)

__all__ = ["REDIS_DURABILITIES", "RedisStore", "open_redis_store"]

_CIPHER_CACHE: Final = 4096  # data keys kept unwrapped, as the SQLite store does
#: How long a tombstone (`ended`) outlives its session, in seconds.
TOMBSTONE_SECONDS: Final = 86400


def _num(x: float) -> bytes:
    return repr(float(x)).encode()


def _opt(x: float | None) -> bytes:
    return b"" if x is None else _num(x)


def _meta_values(meta: SessionMeta) -> list[bytes]:
    """The values of `scripts.META_FIELDS` for `meta`."""
    return [_num(meta.created_at), _num(meta.ttl), _num(meta.expires_at),
            _opt(meta.idle_timeout), _opt(meta.idle_expires_at), _num(meta.idle_lag),
            msgpack.packb(meta.tokens)]


def _meta(session_id: str, values: Sequence[bytes]) -> SessionMeta:
    created_at, ttl, expires_at, idle_timeout, idle_expires_at, idle_lag, tokens = values
    return SessionMeta(session_id=session_id, created_at=float(created_at), ttl=float(ttl),
                       expires_at=float(expires_at),
                       idle_timeout=float(idle_timeout) if idle_timeout else None,
                       idle_expires_at=float(idle_expires_at) if idle_expires_at else None,
                       tokens=msgpack.unpackb(tokens), idle_lag=float(idle_lag))


class RedisStore:
    """The store on Redis. Make one with `open_redis_store` (which checks the
    server and takes an epoch), or directly on a client already connected.

    Args:
        client: a coredis client made with ``decode_responses=False``.
        keyring: the master keys that wrap the sessions' data keys.
        epoch: this daemon's fencing token (from ``INCR P:epoch``).
        prefix: the prefix of every key (several stores may share a Redis).
        retention_events, retention_seconds: the history (events at or
            before the snapshot) each session keeps for resume.
        clock: wall-clock seconds, for the age window of retention.
    """

    def __init__(self, client: coredis.Redis[bytes], *, keyring: KeyRing, epoch: int,
                 prefix: str = "nexus", retention_events: int = 1000,
                 retention_seconds: float = 86400.0,
                 clock: Callable[[], float] = time.time, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
        """`replicas`: how many of Redis's replicas must hold a write before
        it counts as done (`WAIT`, within `replica_timeout` seconds); 0 for
        the primary alone."""
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self.client = client
        self.keyring = keyring
        self.epoch = epoch
        self.prefix = prefix
        self.retention_events = retention_events
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._epoch = str(epoch).encode()
        self._deadlines = f"{prefix}:deadlines"
        self._ids = f"{prefix}:ids"
        self._ciphers: collections.OrderedDict[str, SessionCipher] = collections.OrderedDict()
        self._scripts = {name: client.register_script(getattr(scripts, name)) for name in (
            "CREATE", "APPEND", "SAVE_SNAPSHOT", "DELETE", "ACQUIRE", "RELEASE", "LOAD",
            "DUE", "LIST", "NEXT_DEADLINE")}
        self._closed = False
        self.unreplicated = 0  # writes refused: too few replicas confirmed them
        #: Which daemon this is across its restarts (its data directory's
        #: node id): the key of its analytics document.
        self.node = "0"
        # What `aclose` exits: the client's connection pool, if the store entered it.
        self._exit = contextlib.AsyncExitStack()

    def use_epoch(self, epoch: int) -> None:
        """Writes as daemon `epoch` from now on (the fencing token)."""
        self.epoch = epoch
        self._epoch = str(epoch).encode()

    @property
    def keys(self) -> KeyManagement | None:
        """None: the key ring is shared by every daemon on the Redis, so it
        is rotated by restarting each daemon with the new ring (old keys kept
        in it until no session needs them), not by one store alone."""
        return None

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- plumbing ----

    def _hash(self, session_id: str) -> str:
        return f"{self.prefix}:s:{{{session_id}}}"

    def _session_keys(self, session_id: str) -> list[str]:
        h = self._hash(session_id)
        return [h, f"{h}:log", self._deadlines, self._ids,
                f"{self.prefix}:ended:{{{session_id}}}"]

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        try:
            return await self._scripts[name](keys=keys, args=args)
        except coredis.exceptions.RedisError as exc:
            raise StoreError(f"Redis failed: {exc}") from exc

    async def _run_replicated(self, name: str, keys: Sequence[str], args: Sequence[Any]
                              ) -> Any:
        """`_run` for a write that is acknowledged: with `replicas`, the script
        and a `WAIT` go on one connection (WAIT waits for what its own
        connection wrote).

        Raises:
            StoreError: fewer replicas than `replicas` confirmed the write in
                time (it is applied on the primary, and may be lost if the
                primary fails: the writer is not told it is done).
        """
        if not self.replicas:
            return await self._run(name, keys, args)
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                result: Any = self._scripts[name](keys=keys, args=args, client=pipe)
                confirmed = pipe.wait(self.replicas, max(int(self.replica_timeout * 1000), 1))
            status, replicas = await result, await confirmed
        except coredis.exceptions.RedisError as exc:
            raise StoreError(f"Redis failed: {exc}") from exc
        if status[0] == b"ok" and replicas < self.replicas:
            self.unreplicated += 1
            raise StoreError(f"{replicas} of the {self.replicas} replicas required confirmed "
                             f"a write within {self.replica_timeout:g} s")
        return status

    async def _call(self, command: Any) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        try:
            return await command
        except coredis.exceptions.RedisError as exc:
            raise StoreError(f"Redis failed: {exc}") from exc

    def _refusal(self, session_id: str, status: list[Any], seq: int = -1) -> Exception:
        """The error a script's refusal `status` means."""
        code = status[0].decode()
        if code == "missing":
            return KeyError(f"session {session_id} is not in the store")
        if code == "fenced":
            owner = status[1].decode()
            whose = f"daemon epoch {owner}" if owner else "no daemon"
            return Fenced(f"session {session_id} is owned by {whose}, not by this daemon "
                          f"(epoch {self.epoch}): it was taken over; nothing written")
        if code == "seq":
            return StoreError(f"session {session_id}: events must follow seq "
                              f"{status[1].decode()}, the last journaled")
        if code == "stale":
            try:
                check_snapshot_seq(session_id, seq, int(status[1]))
            except StoreError as exc:
                return exc
        return StoreError(f"session {session_id}: unexpected answer from Redis {status!r}")

    async def _cipher(self, session_id: str) -> SessionCipher:
        """The session's cipher (the recent ones are kept unwrapped).

        Raises:
            KeyError: the session is not in the store.
        """
        cipher = self._ciphers.get(session_id)
        if cipher is not None:
            self._ciphers.move_to_end(session_id)
            return cipher
        key_id, wrapped = await self._call(
            self.client.hmget(self._hash(session_id), ["key_id", "wrapped"]))
        if key_id is None or wrapped is None:
            raise KeyError(f"session {session_id} is not in the store")
        cipher = self.keyring.cipher(session_id, key_id.decode(), wrapped)
        self._remember(cipher)
        return cipher

    def _remember(self, cipher: SessionCipher) -> None:
        self._ciphers[cipher.session_id] = cipher
        self._ciphers.move_to_end(cipher.session_id)
        if len(self._ciphers) > _CIPHER_CACHE:
            self._ciphers.popitem(last=False)

    def _cutoff(self) -> bytes:
        return _num(self._clock() - self.retention_seconds)

    # ---- writes ----

    async def create(self, meta: SessionMeta, snapshot: bytes) -> None:
        """Records a new session at seq 0, owned by this daemon, under a fresh
        data key.

        Raises:
            KeyError: a session with this id exists.
        """
        sid = meta.session_id
        data_key = new_data_key()
        key_id, wrapped = self.keyring.wrap(sid, data_key)
        cipher = SessionCipher(sid, data_key)
        status = await self._run_replicated("CREATE", self._session_keys(sid), [
            sid, self._epoch, _num(meta.deadline), key_id, wrapped,
            cipher.seal("snapshot", 0, snapshot), *_meta_values(meta)])
        if status[0] == b"exists":
            raise KeyError(f"session {sid} exists")
        self._remember(cipher)

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        """Journals `events` and stores `meta`, in one script; returns once
        Redis has applied it.

        Raises:
            KeyError: the session is not in the store.
            Fenced: another daemon (or none) owns the session.
            StoreError: an event's seq is not after the last journaled one, or
                Redis failed.
        """
        sid = meta.session_id
        cipher = await self._cipher(sid)
        args: list[Any] = [sid, self._epoch, _num(meta.deadline), self._cutoff(),
                           *_meta_values(meta)]
        for e in events:
            args += [e.seq, _num(e.ts), cipher.seal("event", e.seq, e.payload)]
        run = self._run_replicated if events else self._run
        status = await run("APPEND", self._session_keys(sid)[:3], args)
        if status[0] != b"ok":
            raise self._refusal(sid, status)

    async def save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes) -> None:
        """Stores the state as of `seq`; events up to `seq` become history, kept
        within the last `retention_events` and `retention_seconds`.

        Raises:
            KeyError: the session is not in the store.
            Fenced: another daemon (or none) owns the session.
            StoreError: the store holds a later snapshot (nothing is changed),
                or Redis failed.
        """
        sid = meta.session_id
        sealed = (await self._cipher(sid)).seal("snapshot", seq, snapshot)
        status = await self._run("SAVE_SNAPSHOT", self._session_keys(sid)[:3], [
            sid, self._epoch, _num(meta.deadline), self._cutoff(), self.retention_events,
            seq, sealed, *_meta_values(meta)])
        if status[0] != b"ok":
            raise self._refusal(sid, status, seq)

    async def delete(self, session_id: str, *, reason: str | None = None) -> None:
        """Removes the session, its journal and its wrapped data key (its data
        becomes unrecoverable), and, given a `reason`, leaves a tombstone
        saying why for a day (see `ended`). Deleting what is gone is fine.

        Raises:
            Fenced: another daemon (or none) owns the session; it stays.
        """
        status = await self._run("DELETE", self._session_keys(session_id), [
            session_id, self._epoch, reason or "", TOMBSTONE_SECONDS])
        if status[0] != b"ok":
            raise self._refusal(session_id, status)
        self._ciphers.pop(session_id, None)

    async def acquire(self, session_id: str) -> int | None:
        """Makes this daemon the session's owner if it has none, is this
        daemon already, or is a daemon whose live key (``P:live:<epoch>``) is
        gone. Returns the owner's epoch after the call (this store's `epoch`
        if it owns the session now), or None if there is no such session."""
        owner: int = await self._run("ACQUIRE", [self._hash(session_id)],
                                     [self._epoch, f"{self.prefix}:live:"])
        return None if owner < 0 else owner

    async def release(self, session_id: str) -> None:
        """Gives up the session if this daemon owns it (the next `acquire`
        by any daemon takes it at once); otherwise does nothing."""
        await self._run("RELEASE", [self._hash(session_id)], [self._epoch])

    # ---- reads ----

    async def load(self, session_id: str) -> LoadedSession | None:
        """The session to activate, or None if there is no such session.

        Raises:
            IntegrityError: a stored ciphertext failed authentication.
        """
        found = await self._run("LOAD", self._session_keys(session_id)[:2], [])
        if found is None:
            return None
        flat, entries = found
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        meta = _meta(session_id, [fields[f.encode()] for f in scripts.META_FIELDS])
        cipher = self.keyring.cipher(session_id, fields[b"key_id"].decode(), fields[b"wrapped"])
        self._remember(cipher)
        snapshot_seq = int(fields[b"snapshot_seq"])
        snapshot = cipher.open("snapshot", snapshot_seq, fields[b"snapshot"])
        history: list[StoredEvent] = []
        events: list[StoredEvent] = []
        for entry_id, (_, ts, _, payload) in entries:
            seq = int(entry_id.split(b"-")[0])
            event = StoredEvent(seq, float(ts), cipher.open("event", seq, payload))
            (history if seq <= snapshot_seq else events).append(event)
        return LoadedSession(meta, snapshot, snapshot_seq, events, history)

    async def ended(self, session_id: str) -> str | None:
        """Why the session recently ended ("ttl", "idle", "deleted", ...), if it
        was deleted with a reason in the last day; else None."""
        reason = await self._call(self.client.get(f"{self.prefix}:ended:{{{session_id}}}"))
        return None if reason is None else reason.decode()

    def _metas(self, flat: Sequence[Any]) -> list[SessionMeta]:
        return [_meta(sid.decode(), values) for sid, values in zip(flat[::2], flat[1::2],
                                                                    strict=True)]

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        """Up to `limit` sessions whose deadline is at or before `now`, earliest
        first (ties by id), read from the ``P:deadlines`` index."""
        flat = await self._run("DUE", [self._deadlines],
                               [f"{self.prefix}:s:{{", _num(now), limit])
        return self._metas(flat)

    async def next_deadline(self) -> float | None:
        """The earliest deadline of any stored session, or None."""
        score = await self._run("NEXT_DEADLINE", [self._deadlines], [])
        return None if score is None else float(score)

    async def list_sessions(self, after: str | None, limit: int) -> list[SessionMeta]:
        """Sessions in id order (bytewise, as SQLite's), starting after the id `after`."""
        start = "-" if after is None else f"({after}"
        flat = await self._run("LIST", [self._ids], [f"{self.prefix}:s:{{", start, limit])
        return self._metas(flat)

    async def count(self) -> int:
        """How many sessions the store holds."""
        n: int = await self._call(self.client.zcard(self._ids))
        return n

    async def save_analytics(self, doc: bytes) -> None:
        """Stores this daemon's analytics document (``P:analytics:<node>``, one
        per daemon: each counts what it served), replacing the last."""
        await self._call(self.client.set(self._analytics_key, doc))

    async def load_analytics(self) -> bytes | None:
        """The analytics document this daemon last stored, or None."""
        doc: bytes | None = await self._call(self.client.get(self._analytics_key))
        return doc

    @property
    def _analytics_key(self) -> str:
        return f"{self.prefix}:analytics:{self.node}"

    async def aclose(self) -> None:
        """Closes the client if the store opened it (`open_redis_store`).
        Idempotent; exit it in the task that opened it, as a context manager."""
        if self._closed:
            return
        self._closed = True
        # Not in a cancel scope of its own: the client's task group must be
        # exited at the depth where it was entered.
        await self._exit.aclose()


# -- opening ----------------------------------------------------------------

#: What each daemon durability asks of Redis's persistence.
REDIS_DURABILITIES: Final = ("memory", "process", "power")
_MIN_VERSION: Final = (7, 0)
_CONNECT_TIMEOUT: Final = 5.0


def _parse_url(url: str) -> tuple[str, str]:
    """Checks a Redis URL; returns it as shown to people (password hidden)
    and its "host:port".

    Raises:
        StoreError: the URL is not a redis:// or rediss:// URL of a host,
            port and database number.
    """
    parts = urllib.parse.urlsplit(url)
    shown = url
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        shown = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))

    def bad(what: str) -> StoreError:
        return StoreError(f"bad Redis URL {shown}: {what}")

    if parts.scheme not in ("redis", "rediss"):
        raise bad("it must start with redis:// (or rediss:// for TLS), "
                  "as in redis://HOST:PORT/DB")
    try:
        port = parts.port or 6379
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise bad("it names no host")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise bad(f"the database {db!r} is not a number")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return shown, f"{host}:{port}"


async def open_redis_store(url: str, *, durability: str, keyring: KeyRing,
                           retention_events: int = 1000, retention_seconds: float = 86400.0,
                           clock: Callable[[], float] = time.time,
                           prefix: str = "nexus") -> RedisStore:
    """Connects to the Redis at `url`, checks that it keeps acknowledged
    writes as `durability` requires, takes this daemon's epoch, and returns
    the store (close it with `aclose`, in the same task, as a context manager).

    - "memory": any Redis (a restart of Redis may lose every write);
    - "process": the append-only file on (``appendonly yes``): a write is in
      it (the OS has it) before Redis answers, so it survives Redis's
      ``kill -9``, not a power cut past the last fsync (``everysec``: 1 s);
    - "power": also ``appendfsync always``: fsynced before Redis answers.

    Raises:
        ValueError: `durability` is not one of `REDIS_DURABILITIES`.
        StoreError: the URL is malformed, Redis cannot be reached or is older
            than 7, or its persistence is weaker than `durability` needs;
            one line, with the password hidden.
    """
    if durability not in REDIS_DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(REDIS_DURABILITIES)}, "
                         f"not {durability!r}")
    shown, where = _parse_url(url)
    try:
        client = coredis.Redis.from_url(url, decode_responses=False, verify_version=False,
                                        connect_timeout=_CONNECT_TIMEOUT)
    except (ValueError, TypeError) as exc:  # e.g. an unknown query option
        raise StoreError(f"bad Redis URL {shown}: {exc}") from None
    exit_stack = contextlib.AsyncExitStack()
    try:
        await exit_stack.enter_async_context(client)
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                await client.ping()
                server = await client.info("server")
                persistence = await client.info("persistence")
        except trio.TooSlowError:
            raise StoreError(f"cannot reach Redis at {where}: no answer within "
                             f"{_CONNECT_TIMEOUT:g} s") from None
        except coredis.exceptions.RedisError as exc:
            # coredis says "Unable to establish a connection to HOST:PORT" and
            # keeps why (refused, unknown host, ...) as the cause.
            reason = exc.__cause__ or exc
            raise StoreError(f"cannot reach Redis at {where}: {reason}") from None
        version = str(server.get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < _MIN_VERSION:
            raise StoreError(f"Redis at {where} is version {version}; nexusd needs Redis 7 "
                             "or later (streams, ZRANGE BYSCORE/BYLEX in scripts)")
        await _check_persistence(client, where, durability, persistence)
        try:
            epoch = int(await client.incr(f"{prefix}:epoch"))
        except coredis.exceptions.RedisError as exc:
            raise StoreError(f"Redis at {where} refused INCR {prefix}:epoch: {exc}") from None
    except BaseException:
        # Not under a shield of its own: the pool's task group, entered above,
        # must exit in the cancel scope it was entered in.
        await exit_stack.aclose()
        raise
    store = RedisStore(client, keyring=keyring, epoch=epoch, prefix=prefix,
                       retention_events=retention_events,
                       retention_seconds=retention_seconds, clock=clock)
    store._exit = exit_stack
    return store


async def _check_persistence(client: coredis.Redis[bytes], where: str, durability: str,
                             persistence: dict[str, Any]) -> None:
    """Refuses a Redis whose persistence is weaker than `durability` needs.

    Raises:
        StoreError: it is; the message says what to set, or how to override.
    """
    if durability == "memory":
        return
    if str(persistence.get("aof_enabled")) != "1":
        raise StoreError(
            f"Redis at {where} has its append-only file off, so writes nexusd has "
            f"acknowledged would be lost on a Redis restart; set 'appendonly yes' (and "
            f"'appendfsync everysec' or 'always') in its configuration, or run nexusd "
            f"with --durability memory to accept that")
    if durability != "power":
        return
    try:
        config = await client.config_get(["appendfsync"])
    except coredis.exceptions.RedisError as exc:
        raise StoreError(
            f"Redis at {where} refused CONFIG GET appendfsync ({exc}), so nexusd cannot "
            f"check that it fsyncs each write as --durability power needs; run nexusd "
            f"with --durability process to rely on the append-only file alone") from None
    fsync = config.get(b"appendfsync", b"").decode()
    if fsync != "always":
        raise StoreError(
            f"Redis at {where} has 'appendfsync {fsync}', so a power cut may lose writes "
            f"nexusd has acknowledged; set 'appendfsync always' for --durability power, "
            f"or run nexusd with --durability process")
