"""The bench's HTTP clients: blocking sockets, HTTP/1.1 by hand.

`HttpWriter` keeps one connection alive and writes a session's key with
``PUT`` (to nexusd, or to the bare hypercorn+Starlette endpoint of
`bench._http_floor`); `SseSubscriber` reads a session's event stream and
gives the `t` of each change. Both parse only what they must (a response's
head and length; the chunks of the stream and each change's JSON), so that
the client costs every server the same few microseconds.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final

from ._client import RECV_SIZE, Target

__all__ = ["HttpWriter", "SseSubscriber"]

_HEAD_END: Final = b"\r\n\r\n"


def _connect(target: Target) -> socket.socket:
    host, _, port = target.address.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(status_line: bytes, headers: bytes) -> tuple[int, dict[str, str]]:
    status = int(status_line.split(b" ", 2)[1])
    fields = {}
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields[name.strip().lower().decode()] = value.strip().decode()
    return status, fields


class HttpWriter:
    """One keep-alive connection writing a session's key (``k``)."""

    def __init__(self, target: Target, session_id: str | None = None,
                 token: str | None = None) -> None:
        self.host = target.address
        self.sock = _connect(target)
        self._buffer = bytearray()
        self.floor = target.proto == "http-floor"
        if session_id is None and not self.floor:
            status, created = self.request("POST", "/sessions", {"ttl": 86400})
            assert status == 201, created
            session_id, token = created["session_id"], created["token"]
        self.session_id = session_id or "floor"
        self.token = token or ""
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        self._put_head = (f"PUT /sessions/{self.session_id}/data/k HTTP/1.1\r\n"
                          f"Host: {self.host}\r\n{auth}"
                          "Content-Type: application/json\r\n").encode()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request, its status and JSON reply (set-up only: blocking)."""
        data = b"" if body is None else json.dumps(body).encode()
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        while True:
            got = self._responses()
            if got:
                status, payload = got[0]
                return status, json.loads(payload) if payload else None
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk

    def frame(self, value: Any) -> bytes:
        """The bytes of one ``PUT`` of `value`."""
        body = json.dumps(value, separators=(",", ":")).encode()
        return self._put_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self) -> int:
        """How many responses one readable event completed; raises on an error."""
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("the server closed the writer's connection")
        self._buffer += data
        done = self._responses()
        for status, payload in done:
            if status >= 300:
                raise RuntimeError(f"write refused: {status} {payload[:200]!r}")
        return len(done)

    def _responses(self) -> list[tuple[int, bytes]]:
        out = []
        buf = self._buffer
        while True:
            end = buf.find(_HEAD_END)
            if end < 0:
                return out
            status_line, _, headers = bytes(buf[:end]).partition(b"\r\n")
            status, fields = _head(status_line, headers)
            length = int(fields.get("content-length", "0"))
            if len(buf) < end + 4 + length:
                return out
            out.append((status, bytes(buf[end + 4:end + 4 + length])))
            del buf[:end + 4 + length]

    def close(self) -> None:
        self.sock.close()


class SseSubscriber:
    """One event stream of a session, read as `curl -N` would."""

    def __init__(self, target: Target, session_id: str, token: str) -> None:
        self.sock = _connect(target)
        self.closed = False
        self.lagged = False
        self._raw = bytearray()
        self._events = bytearray()
        self._in_body = False
        self.sock.sendall(f"GET /sessions/{session_id}/events HTTP/1.1\r\n"
                          f"Host: {target.address}\r\nAuthorization: Bearer {token}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        # Until the stream has attached: its first event.
        while b"event: attached" not in self._events:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError(f"the event stream was refused: {bytes(self._raw)!r}")
            self._feed(data)
        self._events.clear()

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def _feed(self, data: bytes) -> None:
        """Takes bytes off the socket: the head, then the chunked body."""
        raw = self._raw
        raw += data
        if not self._in_body:
            end = raw.find(_HEAD_END)
            if end < 0:
                return
            status_line, _, _ = bytes(raw[:end]).partition(b"\r\n")
            if int(status_line.split(b" ", 2)[1]) != 200:
                raise ConnectionError(f"the event stream was refused: {bytes(raw)!r}")
            del raw[:end + 4]
            self._in_body = True
        while True:  # whole chunks only: a chunk's events are whole events
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(raw[:line_end]).split(b";")[0], 16)
            if size == 0:
                self.closed = True
                return
            total = line_end + 2 + size + 2
            if len(raw) < total:
                return
            self._events += raw[line_end + 2:line_end + 2 + size]
            del raw[:total]

    def changes_in(self, data: bytes) -> list[Any]:
        """The `t` of each change `data` completes, in order."""
        if not data:
            self.closed = True
            return []
        self._feed(data)
        out = []
        events = self._events
        while True:
            end = events.find(b"\n\n")
            if end < 0:
                return out
            block = bytes(events[:end])
            del events[:end + 2]
            if block.startswith((b"id:", b"event: change")) and b"event: change" in block:
                payload = block[block.index(b"data: ") + 6:]
                out.append(json.loads(payload)["value"]["t"])
            elif b"event: lagged" in block:
                self.lagged = self.closed = True

    def close(self) -> None:
        self.sock.close()
