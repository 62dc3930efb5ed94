"""Fan-out of committed changes: the bus.

A session's actor opens the session's `Topic` when it becomes active and
closes it when it ends. Through it the actor publishes each change once it is
durable, subscribes its watchers, and asks for the changes after a `seq` to
replay to a watcher that resumes. The bus keeps each active session's
retention window for that replay: the last `retention` changes, and no more
than `retention_bytes` of them.

Delivery never blocks: a subscriber either takes an event at once or is
lagging, and a lagging subscriber is dropped and told `lagged` with the last
`seq` it was sent, from which it resumes. `LocalBus` is the in-process bus;
another engine (Redis, shared by several daemons) provides the same
interface, checked by the same contract suite (`tests/bus/`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs
from nexus_protocol import Lagged, Message

__all__ = ["Bus", "BusStatistics", "LocalBus", "LocalTopic", "Subscriber", "Topic"]


class Subscriber(Protocol):
    """Where a subscription's events go."""

    def push_event(self, body: bytes) -> bool:
        """Takes an encoded event without waiting; False if it cannot (lagging)."""

    def reply(self, message: Message) -> None:
        """Takes a control event (`lagged`) whatever its queue holds."""


@attrs.frozen
class BusStatistics:
    topics: int
    subscribers: int
    published: int
    lagged: int
    history_bytes: int  # retained for replay, over every topic


class Topic(Protocol):
    """One session's fan-out, used by that session's actor alone."""

    @property
    def seq(self) -> int:
        """The `seq` of the last change published (or the session's at opening)."""

    @property
    def subscribers(self) -> Mapping[str, Subscriber]:
        """The current subscribers by key, in the order they subscribed."""

    @property
    def history_bytes(self) -> int:
        """Bytes of the changes retained for replay."""

    def publish(self, seq: int, body: bytes) -> list[tuple[str, Subscriber]]:
        """Delivers committed change `seq` (the next one) to every subscriber
        and keeps it for replay. Returns the subscribers dropped as lagging,
        each already told `lagged`."""

    def broadcast(self, body: bytes) -> None:
        """Delivers an event that is not a change (presence, an ending) to
        every subscriber that takes it; nobody is dropped for it."""

    def replay(self, since: int | None) -> list[bytes] | None:
        """The changes after `since`, in order; None if they cannot all be
        replayed (no `since`, one in the future, or older than the retention
        window): the subscriber needs a snapshot instead."""

    def subscribe(self, key: str, subscriber: Subscriber) -> Subscriber | None:
        """Adds `subscriber` under `key`, replacing (and returning) the one
        there before. Events published after this call reach it: `replay`
        then `subscribe` in one step leaves no gap."""

    def unsubscribe(self, key: str) -> Subscriber | None:
        """Removes and returns the subscriber under `key`, if any."""

    def close(self) -> None:
        """The session is no longer active here: forgets its subscribers and
        its retained changes."""


class Bus(Protocol):
    def open(self, session_id: str, seq: int, history: Iterable[tuple[int, bytes]]) -> Topic:
        """The topic of `session_id`, now at `seq`; `history` holds the
        changes still retained from before (`(seq, body)`, oldest first)."""

    def statistics(self) -> BusStatistics: ...


class LocalTopic:
    """An in-process topic: a dict of subscribers and a history bounded by
    count and bytes."""

    def __init__(self, bus: LocalBus, session_id: str, seq: int,
                 history: Iterable[tuple[int, bytes]], retention: int,
                 retention_bytes: int) -> None:
        self.session_id = session_id
        self._bus = bus
        self._seq = seq
        self._retention = retention
        self._retention_bytes = retention_bytes
        self._history: deque[tuple[int, bytes]] = deque(history)
        self._bytes = sum(len(body) for _, body in self._history)
        bus._history_bytes += self._bytes
        self._trim()
        self._subscribers: dict[str, Subscriber] = {}

    def _trim(self) -> None:
        history = self._history
        dropped = 0
        while history and (len(history) > self._retention
                           or self._bytes - dropped > self._retention_bytes):
            dropped += len(history.popleft()[1])
        self._bytes -= dropped
        self._bus._history_bytes -= dropped

    @property
    def history_bytes(self) -> int:
        return self._bytes

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def subscribers(self) -> Mapping[str, Subscriber]:
        return self._subscribers

    def publish(self, seq: int, body: bytes) -> list[tuple[str, Subscriber]]:
        self._history.append((seq, body))
        self._bytes += len(body)
        self._bus._history_bytes += len(body)
        if len(self._history) > self._retention or self._bytes > self._retention_bytes:
            self._trim()
        self._seq = seq
        self._bus._published += 1
        subscribers = self._subscribers
        if not subscribers:
            return []
        lagging = [(key, sub) for key, sub in subscribers.items() if not sub.push_event(body)]
        if lagging:
            lagged = Lagged(session_id=self.session_id, seq=seq - 1)
            for key, sub in lagging:
                del subscribers[key]
                sub.reply(lagged)
            self._bus._lagged += len(lagging)
            self._bus._subscribers -= len(lagging)
        return lagging

    def broadcast(self, body: bytes) -> None:
        for sub in list(self._subscribers.values()):
            sub.push_event(body)

    def replay(self, since: int | None) -> list[bytes] | None:
        if since is None or since > self._seq:
            return None
        if since == self._seq:
            return []
        history = self._history
        if not history or history[0][0] > since + 1:
            return None
        return [body for seq, body in history if seq > since]

    def subscribe(self, key: str, subscriber: Subscriber) -> Subscriber | None:
        old = self._subscribers.pop(key, None)
        self._subscribers[key] = subscriber
        if old is None:
            self._bus._subscribers += 1
        return old

    def unsubscribe(self, key: str) -> Subscriber | None:
        old = self._subscribers.pop(key, None)
        if old is not None:
            self._bus._subscribers -= 1
        return old

    def close(self) -> None:
        self._bus._subscribers -= len(self._subscribers)
        self._subscribers.clear()
        self._history.clear()
        self._bus._history_bytes -= self._bytes
        self._bytes = 0
        self._bus._closed(self)


class LocalBus:
    """The bus of one daemon: topics live as long as their session's actor.

    `retention` is the number of changes each topic keeps for replay, and
    `retention_bytes` the most bytes of them.
    """

    def __init__(self, *, retention: int = 1000, retention_bytes: int = 4 << 20) -> None:
        self.retention = retention
        self.retention_bytes = retention_bytes
        self._topics: dict[str, LocalTopic] = {}
        self._published = 0
        self._lagged = 0
        self._history_bytes = 0
        # Kept as subscribers come and go: `statistics` never sums over
        # every active session.
        self._subscribers = 0

    def open(self, session_id: str, seq: int,
             history: Iterable[tuple[int, bytes]]) -> LocalTopic:
        # An ending actor may still hold the session's previous topic for a
        # moment (its snapshot being written); the new one replaces it.
        topic = self._topics[session_id] = LocalTopic(self, session_id, seq, history,
                                                      self.retention, self.retention_bytes)
        return topic

    def _closed(self, topic: LocalTopic) -> None:
        if self._topics.get(topic.session_id) is topic:
            del self._topics[topic.session_id]

    def statistics(self) -> BusStatistics:
        return BusStatistics(len(self._topics), self._subscribers, self._published,
                             self._lagged, self._history_bytes)
