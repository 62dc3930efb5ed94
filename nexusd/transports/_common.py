"""What the transports share: each connection runs alone, so that whatever
it raises is logged once and ends that connection, never the nursery that
serves the others."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

__all__ = ["Handler", "bracket", "in_use", "run_alone"]

log = logging.getLogger("nexusd.transport")

#: A transport's handler: serves one connection, returns when it is over.
Handler = Callable[[Any], Awaitable[None]]

#: What a client that goes away, or speaks no WebSocket, makes a connection
#: raise: its own doing, not the daemon's.
_CLIENT_FAULTS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                  WebSocketProtocolError)


async def run_alone(peer: str, run: Callable[[], Awaitable[None]]) -> None:
    """Runs one connection; whatever it raises (cancellation aside) is logged
    once and goes no further, so one connection cannot end the daemon."""
    try:
        await run()
    except* _CLIENT_FAULTS as group:
        log.info("%s: the client went away: %s", peer,
                 "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions))
    except* Exception as group:
        log.error("%s: connection failed", peer, exc_info=group)


def in_use(address: str) -> str:
    return f"address {address} is in use (another nexusd?)"


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
