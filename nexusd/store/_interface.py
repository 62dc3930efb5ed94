"""The store interface, and the in-memory store.

The session actor awaits the store before it acknowledges a write or fans it
out, so whatever a store's `append` has returned from is what "acknowledged"
means. A store keeps, per session, its metadata row (the deadlines the reaper
queries), the latest snapshot of its state, and the change events after it.

Event payloads are the encoded `change` bodies exactly as subscribers receive
them; a snapshot is an opaque msgpack document of the session state. A store
never needs to understand either.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

import attrs

__all__ = [
    "LoadedSession",
    "MemoryStore",
    "SessionMeta",
    "Store",
    "StoreError",
    "StoredEvent",
]


class StoreError(Exception):
    """The store cannot do what was asked: it cannot be opened, does not
    match its keys, or the disk failed a commit."""


@attrs.frozen
class SessionMeta:
    """What a store indexes about a session, outside its encrypted state.

    `tokens` maps the SHA-256 hex digest of each token to its scope; the tokens
    themselves are never stored. Times are wall-clock seconds.
    """

    session_id: str
    created_at: float
    ttl: float
    expires_at: float
    idle_timeout: float | None
    idle_expires_at: float | None
    tokens: dict[str, str] = attrs.field(factory=dict, eq=False)

    @property
    def deadline(self) -> float:
        """The earlier of the absolute and the idle deadline."""
        if self.idle_expires_at is None:
            return self.expires_at
        return min(self.expires_at, self.idle_expires_at)

    def expiry_reason(self, now: float) -> str | None:
        """"ttl" or "idle" if the session is past a deadline at `now`, else None."""
        now += 1e-6  # as SessionState.expiry_reason: tolerate float rounding
        if now >= self.expires_at:
            return "ttl"
        if self.idle_expires_at is not None and now >= self.idle_expires_at:
            return "idle"
        return None


@attrs.frozen
class StoredEvent:
    """One journaled change: its seq and the encoded `change` body."""

    seq: int
    ts: float
    payload: bytes


@attrs.frozen
class LoadedSession:
    """A session as a store returns it for activation.

    The state is `snapshot` (taken at `snapshot_seq`, None for none yet)
    followed by `events`, which hold every seq after `snapshot_seq` in order.
    `history` holds the retained events up to `snapshot_seq` too, for resume.
    """

    meta: SessionMeta
    snapshot: bytes | None
    snapshot_seq: int
    events: Sequence[StoredEvent]
    history: Sequence[StoredEvent] = ()


class Store(Protocol):
    """What the daemon needs of a store. Every method may block on I/O."""

    async def create(self, meta: SessionMeta, snapshot: bytes) -> None:
        """Records a new session with its initial state at seq 0."""

    async def load(self, session_id: str) -> LoadedSession | None:
        """The session to activate, or None if there is no such session."""

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        """Journals `events` and updates the metadata row, durably, at once.

        Raises:
            KeyError: the session is not in the store.
        """

    async def save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes) -> None:
        """Stores the state as of `seq`; events up to `seq` become history,
        kept as far as the retention window allows."""

    async def delete(self, session_id: str) -> None:
        """Removes the session and makes its data unrecoverable."""

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        """Up to `limit` sessions whose deadline is at or before `now`,
        earliest first, found through an index (never a scan)."""

    async def next_deadline(self) -> float | None:
        """The earliest deadline of any stored session, or None."""

    async def list_sessions(self, after: str | None, limit: int) -> list[SessionMeta]:
        """Sessions in id order, starting after the id `after`."""

    async def count(self) -> int:
        """How many sessions the store holds."""

    async def aclose(self) -> None:
        """Flushes and releases everything."""


@attrs.define
class _Record:
    meta: SessionMeta
    snapshot: bytes
    snapshot_seq: int
    events: list[StoredEvent]  # every event after snapshot_seq
    history: list[StoredEvent]  # retained events up to snapshot_seq


class MemoryStore:
    """A store that keeps everything in this process: nothing survives it.

    Args:
        retention: events kept per session for resume after a snapshot.
    """

    def __init__(self, *, retention: int = 1000) -> None:
        self.retention = retention
        self._records: dict[str, _Record] = {}
        # Sorted (deadline, session_id): the deadline index.
        self._deadlines: list[tuple[float, str]] = []
        self._ids: list[str] = []  # sorted, for list_sessions

    def _index(self, meta: SessionMeta, old: SessionMeta | None) -> None:
        if old is not None:
            i = bisect.bisect_left(self._deadlines, (old.deadline, old.session_id))
            del self._deadlines[i]
        bisect.insort(self._deadlines, (meta.deadline, meta.session_id))

    async def create(self, meta: SessionMeta, snapshot: bytes) -> None:
        if meta.session_id in self._records:
            raise KeyError(f"session {meta.session_id} exists")
        self._records[meta.session_id] = _Record(meta, snapshot, 0, [], [])
        self._index(meta, None)
        bisect.insort(self._ids, meta.session_id)

    async def load(self, session_id: str) -> LoadedSession | None:
        r = self._records.get(session_id)
        if r is None:
            return None
        return LoadedSession(r.meta, r.snapshot, r.snapshot_seq, list(r.events),
                             list(r.history))

    async def append(self, meta: SessionMeta, events: Sequence[StoredEvent]) -> None:
        r = self._records[meta.session_id]
        r.events.extend(events)
        self._index(meta, r.meta)
        r.meta = meta

    async def save_snapshot(self, meta: SessionMeta, seq: int, snapshot: bytes) -> None:
        r = self._records[meta.session_id]
        done = [e for e in r.events if e.seq <= seq]
        r.events = [e for e in r.events if e.seq > seq]
        r.history = (r.history + done)[-self.retention:]
        r.snapshot, r.snapshot_seq = snapshot, seq
        self._index(meta, r.meta)
        r.meta = meta

    async def delete(self, session_id: str) -> None:
        r = self._records.pop(session_id, None)
        if r is None:
            return
        i = bisect.bisect_left(self._deadlines, (r.meta.deadline, session_id))
        del self._deadlines[i]
        del self._ids[bisect.bisect_left(self._ids, session_id)]

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        end = bisect.bisect_right(self._deadlines, (now, "\U0010ffff"))
        return [self._records[sid].meta for _, sid in self._deadlines[:min(end, limit)]]

    async def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    async def list_sessions(self, after: str | None, limit: int) -> list[SessionMeta]:
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        return [self._records[sid].meta for sid in self._ids[start:start + limit]]

    async def count(self) -> int:
        return len(self._records)

    async def aclose(self) -> None:
        pass
