"""The link between daemons: sealed frames over Redis pub/sub.

Each daemon of a cluster reads one channel, ``P:link:<epoch>``; what another
daemon sends it goes there. A frame is a short msgpack list (a forwarded
request, its reply, a subscription's event); the frames queued for one daemon
leave together, as one message, sealed with a key derived from the current
master key of the daemons' shared key ring (Redis never sees a value in the
clear, nor could it forge a frame).

Order: one task publishes everything this daemon sends, on one connection, so
frames reach each daemon in the order they were sent. Loss: a message
published to a channel nobody reads (its daemon is gone) is reported by
Redis as received by no one, and `gone` is called; when this daemon's own
subscription drops (Redis restarted, the network failed), what was published
meanwhile is lost and `reset` is called once it is subscribed again.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import msgpack
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..store import KeyRing

__all__ = ["Link", "LinkSeal", "LinkStatistics"]

log = logging.getLogger("nexusd.cluster")

#: Purpose of the key the link derives from each master key.
_PURPOSE: Final = "link"
#: How long the reader waits before subscribing again after its connection failed.
_RESUBSCRIBE_AFTER: Final = 0.2


def _why(exc: BaseException) -> str:
    """What went wrong, for the log: the first error inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


class LinkSeal:
    """Seals and opens link messages with keys derived from a key ring,
    bound to the cluster (`prefix`) and the daemon a message is for."""

    def __init__(self, ring: KeyRing, prefix: str = "") -> None:
        self._prefix = prefix.encode()
        self._current, key = ring.derive(_PURPOSE)
        self._aeads = {self._current: AESGCM(key)}
        self._ring = ring

    def _aead(self, key_id: str) -> AESGCM | None:
        aead = self._aeads.get(key_id)
        if aead is None and key_id in self._ring:
            aead = self._aeads[key_id] = AESGCM(self._ring.derive(_PURPOSE, key_id)[1])
        return aead

    def _aad(self, to: int) -> bytes:
        return b"nexusd/link/v1\0" + self._prefix + b"\0" + str(to).encode()

    def seal(self, to: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        sealed = self._aeads[self._current].encrypt(nonce, plaintext, self._aad(to))
        message: bytes = msgpack.packb([self._current, nonce, sealed])
        return message

    def open(self, to: int, message: bytes) -> bytes | None:
        """The plaintext, or None for a message this ring cannot open."""
        try:
            key_id, nonce, sealed = msgpack.unpackb(message)
            aead = self._aead(key_id)
            if aead is None:
                return None
            return aead.decrypt(nonce, sealed, self._aad(to))
        except (InvalidTag, ValueError, TypeError, msgpack.UnpackException):
            return None


class LinkStatistics:
    __slots__ = ("frames_in", "frames_out", "messages_out", "refused", "replays", "resets")

    def __init__(self) -> None:
        self.frames_in = self.frames_out = self.messages_out = self.refused = 0
        self.replays = self.resets = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Link:
    """This daemon's end of the link; see the module's docstring.

    `deliver(sender, frame)` is called for each frame received, in order;
    `gone(epoch, frames)` when a message to `epoch` reached no daemon (with
    its frames, undelivered); `lost(epoch, frames)` when Redis failed to take
    a message (its frames may or may not have arrived); `reset()` after this
    daemon's subscription was lost and made again.
    """

    def __init__(self, client: Any, prefix: str, epoch: int, seal: LinkSeal, *,
                 deliver: Callable[[int, list[Any]], None],
                 gone: Callable[[int, list[list[Any]]], None],
                 lost: Callable[[int, list[list[Any]]], None],
                 reset: Callable[[], None]) -> None:
        self._client = client
        self._prefix = prefix
        self.epoch = epoch
        self._seal = seal
        self._deliver = deliver
        self._gone = gone
        self._lost = lost
        self._reset = reset
        self._queues: dict[int, deque[list[Any]]] = {}
        # Messages are numbered per destination; a receiver takes each
        # sender's numbers in increasing order only (a replayed message,
        # which Redis or anyone who can publish there could send, is dropped).
        # Kept for every daemon ever heard from, even one found gone: it may
        # have been paused only (one number per daemon started, a few bytes).
        self._sent: dict[int, int] = {}
        self._heard: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self._wake = trio.Event()
        self.statistics = LinkStatistics()

    def channel(self, epoch: int) -> str:
        return f"{self._prefix}:link:{epoch}"

    def send(self, to: int, frame: list[Any], size: int = 0) -> None:
        """Queues `frame` for daemon `to`; `size` is what it holds in bytes
        (what `backlog` counts)."""
        queue = self._queues.get(to)
        if queue is None:
            queue = self._queues[to] = deque()
            self._bytes[to] = 0
        queue.append(frame)
        self._bytes[to] += size
        self._wake.set()

    def backlog(self, to: int) -> int:
        """Bytes queued for daemon `to` and not yet published."""
        return self._bytes.get(to, 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._read)
            nursery.start_soon(self._write)
            task_status.started()

    async def _write(self) -> None:
        stats = self.statistics
        lost = 0  # messages lost since the last that went out (logged once)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batches = [(to, list(queue)) for to, queue in self._queues.items() if queue]
            self._queues.clear()
            self._bytes.clear()
            messages = [(self.channel(to), self._seal.seal(
                to, msgpack.packb([self.epoch, self._number(to), frames], use_bin_type=True)))
                for to, frames in batches]
            try:
                if len(messages) == 1:  # the usual case: a pipeline costs more
                    received = [await self._client.publish(*messages[0])]
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        pending = [pipe.publish(channel, message)
                                   for channel, message in messages]
                    received = [await result for result in pending]
            except Exception as exc:  # Redis unreachable: the frames may be lost
                if not lost:
                    log.warning("link: messages to other daemons are lost: %s", _why(exc))
                lost += len(batches)
                for to, frames in batches:  # the daemons may well be alive
                    self._lost(to, frames)
                await trio.sleep(_RESUBSCRIBE_AFTER)
                continue
            if lost:
                log.warning("link: sending again; %d messages were lost", lost)
                lost = 0
            for (to, frames), n in zip(batches, received, strict=True):
                if n == 0:
                    stats.refused += 1
                    self._gone(to, frames)
            stats.messages_out += len(batches)
            stats.frames_out += sum(len(frames) for _, frames in batches)

    async def _read(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        channel = self.channel(self.epoch)
        first = True
        cut = False  # the subscription is lost (logged once until it is back)
        while True:
            try:
                async with self._client.pubsub(channels=[channel], retry_policy=None,
                                               ignore_subscribe_messages=True) as pubsub:
                    if first:
                        first = False
                        task_status.started()
                    else:
                        self.statistics.resets += 1
                        log.warning("link: subscribed again to %s; what other daemons "
                                    "sent meanwhile is lost", channel)
                        cut = False
                        self._reset()
                    async for message in pubsub:
                        if message.get("type") == "message":
                            self._received(message["data"])
            except Exception as exc:
                if first:
                    raise
                if not cut:
                    log.warning("link: lost the subscription to %s: %s", channel, _why(exc))
                cut = True
                await trio.sleep(_RESUBSCRIBE_AFTER)

    def _number(self, to: int) -> int:
        n = self._sent[to] = self._sent.get(to, 0) + 1
        return n

    def _received(self, data: bytes) -> None:
        plaintext = self._seal.open(self.epoch, data)
        if plaintext is None:
            log.warning("link: a message that the key ring cannot open was dropped "
                        "(do all daemons share one key ring?)")
            return
        sender, number, frames = msgpack.unpackb(plaintext, raw=False, strict_map_key=False)
        if number <= self._heard.get(sender, 0):
            self.statistics.replays += 1
            log.warning("link: a message from daemon %s came again (number %d) and was "
                        "dropped", sender, number)
            return
        self._heard[sender] = number
        self.statistics.frames_in += len(frames)
        for frame in frames:
            try:
                self._deliver(sender, frame)
            except Exception:
                log.exception("link: a frame from daemon %s failed", sender)
