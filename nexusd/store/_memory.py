"""The in-memory store: nothing survives the process (durability "memory")."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import attrs

from ._interface import (
    KeyManagement,
    LoadedSession,
    SessionMeta,
    StoredEvent,
    check_snapshot_seq,
)

__all__ = ["MemoryStore"]


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
        self._analytics: bytes | None = None

    @property
    def keys(self) -> KeyManagement | None:
        """None: nothing is encrypted, so there are no keys to rotate."""
        return None

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
        check_snapshot_seq(meta.session_id, seq, r.snapshot_seq)
        done = [e for e in r.events if e.seq <= seq]
        r.events = [e for e in r.events if e.seq > seq]
        r.history = (r.history + done)[-self.retention:]
        r.snapshot, r.snapshot_seq = snapshot, seq
        self._index(meta, r.meta)
        r.meta = meta

    async def delete(self, session_id: str, *, reason: str | None = None) -> None:
        r = self._records.pop(session_id, None)
        if r is None:
            return
        i = bisect.bisect_left(self._deadlines, (r.meta.deadline, session_id))
        del self._deadlines[i]
        del self._ids[bisect.bisect_left(self._ids, session_id)]

    async def ended(self, session_id: str) -> str | None:
        """None: no tombstones are kept."""
        return None

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

    async def save_analytics(self, doc: bytes) -> None:
        self._analytics = doc

    async def load_analytics(self) -> bytes | None:
        return self._analytics

    async def aclose(self) -> None:
        pass
