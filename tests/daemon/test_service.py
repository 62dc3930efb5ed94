"""The session service as an adapter other than the msgpack connection uses
it: requests for a principal through `call`, a subscription through
`subscribe`, side by side with clients on the Unix socket."""

from __future__ import annotations

import nexus_protocol as p
import trio
from raw_client import connect_unix

from nexusd import Daemon
from nexusd._errors import RequestError
from nexusd._principal import Principal


class Sink:
    """An adapter's subscriber: holds at most `room` events."""

    def __init__(self, room: int = 100) -> None:
        self.room = room
        self.closed = False
        self.events: list[p.Message] = []
        self.controls: list[p.Message] = []
        self.arrived = trio.Event()

    def push_event(self, body: bytes) -> bool:
        if len(self.events) >= self.room:
            return False
        self.events.append(p.decode_body(body))
        self.arrived.set()
        return True

    def reply_event(self, body: bytes) -> None:
        self.events.append(p.decode_body(body))

    def reply(self, message: p.Message) -> None:
        self.controls.append(message)
        self.arrived.set()

    async def wait(self) -> None:
        await self.arrived.wait()
        self.arrived = trio.Event()


async def test_a_principal_calls_and_watches_beside_a_unix_client(
        daemon: Daemon, autojump_clock: object) -> None:
    http = Principal("h1", "http", "agent", admin=False)
    created = await daemon.service.call(http, p.Create(id=1, ttl=600))
    assert isinstance(created, p.Created)
    sid, token = created.session_id, created.token
    sink = Sink()
    attached = await daemon.service.subscribe(http, sid, sink, since=0)
    assert (attached.seq, attached.recovered) == (0, True)

    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path, channel="cli", client="term") as cli:
        written = await cli.call(p.Set, session_id=sid, key="k", value=1, token=token)
        assert isinstance(written, p.Written) and written.seq == 1
        await sink.wait()
        change = sink.events[-1]
        assert isinstance(change, p.Change)
        assert (change.seq, change.key, change.channel, change.writer) == (1, "k", "cli", "term")

        # And the other way: the principal's write reaches the Unix client.
        await cli.call(p.Attach, session_id=sid, since=1)
        reply = await daemon.service.call(http, p.Set(id=2, session_id=sid, key="k", value=2,
                                                      expect=1))
        assert isinstance(reply, p.Written) and (reply.seq, reply.version) == (2, 2)
        seen = await cli.next_of(p.Change)
        assert (seen.seq, seen.channel, seen.writer) == (2, "http", "agent")


async def test_no_principal_is_trusted_without_a_token(daemon: Daemon,
                                                       autojump_clock: object) -> None:
    owner = Principal("h1", "http", "owner", admin=False)
    created = await daemon.service.call(owner, p.Create(id=1, ttl=600))
    assert isinstance(created, p.Created)
    stranger = Principal("h2", "http", "stranger", admin=False)
    refused = await daemon.service.call(stranger, p.Get(id=1, session_id=created.session_id))
    assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.UNAUTHORIZED.value
    try:
        await daemon.service.subscribe(stranger, created.session_id, Sink())
    except RequestError as exc:
        assert exc.code is p.ErrorCode.UNAUTHORIZED
    else:
        raise AssertionError("a subscription without a token was accepted")
    # Only the daemon's admin may ask for its statistics.
    refused = await daemon.service.call(stranger, p.Stats(id=2))
    assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.FORBIDDEN.value


async def test_a_subscriber_that_cannot_keep_up_is_told_it_lagged(
        daemon: Daemon, autojump_clock: object) -> None:
    owner = Principal("h1", "http", "owner", admin=False)
    created = await daemon.service.call(owner, p.Create(id=1, ttl=600))
    assert isinstance(created, p.Created)
    sid = created.session_id
    sink = Sink(room=2)  # the snapshot and one change
    await daemon.service.subscribe(owner, sid, sink)
    for n in range(3):
        await daemon.service.call(owner, p.Set(id=2 + n, session_id=sid, key="k", value=n))
    assert [type(e) for e in sink.events] == [p.Snapshot, p.Change]
    assert sink.controls == [p.Lagged(session_id=sid, seq=1)]
    assert daemon.bus.statistics().subscribers == 0
    assert owner.subscriptions == set()


async def test_a_call_cannot_hold_a_subscription(daemon: Daemon,
                                                 autojump_clock: object) -> None:
    owner = Principal("h1", "http", "owner", admin=False)
    created = await daemon.service.call(owner, p.Create(id=1, ttl=600))
    assert isinstance(created, p.Created)
    refused = await daemon.service.call(owner, p.Attach(id=2, session_id=created.session_id))
    assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.BAD_REQUEST.value
    assert daemon.bus.statistics().subscribers == 0
