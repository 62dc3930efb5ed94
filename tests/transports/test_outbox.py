"""The outbox's eager writes: frames go straight to a socket that takes them,
once per connection per actor batch, and the writer task sends the rest."""

from __future__ import annotations

import nexus_protocol as p
import trio
from nexus_protocol import Connection, Side, encode_body

from nexusd.transports._outbox import Flusher, Outbox


def _open_server() -> Connection:
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    server.receive_data(client.send(p.Hello(versions=[1], channel="cli")))
    assert isinstance(server.next_event(), p.Hello)
    client.receive_data(server.send(p.Welcome(version=1, server="tests", connection_id="c1",
                                              max_frame=server.limits.max_frame)))
    return server


class Socket:
    """A socket that takes at most `room` bytes a call (all, by default)."""

    def __init__(self, room: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.room = room
        self.broken = False

    def send_now(self, data: bytes) -> int:
        if self.broken:
            raise trio.BrokenResourceError("gone")
        taken = data if self.room is None else data[:self.room]
        if taken:
            self.writes.append(taken)
        return len(taken)


def _outbox(flusher: Flusher, socket: Socket) -> Outbox:
    return Outbox(_open_server(), max_frames=8, send_now=socket.send_now, flusher=flusher)


def _event(n: int) -> bytes:
    return encode_body(p.Presence(session_id="s", action="join", connection_id=f"c{n}",
                                  channel="cli"))


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


async def test_frames_go_straight_to_a_socket_that_takes_them() -> None:
    socket = Socket()
    outbox = _outbox(Flusher(), socket)
    assert outbox.push_event(_event(1))
    assert outbox.push_event(_event(2))
    assert socket.writes == [_framed(_event(1)), _framed(_event(2))]
    assert outbox.statistics().queued_frames == 0
    assert outbox.statistics().frames_sent == 2


async def test_a_holding_task_writes_each_outbox_once_on_release() -> None:
    flusher = Flusher()
    a, b, c = Socket(), Socket(), Socket()
    outbox_a, outbox_b, outbox_c = _outbox(flusher, a), _outbox(flusher, b), _outbox(flusher, c)
    flusher.hold()
    outbox_a.push_event(_event(1))
    outbox_b.push_event(_event(2))
    outbox_a.push_event(_event(3))
    assert a.writes == b.writes == []

    async def elsewhere() -> None:  # another task: not held back
        outbox_c.push_event(_event(4))
        outbox_a.push_event(_event(5))  # takes along what the holder queued there

    async with trio.open_nursery() as nursery:
        nursery.start_soon(elsewhere)
    assert len(c.writes) == 1
    assert a.writes == [b"".join(_framed(_event(n)) for n in (1, 3, 5))]
    assert b.writes == []
    outbox_a.push_event(_event(6))
    flusher.release()
    assert b.writes == [_framed(_event(2))]
    assert a.writes[1:] == [_framed(_event(6))]


async def test_what_the_socket_does_not_take_goes_to_the_writer_task() -> None:
    socket = Socket(room=10)
    outbox = _outbox(Flusher(), socket)
    outbox.push_event(_event(1))
    whole = _framed(_event(1))
    assert socket.writes == [whole[:10]]
    socket.room = None
    # The writer task owns the socket until it has sent the rest: no eager
    # write meanwhile, or the bytes would interleave.
    rest = await outbox.wait_frames()
    assert rest == [whole[10:]]
    outbox.push_event(_event(2))
    assert socket.writes == [whole[:10]]
    outbox.sent()
    assert socket.writes == [whole[:10], _framed(_event(2))]


async def test_a_socket_that_failed_closes_the_outbox() -> None:
    socket = Socket()
    socket.broken = True
    outbox = _outbox(Flusher(), socket)
    outbox.push_event(_event(1))
    assert outbox.closed
    assert await outbox.wait_frames() == []  # so the writer task ends the connection


async def test_a_detached_outbox_writes_nothing() -> None:
    socket = Socket()
    outbox = _outbox(Flusher(), socket)
    outbox.detach()
    assert not outbox.push_event(_event(1))
    assert socket.writes == []


async def test_without_a_socket_to_write_to_the_writer_task_sends_everything() -> None:
    conn = _open_server()
    outbox = Outbox(conn, max_frames=2, flusher=Flusher())
    assert outbox.push_event(_event(1)) and outbox.push_event(_event(2))
    assert not outbox.push_event(_event(3))  # full: the subscriber lags
    assert await outbox.wait_frames() == [_framed(_event(n)) for n in (1, 2)]


async def test_events_are_refused_past_the_byte_bound_whatever_their_count() -> None:
    # A writer of big values and a subscriber that stopped reading: the
    # queue is bounded by bytes long before it is by frames.
    outbox = Outbox(_open_server(), max_frames=1024, max_bytes=10_000)
    big = encode_body(p.Presence(session_id="s", action="join", connection_id="c",
                                 channel="x" * 3000))
    taken = [outbox.push_event(big) for _ in range(10)]
    assert taken == [True, True, True, False, False, False, False, False, False, False]
    stats = outbox.statistics()
    assert stats.queued_frames == 3 and stats.events_refused == 7
    assert 9_000 < stats.queued_bytes <= 10_000
    assert await outbox.wait_frames()  # the writer took them: room again
    assert outbox.statistics().queued_bytes == 0
    assert outbox.push_event(big)


async def test_one_event_larger_than_the_byte_bound_still_goes_to_an_empty_queue() -> None:
    outbox = Outbox(_open_server(), max_frames=8, max_bytes=100)
    big = encode_body(p.Presence(session_id="s", action="join", connection_id="c",
                                 channel="x" * 300))
    assert outbox.push_event(big)  # alone: it must be able to go at all
    assert not outbox.push_event(big)  # behind another: refused
    await outbox.wait_frames()
    assert outbox.push_event(big)
