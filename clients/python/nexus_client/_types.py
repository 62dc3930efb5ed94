"""What the client's calls return: small frozen attrs classes built from replies.

Replies stay inside the client; callers get these, which name things the way
the Session Management Guide does and carry nothing wire-specific.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from nexus_protocol import Created, Renewed, StateReply, Switched, Value, Written

from ._errors import ProtocolError

__all__ = [
    "Entry",
    "Renewal",
    "SessionInfo",
    "SessionPage",
    "SessionState",
    "Transition",
    "WriteResult",
]


@attrs.frozen
class SessionInfo:
    """A session just created.

    Attributes:
        session_id: the session's id.
        token: its admin-scope token. The daemon shows it this once; the client
            remembers it for the session (and the CLI stores it).
        seq: the session's sequence number at creation.
        expires_at: absolute expiry, seconds since the epoch.
        idle_timeout: seconds of inactivity after which it expires, if any.
    """

    session_id: str
    token: str = attrs.field(repr=False)
    seq: int
    expires_at: float
    idle_timeout: float | None

    @classmethod
    def from_reply(cls, reply: Created) -> SessionInfo:
        return cls(session_id=reply.session_id, token=reply.token, seq=reply.seq,
                   expires_at=reply.expires_at, idle_timeout=reply.idle_timeout)


@attrs.frozen
class Entry:
    """One data entry. A key never written has version 0 and value None."""

    value: Any
    version: int
    updated_at: float | None = None
    channel: str | None = None

    @property
    def exists(self) -> bool:
        """False for a key never written or deleted (the daemon sends no
        `updated_at` for those)."""
        return self.updated_at is not None or self.value is not None

    @classmethod
    def from_reply(cls, reply: Value) -> Entry:
        return cls(value=reply.value, version=reply.version, updated_at=reply.updated_at,
                   channel=reply.channel)

    @classmethod
    def from_wire(cls, key: str, wire: Any) -> Entry:
        """An entry of a `state` reply or a `snapshot` event.

        Raises:
            ProtocolError: `wire` is not ``{value, version, updated_at, channel}``.
        """
        if not isinstance(wire, Mapping) or not isinstance(wire.get("version"), int):
            raise ProtocolError(f"entry {key!r} is not a map with a version")
        return cls(value=wire.get("value"), version=wire["version"],
                   updated_at=wire.get("updated_at"), channel=wire.get("channel"))

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)


def entries_from_wire(wire: Mapping[str, Any]) -> dict[str, Entry]:
    return {k: Entry.from_wire(k, v) for k, v in wire.items()}


@attrs.frozen
class SessionState:
    """The whole session as of `seq`: entries, context and deadlines.

    `context` holds what the guide calls the session context: current_channel,
    preferences, history, metrics (and whatever else the daemon keeps there).
    """

    session_id: str
    seq: int
    entries: dict[str, Entry]
    context: dict[str, Any]
    created_at: float
    expires_at: float
    idle_expires_at: float | None = None

    @property
    def values(self) -> dict[str, Any]:
        """``{key: value}`` for every entry."""
        return {k: e.value for k, e in self.entries.items()}

    @classmethod
    def from_reply(cls, reply: StateReply) -> SessionState:
        return cls(session_id=reply.session_id, seq=reply.seq,
                   entries=entries_from_wire(reply.entries), context=dict(reply.context),
                   created_at=reply.created_at, expires_at=reply.expires_at,
                   idle_expires_at=reply.idle_expires_at)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``data`` maps keys to values, ``entries`` keeps versions."""
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "data": self.values,
            "entries": {k: e.to_dict() for k, e in self.entries.items()},
            "context": self.context,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "idle_expires_at": self.idle_expires_at,
        }


@attrs.frozen
class WriteResult:
    """An acknowledged (durable) change: its `seq`, and the new version of the
    key written (`version`) or of each key a patch touched (`versions`)."""

    seq: int
    version: int | None = None
    versions: dict[str, int] | None = None

    @classmethod
    def from_reply(cls, reply: Written) -> WriteResult:
        return cls(seq=reply.seq, version=reply.version,
                   versions=dict(reply.versions) if reply.versions is not None else None)


@attrs.frozen
class Transition:
    """A channel transition begun (or completed) at `seq`."""

    transition_id: str
    seq: int

    @classmethod
    def from_reply(cls, reply: Switched) -> Transition:
        return cls(transition_id=reply.transition_id, seq=reply.seq)


@attrs.frozen
class Renewal:
    """A renewed session: its new absolute expiry."""

    seq: int
    expires_at: float

    @classmethod
    def from_reply(cls, reply: Renewed) -> Renewal:
        return cls(seq=reply.seq, expires_at=reply.expires_at)


@attrs.frozen
class SessionPage:
    """One page of `list_sessions`; pass `after` to get the next, None at the end."""

    sessions: list[dict[str, Any]]
    after: str | None
