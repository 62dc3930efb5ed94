"""A live view of one session's events that survives reconnects.

The client's reader task hands each event to `Watch._deliver`, which never
blocks: it puts the event in the watch's bounded buffer with ``send_nowait``.
Everything that needs I/O (attaching, resuming) happens in the task that
iterates the watch, when its buffer is empty.

Guarantees, as the iterating task sees them:

* `Change` events arrive in ``seq`` order, each at most once: after any
  re-attach, events with ``seq <= cursor`` are dropped.
* No gap: when the watch loses its subscription (the connection dropped and
  came back, the daemon said `Lagged`, or the buffer overflowed) it re-attaches
  with ``since=cursor`` once the caller has consumed what is buffered. The
  daemon replays exactly the missed changes, or, if they are older than its
  retention window, sends a `Snapshot` with ``recovered=False``: the watch
  yields that snapshot, and the caller must treat it as "state replaced, some
  changes were skipped".
* A slow consumer never stalls the connection or other watches. When the
  buffer is full the event is dropped and the watch marks itself overflowed;
  it resumes from its cursor as described above (a local `Lagged`).
* A resume the daemon answers `unavailable` or `busy` (its store restarting,
  the session's daemon in a cluster being replaced) is retried with the
  client's backoff, at least as late as the daemon's ``retry_after``.
* The watch ends (``StopAsyncIteration``) after yielding `Expired` or
  `Invalidated`. If the session ended while the watch was disconnected, the
  resume fails and the iterator raises `SessionExpired` or `SessionNotFound`.
* If the client gives up reconnecting, the iterator raises `ConnectionLost`;
  if the client is closed, `trio.ClosedResourceError`.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, Final

import attrs
import trio
from nexus_protocol import (
    Attach,
    Attached,
    Change,
    Detach,
    Expired,
    Invalidated,
    Lagged,
    Message,
    Ok,
    Snapshot,
)

from ._core import _ClientCore
from ._errors import Busy, ConnectionLost, NexusError, Unavailable
from ._link import _Link

__all__ = ["Watch", "WatchStatistics"]

# Put in the buffer to wake an iterating task when the watch's state changed.
_WAKE: Final = object()

#: Seconds the detach on exit may take before it is abandoned.
_DETACH_TIMEOUT: Final = 2.0


@attrs.frozen
class WatchStatistics:
    """A snapshot of a watch's progress.

    Attributes:
        session_id: the session watched.
        cursor: seq of the last change or snapshot accepted (None: none yet).
        buffered: events waiting to be consumed.
        live: the daemon is currently sending this watch's events.
        attaches: successful attach requests (the first one and every resume).
        duplicates_dropped: changes dropped because their seq was <= cursor.
        overflows: times the buffer was full and the watch had to resume.
        lagged: times the daemon detached the watch for being slow.
    """

    session_id: str
    cursor: int | None
    buffered: int
    live: bool
    attaches: int
    duplicates_dropped: int
    overflows: int
    lagged: int


class Watch:
    """Events of one session: ``async with client.watch(sid) as events:``.

    Yields `Snapshot`, `Change`, `Presence`, `Expired` and `Invalidated`
    events (the `nexus_protocol` classes), plus the reserved `Progress` and
    `Result` if a daemon sends them. Entering attaches (raising
    `SessionNotFound`, `Unauthorized`, ... right away); leaving detaches.
    Created by `AsyncClient.watch`.
    """

    def __init__(self, client: _ClientCore, session_id: str, *, since: int | None,
                 token: str | None, channel: str | None, scope: str, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.session_id = session_id
        self.since = since
        #: seq of the last change or snapshot accepted; resumes start after it.
        self.cursor: int | None = since
        #: The reply to the latest successful attach.
        self.attached: Attached | None = None
        self._client = client
        self._token = token
        self._channel = channel
        self._scope = scope
        self._send, self._recv = trio.open_memory_channel[Any](buffer)
        self._live = False
        # The connection the daemon has this watch subscribed on.
        self._server_link: _Link | None = None
        self._needs_resume = False
        self._terminal: Message | None = None
        self._terminal_yielded = False
        self._failure: BaseException | None = None
        self._entered = False
        self._exited = False
        self._attaches = 0
        self._duplicates = 0
        self._overflows = 0
        self._lagged = 0

    def statistics(self) -> WatchStatistics:
        return WatchStatistics(
            session_id=self.session_id, cursor=self.cursor,
            buffered=self._recv.statistics().current_buffer_used, live=self._live,
            attaches=self._attaches, duplicates_dropped=self._duplicates,
            overflows=self._overflows, lagged=self._lagged)

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Watch:
        """Attaches to the session.

        Raises:
            trio.BusyResourceError: this client already watches the session.
            SessionNotFound, SessionExpired, Unauthorized, ...: as the daemon says.
        """
        if self._entered:
            raise RuntimeError("a Watch can be entered only once")
        self._entered = True
        await self._client._add_watch(self)
        try:
            await self._attach()
        except BaseException:
            self._exited = True
            self._client._remove_watch(self)
            self._close_channel()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._exited = True
        client = self._client
        link, self._server_link, self._live = self._server_link, None, False
        self._close_channel()
        if link is None or link is not client._link or not link.usable or self._terminal:
            client._remove_watch(self)
            return
        # Until the detach is answered, a new watch of this session on this
        # client must wait: its attach could otherwise be undone by our detach.
        done = client._detaching[self.session_id] = trio.Event()
        client._remove_watch(self)
        sid = self.session_id
        try:
            with trio.move_on_after(_DETACH_TIMEOUT, shield=True):
                # If this fails the subscription ends with the connection anyway.
                with contextlib.suppress(NexusError, trio.ClosedResourceError):
                    await client._request(lambda rid: Detach(id=rid, session_id=sid), Ok,
                                          session_id=sid)
        finally:
            del client._detaching[sid]
            done.set()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Message:
        if not self._entered or self._exited:
            raise RuntimeError("iterate a Watch inside its 'async with' block")
        while True:
            if self._recv.statistics().current_buffer_used == 0:
                if self._terminal is not None:
                    if self._terminal_yielded:
                        raise StopAsyncIteration
                    self._terminal_yielded = True
                    await trio.lowlevel.checkpoint()
                    return self._terminal
                if self._failure is not None:
                    raise _copy(self._failure)
                if self._needs_resume:
                    await self._attach()
                    continue
            item = await self._recv.receive()
            if item is _WAKE:
                continue
            assert isinstance(item, Message)
            return item

    # ------------------------------------------------------------- attaching

    async def _attach(self) -> None:
        """(Re-)attaches after the cursor, across reconnects."""
        client = self._client
        sid = self.session_id

        def on_reply(link: _Link, reply: Message) -> None:
            # Runs in the reader, in stream order: events after this reply are
            # this subscription's replay or snapshot, then live changes.
            if isinstance(reply, Attached):
                self._live = True
                self._server_link = link
                self._needs_resume = False
                self.attached = reply

        def build(rid: int) -> Message:
            # Read at send time: a retry after a reconnect resumes from the
            # cursor as it is then.
            return Attach(id=rid, session_id=sid, token=client._token(sid, self._token),
                          since=self.cursor, scope=self._scope, channel=self._channel)

        attempt = 0
        while True:
            try:
                await client._request(build, Attached, session_id=sid, on_reply=on_reply)
            except ConnectionLost:
                if client._can_reconnect():
                    continue  # the connection dropped mid-attach: again on the next one
                raise
            except (Unavailable, Busy) as exc:
                # Resuming, and the daemon says to retry (its store is back in
                # a moment, the session's daemon is being replaced): as told.
                backoff = client._backoff
                if not self._attaches or not client._can_reconnect() or backoff is None \
                        or backoff.gives_up_after(attempt):
                    raise
                await trio.sleep(backoff.delay(attempt, exc.retry_after))
                attempt += 1
                continue
            self._attaches += 1
            return

    # ------------------------------------------------- called by the client

    def _deliver(self, link: _Link, event: Message) -> None:
        """Takes one event from the reader; never blocks."""
        if link is not self._server_link or self._exited:
            return  # from a subscription this watch no longer holds
        if isinstance(event, Expired | Invalidated):
            self._terminal = event
            self._live = False
            self._wake()
            return
        if not self._live:
            return
        if isinstance(event, Lagged):
            self._lagged += 1
            self._lose_subscription()
            return
        seq: int | None = None
        if isinstance(event, Change):
            if self.cursor is not None and event.seq <= self.cursor:
                self._duplicates += 1
                return
            seq = event.seq
        elif isinstance(event, Snapshot):
            seq = event.seq
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            # The consumer is behind: drop this and everything after it until
            # the buffer is drained, then resume from the cursor.
            self._overflows += 1
            self._live = False
            self._needs_resume = True
            return
        if seq is not None:
            self.cursor = seq

    def _on_link_lost(self, link: _Link) -> None:
        if self._server_link is link:
            self._lose_subscription()

    def _on_client_failed(self, exc: BaseException) -> None:
        self._failure = exc
        self._wake()

    def _lose_subscription(self) -> None:
        self._live = False
        self._server_link = None
        self._needs_resume = True
        self._wake()

    def _wake(self) -> None:
        # A full buffer wakes the consumer anyway.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError,
                                 trio.BrokenResourceError):
            self._send.send_nowait(_WAKE)

    def _close_channel(self) -> None:
        self._send.close()
        self._recv.close()


def _copy(exc: BaseException) -> BaseException:
    if isinstance(exc, NexusError):
        new: BaseException = type(exc)(exc.message, code=exc.code,
                                       retry_after=exc.retry_after, session_id=exc.session_id)
    else:
        new = type(exc)(*exc.args)
    new.__cause__ = exc.__cause__
    return new
