"""A connection's outgoing queue.

Replies are always queued: their number is bounded by the requests a
connection may have in flight. Events are queued only while the queue holds
fewer than `max_frames` frames and has room for them within `max_bytes`; a
refused event means the subscriber is too slow, and the session actor drops
it (`lagged`) rather than wait for it.

Where the transport can write without waiting (a Unix socket, a WebSocket
without TLS, whose frames the transport makes as they are queued), queued frames
go straight to the socket: a session actor holds the `Flusher` while it
serves a batch, and on release writes every outbox the batch touched, each
with one system call, so that a change reaches its subscribers with no task
switch after the commit. What the socket does not take at once, and
everything on other transports, the connection's writer task sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import trio
from nexus_protocol import Connection, Error, ErrorCode, LocalProtocolError, Message

__all__ = ["Flusher", "Outbox", "OutboxStatistics"]


@attrs.frozen
class OutboxStatistics:
    queued_frames: int
    queued_bytes: int
    max_frames: int
    frames_sent: int
    events_refused: int
    closed: bool


class Flusher:
    """Defers a task's writes to outboxes while it holds the flusher.

    A session actor holds it while it serves a batch: every outbox the batch
    queues frames in is written once, on release, however many frames that
    is. Writes by any other task go at once (and take along whatever a
    holder queued in that outbox: sending a final frame early is harmless),
    so a holder waiting on the store delays nobody else.
    """

    def __init__(self) -> None:
        # Per holding task, the outboxes to write on release, in the order
        # first marked: a batch's events (to subscribers) before the
        # acknowledgements to its writers, which are then likely to write again.
        self._held: dict[trio.lowlevel.Task, dict[Outbox, None]] = {}

    def hold(self) -> None:
        self._held[trio.lowlevel.current_task()] = {}

    def release(self) -> None:
        for outbox in self._held.pop(trio.lowlevel.current_task()):
            outbox.flush()

    def mark(self, outbox: Outbox) -> None:
        """`outbox` has frames to write: now, or on the current task's release."""
        pending = self._held.get(trio.lowlevel.current_task()) if self._held else None
        if pending is None:
            outbox.flush()
        else:
            pending[outbox] = None


class Outbox:
    """`send_now(data)` writes what the transport takes without waiting and
    returns how much that was; with it (and a `flusher`) frames go out
    eagerly, otherwise only through the writer task (`wait_frames`).
    `wrap(frame)`, if given, makes each frame the bytes the transport writes."""

    def __init__(self, conn: Connection, *, max_frames: int, max_bytes: int = 8 << 20,
                 send_now: Callable[[bytes], int] | None = None,
                 flusher: Flusher | None = None,
                 wrap: Callable[[bytes], bytes] | None = None) -> None:
        self.conn = conn
        self._wrap = wrap
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: deque[bytes] = deque()
        self._bytes = 0  # in `_frames`
        self._lot = trio.lowlevel.ParkingLot()  # the writer waits here
        self._replied = trio.lowlevel.ParkingLot()  # the reader waits here
        self._closed = False
        self._closing = False
        self._sent = 0
        self._refused = 0
        self._send_now = send_now if flusher is not None else None
        self._flusher = flusher
        self._sending = False  # the writer task is writing: it owns the socket

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(len(self._frames), self._bytes, self.max_frames, self._sent,
                                self._refused, self._closed)

    def reply(self, message: Message) -> None:
        """Queues a reply (or a control event) regardless of the bound."""
        if self._closed:
            return
        try:
            frame = self.conn.send(message)
        except LocalProtocolError as exc:
            request_id = getattr(message, "id", None)
            if exc.code is not ErrorCode.TOO_LARGE or request_id is None:
                # The request it answers is no longer in flight (the
                # connection failed meanwhile); there is nobody to tell.
                return
            frame = self.conn.send(Error(
                id=request_id, code=ErrorCode.TOO_LARGE.value,
                message=f"the answer would exceed the frame limit of "
                        f"{self.conn.limits.max_frame} bytes; ask for less (one key)"))
        if self._wrap is not None:
            frame = self._wrap(frame)
        self._frames.append(frame)
        self._bytes += len(frame)
        self._wake()
        if self._replied:
            self._replied.unpark_all()
        if self._closing and not self.conn.in_flight:
            self.close()

    def reply_event(self, body: bytes) -> None:
        """Queues an encoded event that belongs to a reply (an attach's
        snapshot or replayed changes) regardless of the bound."""
        if self._closed:
            return
        frame = self.conn.send_encoded(body)
        if self._wrap is not None:
            frame = self._wrap(frame)
        self._frames.append(frame)
        self._bytes += len(frame)
        self._wake()

    def push_event(self, body: bytes) -> bool:
        """Queues an encoded event; False if the queue is full (by frames or
        bytes) or closed."""
        if self._closed:
            return False
        if len(self._frames) >= self.max_frames or (
                self._bytes + len(body) > self.max_bytes and self._frames):
            self._refused += 1
            return False
        try:
            frame = self.conn.send_encoded(body)
        except LocalProtocolError:
            return False
        if self._wrap is not None:
            frame = self._wrap(frame)
        self._frames.append(frame)
        self._bytes += len(frame)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._send_now is not None and not self._sending:
            self._flusher.mark(self)  # type: ignore[union-attr]
        # The writer is parked only when the queue was empty; checking first
        # spares every other frame the cost of an empty unpark.
        elif self._lot:
            self._lot.unpark_all()

    def flush(self) -> None:
        """Writes what is queued as far as the transport takes it now; the
        writer task is woken for the rest."""
        frames = self._frames
        if self._send_now is None or self._sending or not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self._sent += len(frames)
        frames.clear()
        self._bytes = 0
        try:
            written = self._send_now(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client is gone: the writer task finds the outbox closed and
            # empty, and ends the connection.
            self.close()
            return
        if written < len(data):
            frames.append(data[written:])
            self._bytes = len(data) - written
            self._sent -= 1  # counted again when the writer sends it
            if self._lot:
                self._lot.unpark_all()

    def detach(self) -> None:
        """No more writes of its own: the transport is about to close."""
        self._send_now = None
        self._closed = True

    def close_when_answered(self) -> None:
        """Closes once every request in flight has its reply queued."""
        self._closing = True
        if not self.conn.in_flight:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()
        self._replied.unpark_all()

    async def wait_reply_capacity(self, max_in_flight: int) -> None:
        """Waits until fewer than `max_in_flight` requests await their reply."""
        while len(self.conn.in_flight) >= max_in_flight and not self._closed:
            await self._replied.park()

    async def wait_frames(self) -> list[bytes]:
        """Everything queued, once there is something; [] once closed and empty.

        The caller owns the transport until it calls `sent`.
        """
        while not self._frames:
            if self._closed:
                return []
            await self._lot.park()
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._sent += len(frames)
        self._sending = True
        return frames

    def sent(self) -> None:
        """The frames `wait_frames` returned are written; eager writes resume."""
        self._sending = False
        if self._frames and self._send_now is not None:
            self.flush()
