"""What the baseline relays do with a frame, whatever their event loop.

A relay is the least a server can do and still let the bench's client
processes run unchanged against it. It decodes each frame with plain
``msgpack.unpackb`` (no field checks), keeps per "session" nothing but its
subscribers and a counter, and answers:

- ``hello``   -> ``welcome``
- ``create``  -> ``created`` (a random id; the token is a dummy)
- ``attach``  -> ``attached`` (the connection joins the session's subscribers;
  no snapshot, no presence events)
- ``detach``  -> ``ok``;  ``get`` -> an empty ``value``;  ``ping`` -> ``pong``;
  ``stats`` -> ``report``
- ``set``     -> a ``change`` frame carrying the written value, with the same
  fields nexusd sends, to every subscriber of the session, then ``written``
  to the writer. The change is encoded once for all subscribers, or once per
  subscriber when the relay runs with ``per_subscriber``.

It does *not*: validate fields or value nesting, authenticate tokens, keep the
session's state or history, journal anything (no store: nothing is durable),
bound its queues, detect slow consumers, or announce presence. The ratio
nexusd/relay is therefore what nexusd's guarantees and its own overhead cost
on top of the transport, the event loop and msgpack.
"""

from __future__ import annotations

import secrets
import struct
import time
from typing import Any, Final

import msgpack

__all__ = ["Peer", "RelayCore", "split_frames"]

_packb: Final = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb: Final = msgpack.unpackb


_HEADER: Final = struct.Struct(">I")


def split_frames(buf: bytearray) -> list[bytes]:
    """The complete length-prefixed frame bodies at the front of `buf`, which
    keeps the incomplete rest."""
    out = []
    pos, size = 0, len(buf)
    while size - pos >= 4:
        (length,) = _HEADER.unpack_from(buf, pos)
        end = pos + 4 + length
        if end > size:
            break
        out.append(bytes(buf[pos + 4:end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


class Peer:
    """A connection as the relay core sees it; the relay subclasses it."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.channel = "?"
        self.client = ""
        self.sessions: set[str] = set()


class _Session:
    __slots__ = ("seq", "subscribers")

    def __init__(self) -> None:
        self.subscribers: dict[Peer, None] = {}
        self.seq = 0


class RelayCore:
    def __init__(self, name: str, *, per_subscriber: bool = False) -> None:
        self.name = name
        self.per_subscriber = per_subscriber
        self.sessions: dict[str, _Session] = {}
        self.forwarded = 0

    def handle(self, peer: Peer, body: bytes
               ) -> tuple[bytes | None, list[Peer], dict[str, Any] | None]:
        """(reply body or None, subscribers, change to send them or None)."""
        obj = _unpackb(body)
        tag = obj.get("t")
        if tag == "set":
            sid = obj["session_id"]
            session = self.sessions.get(sid)
            if session is None:
                return self._error(obj, "not_found", f"session {sid} not found"), [], None
            session.seq += 1
            seq = session.seq
            change = {"t": "change", "session_id": sid, "seq": seq, "op": "set",
                      "ts": time.time(), "channel": peer.channel, "writer": peer.client,
                      "key": obj["key"], "value": obj["value"], "version": seq}
            reply = _packb({"t": "written", "id": obj["id"], "seq": seq, "version": seq,
                            "versions": None})
            subscribers = list(session.subscribers)
            self.forwarded += len(subscribers)
            return reply, subscribers, change
        if tag == "hello":
            peer.channel = obj.get("channel") or "?"
            peer.client = obj.get("client") or ""
            return _packb({"t": "welcome", "version": 1, "server": self.name,
                           "connection_id": peer.connection_id, "admin": False,
                           "max_frame": 1 << 20}), [], None
        if tag == "create":
            sid = secrets.token_hex(16)
            self.sessions[sid] = _Session()
            return _packb({"t": "created", "id": obj["id"], "session_id": sid,
                           "token": "relay", "seq": 0, "expires_at": time.time() + 86400.0,
                           "idle_timeout": None}), [], None
        if tag == "attach":
            sid = obj["session_id"]
            session = self.sessions.get(sid)
            if session is None:
                return self._error(obj, "not_found", f"session {sid} not found"), [], None
            session.subscribers[peer] = None
            peer.sessions.add(sid)
            return _packb({"t": "attached", "id": obj["id"], "session_id": sid,
                           "seq": session.seq, "recovered": False, "scope": "read",
                           "presence": []}), [], None
        if tag == "detach":
            self._leave(peer, obj["session_id"])
            return _packb({"t": "ok", "id": obj["id"]}), [], None
        if tag == "get":
            return _packb({"t": "value", "id": obj["id"], "key": obj.get("key") or "k",
                           "value": None, "version": 0, "updated_at": None,
                           "channel": None}), [], None
        if tag == "ping":
            return _packb({"t": "pong", "id": obj["id"]}), [], None
        if tag == "stats":
            return _packb({"t": "report", "id": obj["id"],
                           "report": {"server": self.name, "durability": "none",
                                      "sessions_active": len(self.sessions)}}), [], None
        return self._error(obj, "bad_request", f"the relay does not serve {tag!r}"), [], None

    @staticmethod
    def encode(change: dict[str, Any]) -> bytes:
        return _packb(change)

    def _error(self, obj: dict[str, Any], code: str, message: str) -> bytes:
        return _packb({"t": "error", "id": obj.get("id"), "code": code, "message": message,
                       "retry_after": None})

    def _leave(self, peer: Peer, sid: str) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.subscribers.pop(peer, None)
        peer.sessions.discard(sid)

    def drop(self, peer: Peer) -> None:
        """The connection closed."""
        for sid in list(peer.sessions):
            self._leave(peer, sid)
