"""What a session actor's mailbox carries.

A client's request travels in an `Envelope` with its `Principal` and the
`ReplySink` its reply goes to. The daemon's own work travels as internal
messages of its own: the reaper's `CheckExpiry`, the hibernator's `Quiet`, a
closed connection's `Disconnect`. None of them is a request, and none is
authorized as if someone had sent it.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
from nexus_protocol import SessionRequest

from .._errors import RequestError
from .._principal import Principal, ReplySink

__all__ = ["Ask", "CheckExpiry", "Disconnect", "Envelope", "MailItem", "Quiet"]


@attrs.define(eq=False, slots=True)
class Envelope:
    """A request from `principal`, answered into `sink`."""

    request: SessionRequest
    principal: Principal
    sink: ReplySink


@attrs.define(eq=False)
class Ask:
    """An internal message's answer, which a task awaits."""

    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: RequestError | None = None

    def resolve(self, result: Any = None, error: RequestError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()

    async def wait(self) -> Any:
        """The answer, once given.

        Raises:
            RequestError: the actor could not answer (it ended, or the
                session expired).
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


@attrs.frozen
class CheckExpiry:
    """From the reaper: expire if due, else persist the true deadline."""

    ask: Ask = attrs.Factory(Ask)


@attrs.frozen
class Quiet:
    """From the registry: no traffic for `hibernate_after`, or (`make_room`)
    other sessions need the room; hibernate if unwatched."""

    make_room: bool = False


@attrs.frozen
class Disconnect:
    """A connection closed: forget its subscription, announce it left."""

    connection_id: str


MailItem = Envelope | CheckExpiry | Quiet | Disconnect
