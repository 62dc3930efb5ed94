"""HTTP helpers for the daemon's tests: an httpx client on the daemon's real
HTTP listener, and an event-stream reader that parses Server-Sent Events as
a browser's EventSource would, on a connection of its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import httpx
import trio

from nexusd import Daemon

__all__ = ["SseEvent", "SseReader", "connect_events", "http_client", "open_events"]

#: Hard bound on any single wait (virtual seconds under `autojump_clock`).
TIMEOUT = 10.0


@asynccontextmanager
async def http_client(daemon: Daemon, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `daemon`'s HTTP listener, sending `token` as Bearer."""
    assert daemon.http_port is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No timeouts of httpx's own (they would follow a mock clock); each test
    # bounds its waits with trio.fail_after.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.http_port}",
                                 headers=headers, timeout=None) as client:
        yield client


@attrs.frozen
class SseEvent:
    event: str
    data: Any
    id: str | None


class SseReader:
    """One event stream over its own connection (h11 on a trio socket, so
    that a test can stop reading it); events as they arrive, comments
    counted. `status`, `headers` and `error` (the JSON of a refusal) come
    from the response head."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.comments = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False
        self.timeout = TIMEOUT  # the bound on each wait for an event
        self._buffer = b""

    async def _send_request(self, target: str, headers: dict[str, str]) -> None:
        request = h11.Request(method="GET", target=target,
                              headers=[("Host", "127.0.0.1"), *headers.items()])
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        while True:
            event = await self._event()
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode(): v.decode() for k, v in event.headers}
                return

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.conn.receive_data(data)
                continue
            return event

    async def body(self) -> bytes:
        """The rest of the body (for a refusal)."""
        out = b""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                out += event.data
            else:
                return out

    async def next(self) -> SseEvent | None:
        """The next event; None when the stream ends (or the connection is
        cut); within `timeout`."""
        with trio.fail_after(self.timeout):
            while True:
                block, sep, rest = self._buffer.partition(b"\n\n")
                if sep:
                    self._buffer = rest
                    event = self._parse(block.decode())
                    if event is not None:
                        return event
                    continue
                if self.ended:
                    return None
                try:
                    event = await self._event()
                except h11.RemoteProtocolError:
                    event = h11.ConnectionClosed()
                if isinstance(event, h11.Data):
                    self._buffer += bytes(event.data)
                else:
                    self.ended = True

    def _parse(self, block: str) -> SseEvent | None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" not in fields:
            return None
        return SseEvent(fields.get("event", "message"), json.loads(fields["data"]),
                        fields.get("id"))

    async def until(self, event: str) -> list[SseEvent]:
        """Events up to and including the first named `event`."""
        seen = []
        while True:
            e = await self.next()
            assert e is not None, f"the stream ended before {event!r}: {seen}"
            seen.append(e)
            if e.event == event:
                return seen


@asynccontextmanager
async def connect_events(daemon: Daemon, sid: str, token: str | None = None,
                         headers: dict[str, str] | None = None,
                         query: str = "") -> AsyncIterator[SseReader]:
    """A request for session `sid`'s event stream, its response head read."""
    assert daemon.http_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.http_port)
    try:
        reader = SseReader(stream)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        with trio.fail_after(TIMEOUT):
            await reader._send_request(f"/sessions/{sid}/events{query}", all_headers)
        yield reader
    finally:
        await stream.aclose()


@asynccontextmanager
async def open_events(daemon: Daemon, sid: str, token: str | None = None,
                      headers: dict[str, str] | None = None,
                      query: str = "") -> AsyncIterator[SseReader]:
    """An open event stream of session `sid`, its `attached` event read."""
    async with connect_events(daemon, sid, token, headers, query) as reader:
        assert reader.status == 200, await reader.body()
        assert reader.headers["content-type"].startswith("text/event-stream")
        attached = await reader.next()
        assert attached is not None and attached.event == "attached", attached
        yield reader
