"""Server-Sent Events: a session's changes as an HTTP event stream.

`EventStream` is the subscriber the session service attaches (an
`EventSink`): the actor hands it encoded events without waiting, and it
keeps them in a queue bounded by count and by bytes. A reader that falls
behind fills it; the bus then drops the stream and sends it `lagged`, which
the stream writes as its last event: the client reconnects with
`Last-Event-ID`, the `seq` it last saw, and misses nothing.

`EventStream.respond` is the ASGI response that writes the queue: each
`change` with its `seq` as the event id, a `snapshot` (also with its
`seq`), `presence`, and a comment every `heartbeat` seconds without events.
The stream ends after `lagged`, `expired`, `invalidated`, or `shutdown`
(the daemon stopping), and when the client goes away. A client that stops
reading altogether is cut off after `write_timeout` (`abort`), so that it
holds neither the session nor the daemon's shutdown.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio
from nexus_protocol import Attached, Limits, Message, decode_body
from starlette.types import Receive, Scope, Send

from ._mapping import dumps, message_json

__all__ = ["EventStream", "sse_event"]

log = logging.getLogger("nexusd.http")

# Events are decoded to be written as JSON. They were checked when they were
# written; a stream must not refuse them because this daemon has tighter limits.
_EVENT_LIMITS: Final = Limits(max_frame=0xFFFF_FFFF, max_key=1 << 20, max_depth=1 << 16,
                              max_patch=1 << 30)
#: Events whose `seq` is the stream's position: written with it as the event id.
_POSITIONED: Final = frozenset({"change", "snapshot"})
#: Events after which nothing more comes.
_FINAL: Final = frozenset({"lagged", "expired", "invalidated"})

def sse_event(name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One event in the text/event-stream format (its data is one JSON line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: ".encode() + dumps(data) + b"\n\n"


def _encode(message: Message) -> bytes:
    data = message_json(message)
    seq = data.get("seq") if message.TAG in _POSITIONED else None
    return sse_event(message.TAG, data, seq)


class EventStream:
    """One HTTP event stream: the subscriber and its bounded queue.

    `max_events` and `max_bytes` bound what waits for the reader (replayed
    events aside: an attach's catch-up is never refused).
    """

    def __init__(self, *, max_events: int, max_bytes: int, heartbeat: float,
                 write_timeout: float) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self.write_timeout = write_timeout
        self._queue: deque[bytes | Message] = deque()
        self._bytes = 0
        self._wake = trio.Event()
        self._closed = False
        self.sent = 0  # events written

    # ------------------------------------------------------- the EventSink

    @property
    def closed(self) -> bool:
        return self._closed

    def push_event(self, body: bytes) -> bool:
        if len(self._queue) >= self.max_events or self._bytes + len(body) > self.max_bytes:
            return False
        self._put(body)
        return True

    def reply_event(self, body: bytes) -> None:
        self._put(body)

    def reply(self, message: Message) -> None:
        # A control event (`lagged`, or an actor that failed): always taken.
        self._queue.append(message)
        self._wake.set()

    def _put(self, body: bytes) -> None:
        self._queue.append(body)
        self._bytes += len(body)
        self._wake.set()

    def close(self) -> None:
        """The stream is over: the session no longer counts it."""
        self._closed = True
        self._wake.set()

    # ----------------------------------------------------------- writing

    def _take(self) -> tuple[bytes, bool]:
        """What is queued, as one chunk; True if the stream ends after it."""
        out: list[bytes] = []
        final = False
        queue = self._queue
        while queue and not final:
            item = queue.popleft()
            if isinstance(item, bytes):
                self._bytes -= len(item)
                message: Message = decode_body(item, _EVENT_LIMITS)
            else:
                message = item
            out.append(_encode(message))
            final = message.TAG in _FINAL
        if not queue:
            self._wake = trio.Event()
        self.sent += len(out)
        return b"".join(out), final

    async def respond(self, attached: Attached, scope: Scope, receive: Receive, send: Send,
                      *, stopping: trio.Event, abort: Callable[[], None],
                      headers: list[tuple[bytes, bytes]]) -> None:
        """Writes the stream as the ASGI response to `scope` until it ends:
        `lagged`, `expired`, `invalidated`, `stopping` set (a `shutdown`
        event), or the client gone. `abort()` cuts the client's connection
        if a write does not complete within `write_timeout`."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                await send({"type": "http.response.start", "status": 200,
                            "headers": headers})
                first = sse_event("attached", message_json(attached))
                await self._write(send, b"retry: 1000\n\n" + first, abort)
                while not self._closed:
                    final = await self._next_chunk(send, stopping, abort)
                    if final:
                        break
                if not self._closed:
                    await send({"type": "http.response.body", "body": b"",
                                "more_body": False})
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    async def _next_chunk(self, send: Send, stopping: trio.Event,
                          abort: Callable[[], None]) -> bool:
        """Waits for events (or the heartbeat) and writes them; True at the end."""
        with trio.move_on_after(self.heartbeat):
            async with trio.open_nursery() as waiters:
                async def on_stop() -> None:
                    await stopping.wait()
                    waiters.cancel_scope.cancel()

                async def on_event() -> None:
                    await self._wake.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(on_stop)
                waiters.start_soon(on_event)
        if self._queue:
            chunk, final = self._take()
            await self._write(send, chunk, abort)
            return final
        if stopping.is_set():
            await self._write(send, sse_event("shutdown", {
                "reason": "the daemon is shutting down", "retry_after": 1.0}), abort)
            return True
        if not self._closed:
            await self._write(send, b": heartbeat\n\n", abort)
        return False

    async def _write(self, send: Send, chunk: bytes, abort: Callable[[], None]) -> None:
        # The server's write may wait for a client that stopped reading, and
        # cannot be cancelled: past `write_timeout`, the connection is cut.
        async with trio.open_nursery() as nursery:
            async def watchdog() -> None:
                await trio.sleep(self.write_timeout)
                log.info("an event stream's client stopped reading for %gs; cutting it",
                         self.write_timeout)
                self._closed = True
                abort()

            nursery.start_soon(watchdog)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._closed = True
                scope.cancel()
                return
