"""What the client core shares with the watches it feeds: one established
connection (`_Link`), a request waiting on it (`_Pending`), and the calls by
which the core hands a watch its session's events (`_Subscriber`).

`_watch` builds on `_core`; the core knows a watch only as a `_Subscriber`,
so neither module imports the other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio
from nexus_protocol import Connection, ConnectionState, Message, Welcome

from ._errors import NexusError
from ._transport import Transport


@attrs.define(eq=False)
class _Pending:
    """A request waiting for its reply (or for the reason it never comes)."""

    on_reply: Callable[[_Link, Message], None] | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    reply: Message | None = None
    failure: NexusError | None = None


@attrs.define(eq=False)
class _Link:
    """One established connection and what is in flight on it."""

    conn: Connection
    transport: Transport
    welcome: Welcome
    generation: int
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    pending: dict[int, _Pending] = attrs.Factory(dict)
    send_lock: trio.Lock = attrs.Factory(trio.Lock)
    draining: bool = False
    closed: bool = False
    retry_after: float | None = None
    # Why the connection ended (or the daemon's announcement that it will).
    reason: NexusError | None = None

    @property
    def usable(self) -> bool:
        return not (self.closed or self.draining) and self.conn.state is ConnectionState.OPEN


class _Subscriber(Protocol):
    """What the core calls on a watch of one session (`Watch` is the one
    kind). The calls come from the core's reader task or from closing the
    client, and must not block."""

    session_id: str

    def _deliver(self, link: _Link, event: Message) -> None:
        """Takes one event of the session, read on `link`."""

    def _on_link_lost(self, link: _Link) -> None:
        """`link` has ended: a subscription held on it is gone."""

    def _on_client_failed(self, exc: BaseException) -> None:
        """The client gave up reconnecting or was closed: iterating raises `exc`."""
