"""Small tools shared by the protocol tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from hypothesis import settings
from nexus_protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    ConnectionState,
    Hello,
    Limits,
    Message,
    Side,
    Welcome,
)

#: The Hypothesis settings of the protocol tests (registered in conftest.py).
PROFILE = settings.get_profile("nexus-protocol")

SID = "5f0c8a3e9b2d4c71a6e8f0b3d2c1a9e7"
TOKEN = "nxs_dGhpcyBpcyBhIHRlc3QgdG9rZW4gb2YgNDMgY2g"


def drain(conn: Connection) -> list[Message | ConnectionClosed]:
    """Every event `conn` can produce now, up to NEED_DATA or ConnectionClosed."""
    events: list[Message | ConnectionClosed] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def deliver(data: bytes, to: Connection) -> list[Message | ConnectionClosed]:
    """Feeds `data` to `to` and returns what it yields."""
    to.receive_data(data)
    return drain(to)


def chunks(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """`data` cut into pieces of the given sizes, cycled; the last takes the rest."""
    sizes = [s for s in sizes if s > 0] or [len(data) or 1]
    i = pos = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos:pos + size]
        pos += size
        i += 1


def open_pair(*, limits: Limits | None = None,
              **kwargs: Any) -> tuple[Connection, Connection]:
    """A client and a server Connection that have completed a v1 handshake."""
    extra: dict[str, Any] = dict(kwargs)
    if limits is not None:
        extra["limits"] = limits
    client = Connection(Side.CLIENT, **extra)
    server = Connection(Side.SERVER, **extra)
    [hello] = deliver(client.send(Hello(versions=[1], channel="cli", client="tests")), server)
    assert isinstance(hello, Hello)
    max_frame = server.limits.max_frame
    [welcome] = deliver(server.send(Welcome(version=1, server="tests", connection_id="c-1",
                                            max_frame=max_frame)), client)
    assert isinstance(welcome, Welcome)
    assert client.state is ConnectionState.OPEN and server.state is ConnectionState.OPEN
    return client, server


def open_server(**kwargs: Any) -> Connection:
    return open_pair(**kwargs)[1]


def open_client(**kwargs: Any) -> Connection:
    return open_pair(**kwargs)[0]


def from_json(value: Any) -> Any:
    """A vector's JSON value as the Python value msgpack gives: {"$bytes": hex}
    becomes bytes (see protocol/vectors/README.md)."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if attrs.has(type(a)):
        return all(same(getattr(a, f.name), getattr(b, f.name))
                   for f in attrs.fields(type(a)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def nested(depth: int) -> Any:
    """An array `depth` deep around 1: nested(2) == [[1]]."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value
