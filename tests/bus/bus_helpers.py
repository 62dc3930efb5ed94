"""Helpers of the bus contract suite."""

from __future__ import annotations

import nexus_protocol as p
from nexus_protocol import Message, decode_body, encode_body

RETENTION = 5


def change(seq: int, key: str = "k") -> bytes:
    """The encoded change `seq` of session "s"."""
    return encode_body(p.Change(session_id="s", seq=seq, op="set", ts=float(seq),
                                channel="cli", writer="w", key=key, value=seq, version=seq))


def seqs(bodies: list[bytes]) -> list[int]:
    return [decode_body(b).seq for b in bodies]  # type: ignore[attr-defined]


class Inbox:
    """A subscriber that holds at most `room` events, like a connection's
    bounded queue; control events (`lagged`) are always taken."""

    def __init__(self, room: int = 100) -> None:
        self.room = room
        self.events: list[bytes] = []
        self.controls: list[Message] = []

    def push_event(self, body: bytes) -> bool:
        if len(self.events) >= self.room:
            return False
        self.events.append(body)
        return True

    def reply(self, message: Message) -> None:
        self.controls.append(message)
