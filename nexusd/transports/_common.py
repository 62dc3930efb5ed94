"""What the transports share: each connection runs alone, so that whatever
it raises is logged once and ends that connection, never the nursery that
serves the others; and the accept loop, which survives running out of
descriptors.

Out of descriptors (`EMFILE`), `accept` fails while the client waits in the
listen queue until it times out. The accept loop then lets go of a reserve
descriptor held for the purpose, accepts the waiting connections and closes
them at once (the client hears a reset, not a silence), takes the reserve
back, and logs one line per interval, however many accepts failed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from nexus_protocol import Error, ErrorCode, encode_body
from wsproto.utilities import RemoteProtocolError as WebSocketProtocolError

__all__ = ["Handler", "accept_loop", "bracket", "busy_body", "in_use", "listen_error",
           "run_alone"]

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


def listen_error(exc: OSError, host: str, port: int) -> OSError:
    """What to raise when a listener cannot bind `host`:`port`: the address
    named, and an address in use said so."""
    address = f"{bracket(host)}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return OSError(exc.errno, in_use(address))
    return OSError(exc.errno, f"cannot listen on {address}: {exc.strerror or exc}")


def busy_body() -> bytes:
    """The body of the `busy` error a connection over the limits is told
    before it is closed."""
    return encode_body(Error(code=ErrorCode.BUSY.value, retry_after=1.0,
                             message="the daemon has as many connections as it may; "
                                     "retry later"))


#: accept(2) errors that say the process or the system is out of something.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long the accept loop pauses after one, and how often it logs one.
_PAUSE = 0.1
_LOG_EVERY = 10.0


class _Reserve:
    """One descriptor held back so that a listener out of descriptors can
    still accept (and close) the connections waiting on it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._take()
        self._failed = 0
        self._logged_at = -_LOG_EVERY

    def _take(self) -> None:
        try:
            self._fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            self._fd = None

    def shed(self, sock: Any, exc: OSError) -> int:
        """Accepts and closes what waits on `sock`, using the reserve; logs
        the failure once per interval. Returns how many were closed."""
        self._failed += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            log.warning("accept failed %d times: %s (%s); new connections are closed "
                        "at once until descriptors are free", self._failed,
                        errno.errorcode.get(exc.errno or 0, "?"), os.strerror(exc.errno or 0))
            self._failed = 0
            self._logged_at = now
        if self._fd is None or sock is None:
            return 0
        os.close(self._fd)
        self._fd = None
        shed = 0
        try:
            while shed < 64:
                try:
                    conn, _ = sock._sock.accept()
                except (BlockingIOError, InterruptedError, OSError):
                    break
                conn.close()
                shed += 1
        finally:
            self._take()
        return shed


async def accept_loop(listener: trio.abc.Listener[Any], sock: Any,
                      connection: Callable[[Any], Awaitable[None]],
                      handler_nursery: trio.Nursery, *, name: str = "accepted") -> None:
    """Accepts `listener`'s connections and runs `connection(stream)` for
    each in `handler_nursery` (closing the stream after it); `sock` is the
    trio socket under the listener, used to shed connections when out of
    descriptors; `name` labels the log line of a connection that fails.
    Never returns unless cancelled."""
    reserve = _Reserve()

    async def run(stream: Any) -> None:
        # `connection` runs its steps alone; this guards what it does before
        # (or between) them, so that no connection can end the nursery.
        try:
            await run_alone(f"{name} connection", partial(connection, stream))
        finally:
            with contextlib.suppress(*_CLIENT_FAULTS):
                await trio.aclose_forcefully(stream)

    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                reserve.shed(sock, exc)
                await trio.sleep(_PAUSE)
                continue
            handler_nursery.start_soon(run, stream)
