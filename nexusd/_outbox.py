"""A connection's outgoing queue, drained by the connection's writer task.

Replies are always queued: their number is bounded by the requests a
connection may have in flight. Events are queued only while the queue holds
fewer than `max_frames` frames; a refused event means the subscriber is too
slow, and the session actor drops it (`lagged`) rather than wait for it.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio
from nexus_protocol import Connection, Error, ErrorCode, LocalProtocolError, Message

__all__ = ["Outbox", "OutboxStatistics"]


@attrs.frozen
class OutboxStatistics:
    queued_frames: int
    max_frames: int
    frames_sent: int
    events_refused: int
    closed: bool


class Outbox:
    def __init__(self, conn: Connection, *, max_frames: int) -> None:
        self.conn = conn
        self.max_frames = max_frames
        self._frames: deque[bytes] = deque()
        self._lot = trio.lowlevel.ParkingLot()  # the writer waits here
        self._replied = trio.lowlevel.ParkingLot()  # the reader waits here
        self._closed = False
        self._closing = False
        self._sent = 0
        self._refused = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(len(self._frames), self.max_frames, self._sent,
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
        self._frames.append(frame)
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
        self._frames.append(self.conn.send_encoded(body))
        self._wake()

    def push_event(self, body: bytes) -> bool:
        """Queues an encoded event; False if the queue is full or closed."""
        if self._closed:
            return False
        if len(self._frames) >= self.max_frames:
            self._refused += 1
            return False
        try:
            self._frames.append(self.conn.send_encoded(body))
        except LocalProtocolError:
            return False
        self._wake()
        return True

    def _wake(self) -> None:
        # The writer is parked only when the queue was empty; checking first
        # spares every other frame the cost of an empty unpark.
        if self._lot:
            self._lot.unpark_all()

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
        """Everything queued, once there is something; [] once closed and empty."""
        while not self._frames:
            if self._closed:
                return []
            await self._lot.park()
        frames = list(self._frames)
        self._frames.clear()
        self._sent += len(frames)
        return frames
