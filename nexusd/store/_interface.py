"""The store interface: what the daemon needs of a store.

The session actor awaits the store before it acknowledges a write or fans it
out, so whatever a store's `append` has returned from is what "acknowledged"
means. A store keeps, per session, its metadata row (the deadlines the reaper
queries), the latest snapshot of its state, and the change events after it.

Event payloads are the encoded `change` bodies exactly as subscribers receive
them; a snapshot is an opaque msgpack document of the session state. A store
never needs to understand either.

What only some stores can do is an optional capability with a neutral answer
for the others: `Store.keys` is the master key ring of a store that encrypts
at rest in a data directory, and None for a store that keeps no keys there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

import attrs

__all__ = [
    "IDLE_LAG",
    "Fenced",
    "KeyManagement",
    "LoadedSession",
    "SessionMeta",
    "Store",
    "StoreError",
    "StoredEvent",
    "check_snapshot_seq",
]


#: The most by which an active session's stored idle deadline may lag its
#: activity, in seconds. The actor stores the metadata of a session in use
#: only once its activity has moved that far past what the store knows
#: (a write's event carries its time anyway), so that reads cost no commit;
#: the stored `SessionMeta.idle_lag` says so, and a session recovered after a
#: crash is given that much more idle time rather than expired early.
IDLE_LAG: Final = 10.0


class StoreError(Exception):
    """The store cannot do what was asked: it cannot be opened, does not
    match its keys, or the disk failed a commit."""


class Fenced(StoreError):
    """The session is owned by another daemon (or by none): this daemon may
    not write to it. Nothing was changed. Only a store shared by several
    daemons (the Redis engine) has owners."""


def check_snapshot_seq(session_id: str, seq: int, stored: int) -> None:
    """Refuses a snapshot at `seq` over one stored at the later seq `stored`.

    An older snapshot would lose changes: the events between the two may
    have left the journal, so they could not replay onto it. (A snapshot at
    or after the stored one is consistent: events after it stay and replay.)

    Raises:
        StoreError: `seq` is below `stored`.
    """
    if seq < stored:
        raise StoreError(f"session {session_id}: refusing a snapshot at seq {seq}, older "
                         f"than the stored one at seq {stored} (written by another daemon "
                         "on the same data?)")


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
    #: How much later than `idle_expires_at` the session may really be idle:
    #: IDLE_LAG while an actor has it (its activity is stored lazily), 0 for
    #: the exact deadline it stores as it hibernates.
    idle_lag: float = 0.0

    @property
    def deadline(self) -> float:
        """The earlier of the absolute and the idle deadline (with its lag):
        the session is not due before it."""
        if self.idle_expires_at is None:
            return self.expires_at
        return min(self.expires_at, self.idle_expires_at + self.idle_lag)

    def expiry_reason(self, now: float) -> str | None:
        """"ttl" or "idle" if the session is past a deadline at `now`, else None."""
        now += 1e-6  # as SessionState.expiry_reason: tolerate float rounding
        if now >= self.expires_at:
            return "ttl"
        if self.idle_expires_at is not None and now >= self.idle_expires_at + self.idle_lag:
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


class KeyManagement(Protocol):
    """The master keys of a store that encrypts at rest: what a daemon does
    when `nexusd keys rotate` has changed the key ring under it."""

    @property
    def current(self) -> str:
        """The id of the master key that new data keys are wrapped under."""

    async def reload(self) -> str:
        """Reads the key ring again from where the store first read it, checks
        it against the stored data, and makes it the store's. Returns the id
        of its current master key.

        Raises:
            KeyRingError: the key ring cannot be read, or is malformed.
            StoreError: the ring lacks a key the data needs, or does not match
                the data; the store keeps the ring it had.
        """

    async def rewrap(self) -> int:
        """Re-wraps every session's data key that is not under the current
        master key, in batches between other writes, and returns how many it
        re-wrapped. Snapshots and events are never rewritten."""


class Store(Protocol):
    """What the daemon needs of a store. Every method may block on I/O."""

    @property
    def keys(self) -> KeyManagement | None:
        """The store's master key ring, or None if it keeps none that could
        be rotated (nothing to reload, nothing to re-wrap)."""

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
        kept as far as the retention window allows.

        Raises:
            KeyError: the session is not in the store.
            StoreError: the store holds a later snapshot; nothing is changed.
        """

    async def delete(self, session_id: str, *, reason: str | None = None) -> None:
        """Removes the session and makes its data unrecoverable. A store that
        keeps tombstones notes `reason` ("ttl", "idle", "deleted", ...) for
        `ended`; the others ignore it."""

    async def ended(self, session_id: str) -> str | None:
        """Why a recently removed session ended (the `reason` given to
        `delete`), or None if unknown: always None for a store that keeps
        no tombstones."""

    async def due(self, now: float, limit: int) -> list[SessionMeta]:
        """Up to `limit` sessions whose deadline is at or before `now`,
        earliest first, found through an index (never a scan)."""

    async def next_deadline(self) -> float | None:
        """The earliest deadline of any stored session, or None."""

    async def list_sessions(self, after: str | None, limit: int) -> list[SessionMeta]:
        """Sessions in id order, starting after the id `after`."""

    async def count(self) -> int:
        """How many sessions the store holds."""

    async def save_analytics(self, doc: bytes) -> None:
        """Stores the daemon-wide analytics document, replacing the last."""

    async def load_analytics(self) -> bytes | None:
        """The analytics document last stored, or None."""

    async def aclose(self) -> None:
        """Flushes and releases everything."""
