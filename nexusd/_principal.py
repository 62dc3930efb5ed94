"""Who is asking, and where the answer goes.

A `Principal` is one client as the session core sees it: its connection,
the channel label it declared, whether it holds the daemon's admin
credential, and the scopes its tokens have proven so far. Every request
comes from one; there is no trusted caller without one (the daemon's own
work, such as expiry checks, travels as internal messages instead).

A `ReplySink` is where a request's reply goes. The msgpack connection's
`Outbox` is one (the reply is queued and written with the actor's batch);
the service's `Call` is another, which a task awaits.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

import attrs
from nexus_protocol import Message

from ._limits import Peer, peer_of_uid

__all__ = ["MAX_GRANTS", "EventSink", "Principal", "ReplySink"]

#: Sessions whose proven scope one principal remembers; beyond that the
#: least recently proven must show their token again.
MAX_GRANTS: Final = 10_000


class ReplySink(Protocol):
    """Receives the reply to a request, without waiting."""

    def reply(self, message: Message) -> None:
        """Takes a reply (or a control event such as `lagged`); never refuses one."""

    def reply_event(self, body: bytes) -> None:
        """Takes an encoded event that belongs to a reply (an attach's
        snapshot or replayed changes); never refuses one."""


@runtime_checkable
class EventSink(ReplySink, Protocol):
    """A sink that can also hold a subscription's events (the `Subscriber`
    of the bus): an attach needs one."""

    @property
    def closed(self) -> bool:
        """The client is gone: its subscriptions no longer count."""

    def push_event(self, body: bytes) -> bool:
        """Takes an encoded event without waiting; False if it cannot (lagging)."""


@attrs.define(eq=False)
class Principal:
    """A client as the session core sees it. `grants` caches, per session,
    the scope a token last proved for this principal, used by its requests
    that carry no token; `subscriptions` lists the sessions it watches.
    `peer` is where it connects from (the limits' key); `may_create` is false
    for a network client that must show the create key and has not."""

    connection_id: str
    channel: str
    client: str
    admin: bool
    peer: Peer = attrs.field(factory=lambda: peer_of_uid(None), kw_only=True)
    may_create: bool = attrs.field(default=True, kw_only=True)
    grants: dict[str, str] = attrs.Factory(dict)
    subscriptions: set[str] = attrs.Factory(set)

    @property
    def writer(self) -> str:
        """The name a change records as its writer."""
        return self.client or self.connection_id

    def remember(self, session_id: str, scope: str) -> None:
        """Caches a proven scope (replacing the one before, higher or lower);
        the oldest entries go past MAX_GRANTS."""
        grants = self.grants
        grants.pop(session_id, None)
        grants[session_id] = scope
        while len(grants) > MAX_GRANTS:
            del grants[next(iter(grants))]
