"""Bad input gets a clear error and changes nothing; the daemon, and every
other session, carry on."""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import nexus_protocol as p
import pytest
import trio
from raw_client import RawClient, connect_unix, connect_ws

from nexusd import Daemon

MAX_FRAME = 65536
HELLO = p.Hello(versions=[1], channel="api")


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def packed(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


class Bystander:
    """A writer and a watcher on their own session, checked between blows."""

    def __init__(self, writer: RawClient, watcher: RawClient, sid: str) -> None:
        self.writer, self.watcher, self.sid = writer, watcher, sid
        self.seq = 0

    async def still_fine(self) -> None:
        self.seq += 1
        written = await self.writer.call(p.Set, session_id=self.sid, key="n", value=self.seq)
        assert isinstance(written, p.Written) and written.seq == self.seq
        change = await self.watcher.next_of(p.Change)
        assert (change.seq, change.value) == (self.seq, self.seq)


@asynccontextmanager
async def bystander(daemon: Daemon) -> AsyncIterator[Bystander]:
    assert daemon.socket_path is not None and daemon.ws_port
    async with (connect_unix(daemon.socket_path) as writer,
                connect_ws(daemon.ws_port) as watcher):
        created = await writer.call(p.Create)
        assert isinstance(created, p.Created)
        await watcher.call(p.Attach, session_id=created.session_id, token=created.token)
        await watcher.next_of(p.Snapshot)
        yield Bystander(writer, watcher, created.session_id)


async def _target(c: RawClient) -> tuple[str, str, p.StateReply]:
    """A session with some state, and that state."""
    created = await c.call(p.Create)
    assert isinstance(created, p.Created)
    sid = created.session_id
    await c.call(p.Set, session_id=sid, key="k", value="original")
    state = await c.call(p.Get, session_id=sid)
    assert isinstance(state, p.StateReply)
    return sid, created.token, state


async def _unchanged(c: RawClient, sid: str, before: p.StateReply) -> None:
    state = await c.call(p.Get, session_id=sid)
    assert isinstance(state, p.StateReply)
    assert (state.seq, state.entries, state.context) == (before.seq, before.entries,
                                                        before.context)


@pytest.mark.daemon_config(max_frame=MAX_FRAME)
async def test_malformed_requests_with_an_id_are_answered_and_the_connection_goes_on(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    async with (bystander(daemon) as other,
                connect_unix(daemon.socket_path) as owner,
                connect_unix(daemon.socket_path) as bad_unix,
                connect_ws(daemon.ws_port) as bad_ws):
        sid, token, before = await _target(owner)
        bodies = [
            ({"t": "frobnicate", "id": 0}, "unknown message type"),
            ({"id": 0, "session_id": sid}, "missing message type"),
            ({"t": "set", "id": 0, "session_id": sid, "key": 123, "value": 1, "token": token},
             "'key'"),
            ({"t": "set", "id": 0, "session_id": sid, "key": "k", "value": 1, "expect": -1,
              "token": token}, "'expect'"),
            ({"t": "set", "id": 0, "session_id": sid, "value": 1, "token": token},
             "missing field 'key'"),
            ({"t": "set", "id": 0, "session_id": sid, "key": "", "value": 1, "token": token},
             "'key'"),
            ({"t": "set", "id": 0, "session_id": sid, "key": "k" * 300, "value": 1,
              "token": token}, "'key'"),
            ({"t": "get", "id": 0, "session_id": ["not", "a", "string"]}, "'session_id'"),
            ({"t": "patch", "id": 0, "session_id": sid, "set": {"k": 1}, "delete": "k",
              "token": token}, "'delete'"),
            ({"t": "set", "id": 0, "session_id": sid, "key": "k", "value": _deep(40),
              "token": token}, "nesting"),
            ({"t": "attach", "id": 0, "session_id": sid, "since": "yesterday",
              "token": token}, "'since'"),
        ]
        for bad in (bad_unix, bad_ws):
            for body, says in bodies:
                rid = bad.new_id()
                data = packed({**body, "id": rid})
                raw = data if bad.transport.framing is p.Framing.MESSAGE else framed(data)
                await bad.send_raw(raw, stands_for=p.Ping(id=rid))
                error = await bad.reply(rid)
                assert isinstance(error, p.Error), error
                assert error.code == "bad_request"
                assert says in error.message
                # Still connected, still served.
                assert isinstance(await bad.call(p.Ping), p.Pong)
                await other.still_fine()
            # A request that is well-formed but not allowed changes nothing either.
            error = await bad.call(p.Set, session_id=sid, key="k", value="hijack",
                                   token="nxs_" + "A" * 43)
            assert isinstance(error, p.Error) and error.code == "unauthorized"
            assert not bad.closed
        await _unchanged(owner, sid, before)
        await other.still_fine()


def _unsyncable(rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(what, stream bytes, error code) for input after which a stream
    connection cannot go on."""
    garbage = bytes(rng.randrange(256) for _ in range(64))
    return [
        ("oversized length prefix", b"\xff\xff\xff\xff", "too_large"),
        ("length just over the limit", struct.pack(">I", MAX_FRAME + 1), "too_large"),
        ("random bytes in a frame", framed(garbage), "bad_request"),
        ("not a map", framed(packed([1, 2, 3])), "bad_request"),
        ("no readable id", framed(packed({"t": "set", "id": "seven"})), "bad_request"),
        ("a second hello", framed(packed({"t": "hello", "versions": [1], "channel": "x"})),
         "bad_request"),
        ("a reply, from a client", framed(packed({"t": "pong", "id": 1})), "bad_request"),
        ("an extension type", framed(b"\x81\xa1t\xd4\x05\x00"), "bad_request"),
        ("invalid utf-8", framed(b"\x81\xa1t\xa2\xff\xfe"), "bad_request"),
    ]


@pytest.mark.daemon_config(max_frame=MAX_FRAME)
async def test_unreadable_frames_close_only_that_connection(daemon: Daemon,
                                                            autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    rng = random.Random(1234)
    async with bystander(daemon) as other, connect_unix(daemon.socket_path) as owner:
        sid, token, before = await _target(owner)
        for what, data, code in _unsyncable(rng):
            async with connect_unix(daemon.socket_path) as bad:
                await bad.call(p.Attach, session_id=sid, token=token)
                await bad.next_of(p.Snapshot)
                await bad.send_raw(data)
                events = await bad.wait_closed()
                # One error, for the connection (no id), then the end.
                assert len(events) == 1, (what, events)
                error = events[0]
                assert isinstance(error, p.Error) and error.id is None, (what, error)
                assert error.code == code, (what, error)
            await other.still_fine()
        # The watcher that was dropped each time is gone from the session.
        await _unchanged(owner, sid, before)
        report = await owner.call(p.Stats)
        assert isinstance(report, p.Report)
        assert report.report["subscribers"] == 1  # the bystander's watcher


@pytest.mark.daemon_config(max_frame=MAX_FRAME)
async def test_bad_input_before_hello_is_refused(daemon: Daemon,
                                                 autojump_clock: object) -> None:
    assert daemon.socket_path is not None and daemon.ws_port
    rng = random.Random(99)
    async with bystander(daemon) as other:
        cases = [
            framed(bytes(rng.randrange(256) for _ in range(40))),
            framed(packed({"t": "get", "id": 1, "session_id": "x"})),  # request before hello
            framed(packed({"t": "hello", "versions": [7], "channel": "x"})),  # no common version
            framed(packed({"t": "hello", "versions": [1], "channel": 5})),
            b"\x7f\xff\xff\xff",
        ]
        for data in cases:
            async with connect_unix(daemon.socket_path, hello=False) as bad:
                await bad.send_raw(data, stands_for=HELLO)
                events = await bad.wait_closed()
                assert len(events) == 1 and isinstance(events[0], p.Error), events
                assert events[0].code in ("bad_request", "unsupported_version", "too_large")
            await other.still_fine()
        # Bytes that never make a frame, then the client goes away.
        async with connect_unix(daemon.socket_path, hello=False) as bad:
            await bad.send_raw(b"\x00\x00\x01\x00partial")
        await other.still_fine()


@pytest.mark.daemon_config(max_frame=MAX_FRAME)
async def test_websocket_misuse_closes_only_that_connection(daemon: Daemon,
                                                            autojump_clock: object) -> None:
    assert daemon.ws_port
    async with bystander(daemon) as other:
        # One byte over the frame limit: the protocol's own refusal.
        async with connect_ws(daemon.ws_port) as bad:
            await bad.send_raw(b"\x00" * (MAX_FRAME + 1))
            events = await bad.wait_closed()
            assert len(events) == 1 and isinstance(events[0], p.Error), events
            assert (events[0].id, events[0].code) == (None, "too_large")
        await other.still_fine()
        # Far over it: refused by the WebSocket layer itself.
        async with connect_ws(daemon.ws_port) as bad:
            # The daemon may close while the message is still going out.
            with contextlib.suppress(trio.BrokenResourceError):
                await bad.send_raw(b"\x00" * (4 * MAX_FRAME))
            assert await bad.wait_closed() == []
        await other.still_fine()
        # An empty message is a malformed body, not the end of the stream.
        async with connect_ws(daemon.ws_port) as bad:
            await bad.send_raw(b"")
            events = await bad.wait_closed()
            assert len(events) == 1 and isinstance(events[0], p.Error), events
            assert (events[0].id, events[0].code) == (None, "bad_request")
        await other.still_fine()
        # Text messages are not part of the protocol.
        async with connect_ws(daemon.ws_port) as bad:
            transport = bad.transport
            await transport.ws.send_message('{"t": "ping", "id": 1}')  # type: ignore[attr-defined]
            assert await bad.wait_closed() == []
        await other.still_fine()
        # The same in place of a hello.
        async with connect_ws(daemon.ws_port, hello=False) as bad:
            await bad.send_raw(b"\x00" * (MAX_FRAME + 1), stands_for=HELLO)
            events = await bad.wait_closed()
            assert len(events) == 1 and isinstance(events[0], p.Error), events
            assert (events[0].id, events[0].code) == (None, "too_large")
        await other.still_fine()
    # The daemon is still whole: a new client is served.
    async with connect_ws(daemon.ws_port) as fresh:
        assert isinstance(await fresh.call(p.Ping), p.Pong)
